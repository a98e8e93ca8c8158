//! HS256 JSON Web Tokens, hand-rolled (HMAC-SHA256 over base64url), as the three backends issue
//! them with `jsonwebtoken` for Node.
//!
//! Every token also carries `aud` (which backend issued it, so that a token of one contract is
//! not accepted by another, as with the real services' separate secrets) and `jti`, a sequence
//! number that lets [`Jwt::expire_all`] revoke every token issued so far, exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("Invalid token")]
    Malformed,
    #[error("Invalid token")]
    BadSignature,
    #[error("Token expired")]
    Expired,
    /// Issued before [`Jwt::expire_all`]; reported like an expired token.
    #[error("Token expired")]
    Revoked,
    /// Valid, but issued by another backend or of another kind (access vs refresh).
    #[error("Invalid token")]
    WrongKind,
}

#[derive(Debug)]
pub(crate) struct Jwt {
    secret: Vec<u8>,
    issued: AtomicU64,
    /// Tokens whose `jti` is at most this are revoked.
    revoked_up_to: AtomicU64,
}

/// Seconds since the Unix epoch, as `jsonwebtoken` counts them (floor).
fn now_secs() -> i64 {
    crate::now_ms().div_euclid(1000)
}

impl Jwt {
    pub(crate) fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
            issued: AtomicU64::new(0),
            revoked_up_to: AtomicU64::new(0),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }

    /// Signs `claims` plus `aud`, `iat`, `exp` (= iat + ttl, whole seconds) and `jti`.
    pub(crate) fn sign(&self, aud: &str, mut claims: Map<String, Value>, ttl: Duration) -> String {
        let iat = now_secs();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let jti = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        claims.insert("aud".into(), json!(aud));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat.saturating_add(ttl)));
        claims.insert("jti".into(), json!(jti.to_string()));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks signature, expiry, revocation and audience, and returns the claims.
    pub(crate) fn verify(&self, token: &str, aud: &str) -> Result<Map<String, Value>, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..token.len() - signature.len() - 1]);
        mac.verify_slice(&decode(signature)?)
            .map_err(|_| TokenError::BadSignature)?;
        let Ok(Value::Object(claims)) = serde_json::from_slice(&decode(payload)?) else {
            return Err(TokenError::Malformed);
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::Malformed)?;
        if now_secs() >= exp {
            return Err(TokenError::Expired);
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if jti <= self.revoked_up_to.load(Ordering::SeqCst) {
            return Err(TokenError::Revoked);
        }
        if claims.get("aud").and_then(Value::as_str) != Some(aud) {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }

    /// Revokes every token issued so far.
    pub(crate) fn expire_all(&self) {
        let issued = self.issued.load(Ordering::SeqCst);
        self.revoked_up_to.fetch_max(issued, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_revocation() {
        let jwt = Jwt::new("secret");
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("u1"));
        let token = jwt.sign("crowd", claims, Duration::from_secs(60));
        let claims = jwt.verify(&token, "crowd").expect("valid");
        assert_eq!(claims["sub"], "u1");
        assert_eq!(
            claims["exp"].as_i64(),
            claims["iat"].as_i64().map(|i| i + 60)
        );
        assert_eq!(jwt.verify(&token, "depin"), Err(TokenError::WrongKind));
        assert_eq!(
            Jwt::new("other").verify(&token, "crowd"),
            Err(TokenError::BadSignature)
        );
        assert_eq!(jwt.verify("a.b", "crowd"), Err(TokenError::Malformed));
        jwt.expire_all();
        assert_eq!(jwt.verify(&token, "crowd"), Err(TokenError::Revoked));
        let fresh = jwt.sign("crowd", Map::new(), Duration::from_secs(60));
        assert!(jwt.verify(&fresh, "crowd").is_ok());
    }

    #[test]
    fn zero_ttl_is_expired() {
        let jwt = Jwt::new("secret");
        let token = jwt.sign("crowd", Map::new(), Duration::ZERO);
        assert_eq!(jwt.verify(&token, "crowd"), Err(TokenError::Expired));
    }
}
