//! Reading the expiry of a backend's JWT, to renew it before it runs out rather than after a
//! refused request. The signature is not checked: the token is the backend's to verify, and
//! a wrong `exp` only makes us renew early or meet a 401 (which is handled anyway).

use base64::Engine;
use time::OffsetDateTime;

/// The `exp` claim of a JWT, or `None` if the token is not a JWT or has no `exp`.
pub fn expiry(token: &str) -> Option<OffsetDateTime> {
    time_claim(token, "exp")
}

/// The `iat` claim (issued at) of a JWT, or `None`. With `exp`, it gives the token's lifetime
/// on the backend's own clock, whatever ours says.
pub fn issued(token: &str) -> Option<OffsetDateTime> {
    time_claim(token, "iat")
}

fn time_claim(token: &str, name: &str) -> Option<OffsetDateTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = claims.get(name)?.as_i64()?;
    OffsetDateTime::from_unix_timestamp(at).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(claims))
    }

    #[test]
    fn reads_exp() {
        let exp = expiry(&token(r#"{"sub":"1","exp":1800000000}"#)).unwrap();
        assert_eq!(exp.unix_timestamp(), 1_800_000_000);
        let iat = issued(&token(r#"{"iat":1799999700,"exp":1800000000}"#)).unwrap();
        assert_eq!(iat.unix_timestamp(), 1_799_999_700);
    }

    #[test]
    fn anything_else_is_none() {
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry(&token(r#"{"sub":"1"}"#)), None);
        assert_eq!(expiry(&token(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry("a.!!!.c"), None);
    }
}
