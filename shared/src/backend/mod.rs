//! Clients for the three central backends (contracts/backend-api.md):
//! [`crowd`] (access codes and usage, seed 000), [`depin`] (sensor streaming auth and
//! messages, seed 002) and [`telemetry`] (connections and metrics, seed 001).
//!
//! Every call has a timeout. Errors keep the server's own `error` text and say whether the
//! request may have been applied ([`BackendError::is_ambiguous`]): a usage report that timed
//! out must be checked before it is sent again, or the consumer pays twice.

pub mod crowd;
pub mod depin;
pub mod telemetry;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use url::Url;

use crate::secret::Secret;

/// How long before a token's expiry it is renewed at most, so that no call meets an expired
/// token: a 12-hour token is renewed 5 minutes before it runs out.
const RENEW_MARGIN: time::Duration = time::Duration::minutes(5);

/// How long before its expiry a token that lasts `lifetime` is renewed: 15 % of its lifetime
/// (renewed at 85 %), at most [`RENEW_MARGIN`]. A fixed 5 minutes made a token of 5 minutes or
/// less stale as soon as it came: a sign-in before every call.
pub fn renew_margin(lifetime: time::Duration) -> time::Duration {
    let margin: time::Duration = lifetime * 0.15;
    margin.clamp(time::Duration::ZERO, RENEW_MARGIN)
}

/// How much of an unexpected reply body is kept in an error message.
const BODY_SNIPPET: usize = 200;

/// HTTP settings shared by every backend a daemon talks to (`[http]` in its config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Longest wait for a whole call, connect included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra CA certificates (PEM) for self-hosted backends, trusted besides Mozilla's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// One HTTP client (connection pool, TLS set-up) shared by the backend clients.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    pub fn new(settings: &HttpSettings) -> Result<Self, BackendError> {
        let tls = crate::tls::client_config(settings.ca_file.as_deref())
            .map_err(|e| BackendError::Setup(e.to_string()))?;
        let inner = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("edgeshare/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Setup(e.to_string()))?;
        Ok(HttpClient { inner })
    }
}

/// What a backend refused, as far as the contracts distinguish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Login refused: wrong email/username or password.
    BadCredentials,
    /// 401 on a call that carried a token: the token is missing, bad or expired.
    Unauthorized,
    /// 403: the token's role or tenant does not allow this.
    Forbidden,
    /// 404 (for codes: "Invalid code", also an expired code the database already deleted).
    NotFound,
    /// 400 "Code expired".
    CodeExpired,
    /// 400 "Not enough remaining MB": the report would overdraw the code; nothing applied.
    NotEnoughRemaining,
    /// Any other 400.
    BadRequest,
    /// 409: already exists.
    Conflict,
    /// 413: body over the backend's limit.
    TooLarge,
    /// 429.
    TooManyRequests,
    /// 5xx.
    ServerError,
    /// Any other status.
    Other,
}

impl Rejection {
    /// The contracts tell some 400s apart only by their text; this is the one place that
    /// reads it, so the rest of the code matches on the type.
    fn classify(status: StatusCode, message: &str) -> Self {
        match status.as_u16() {
            400 if message == "Code expired" => Rejection::CodeExpired,
            400 if message == "Not enough remaining MB" => Rejection::NotEnoughRemaining,
            400 => Rejection::BadRequest,
            401 => Rejection::Unauthorized,
            403 => Rejection::Forbidden,
            404 => Rejection::NotFound,
            409 => Rejection::Conflict,
            413 => Rejection::TooLarge,
            429 => Rejection::TooManyRequests,
            500..=599 => Rejection::ServerError,
            _ => Rejection::Other,
        }
    }
}

/// A failed backend call. `endpoint` is the method and path, e.g. `POST /api/auth/login`.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot set up the backend client: {0}")]
    Setup(String),
    /// The request was never sent (connection refused, DNS, TLS handshake): safe to retry.
    #[error("{endpoint}: cannot reach {url}: {}", chain(.source))]
    Unreachable {
        endpoint: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The request may have reached the backend, but no complete reply came back (timeout,
    /// connection reset). The backend may or may not have applied it.
    #[error("{endpoint}: no reply from {url}; the backend may or may not have applied it: {}", chain(.source))]
    NoReply {
        endpoint: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The backend answered with an error status; `message` is its own `error` text.
    #[error("{endpoint}: the backend refused ({status}): {message}")]
    Rejected {
        endpoint: String,
        status: StatusCode,
        message: String,
        kind: Rejection,
    },
    /// The backend answered success, but not in the contract's shape.
    #[error("{endpoint}: unexpected reply ({status}): {detail}")]
    BadReply {
        endpoint: String,
        status: StatusCode,
        detail: String,
    },
    /// Not sent: the body is over the backend's documented limit.
    #[error("{endpoint}: body of {size} bytes is over the backend's limit of {limit} bytes")]
    BodyTooLarge {
        endpoint: String,
        size: usize,
        limit: usize,
    },
}

impl BackendError {
    /// What the backend refused, if it answered with an error status.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            BackendError::Rejected { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True if the request may have been applied although no success reply arrived: a
    /// non-idempotent call must be checked before it is sent again.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, BackendError::NoReply { .. })
    }

    /// True if the same request can be retried later as is, because the backend certainly did
    /// not apply it and the cause may pass (unreachable, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Unreachable { .. } => true,
            BackendError::Rejected { kind, .. } => {
                matches!(kind, Rejection::ServerError | Rejection::TooManyRequests)
            }
            _ => false,
        }
    }

    fn is_unauthorized(&self) -> bool {
        self.rejection() == Some(Rejection::Unauthorized)
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// One call's description, for building the request and naming it in errors.
struct Call<'a> {
    method: Method,
    path: &'a str,
    bearer: Option<&'a Secret>,
    tenant: Option<&'a str>,
    body: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: &'a str) -> Self {
        Call {
            method,
            path,
            bearer: None,
            tenant: None,
            body: None,
        }
    }

    fn get(path: &'a str) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: &'a str, body: &impl serde::Serialize) -> Self {
        let mut call = Self::new(Method::POST, path);
        // Serialising our own plain structs cannot fail; an empty body would be refused by
        // the backend with a clear 400 if it ever did.
        call.body = Some(serde_json::to_vec(body).unwrap_or_default());
        call
    }

    fn bearer(mut self, token: &'a Secret) -> Self {
        self.bearer = Some(token);
        self
    }

    fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant = Some(tenant);
        self
    }

    fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A base URL on one HTTP client.
#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(http: &HttpClient, base: &Url) -> Self {
        Api {
            http: http.inner.clone(),
            // Paths are appended, not resolved, so that a base with a prefix
            // (https://host/crowd) keeps it.
            base: base.as_str().trim_end_matches('/').to_owned(),
        }
    }

    async fn send<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, BackendError> {
        let endpoint = call.endpoint();
        let url = format!("{}{}", self.base, call.path);
        let mut request = self.http.request(call.method.clone(), &url);
        if let Some(token) = call.bearer {
            request = request.bearer_auth(token.expose());
        }
        if let Some(tenant) = call.tenant {
            request = request.header("X-Tenant-Id", tenant);
        }
        if let Some(body) = call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|source| {
            // A connect failure means nothing was sent; anything later may have been applied.
            if source.is_connect() || source.is_builder() {
                BackendError::Unreachable {
                    endpoint: endpoint.clone(),
                    url: url.clone(),
                    source,
                }
            } else {
                BackendError::NoReply {
                    endpoint: endpoint.clone(),
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| BackendError::NoReply {
                endpoint: endpoint.clone(),
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| snippet(&bytes));
            let kind = Rejection::classify(status, &message);
            return Err(BackendError::Rejected {
                endpoint,
                status,
                message,
                kind,
            });
        }
        // An empty success body (some 202s) reads as JSON null.
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| BackendError::BadReply {
            endpoint,
            status,
            detail: format!("{e}; body: {}", snippet(&bytes)),
        })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut cut: String = text.chars().take(BODY_SNIPPET).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    if cut.is_empty() {
        "(empty body)".to_owned()
    } else {
        cut
    }
}

/// A bearer token, when it runs out and how long it lasts, if known.
#[derive(Clone, PartialEq, Eq)]
struct Token {
    value: Secret,
    expires: Option<OffsetDateTime>,
    /// From its issue to its expiry: sets how early it is renewed ([`renew_margin`]).
    lifetime: Option<time::Duration>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &self.value)
            .field("expires", &self.expires)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Token {
    /// Its expiry and lifetime from its `exp` and `iat` claims; without `iat`, the lifetime
    /// runs from now.
    fn from_jwt(value: Secret) -> Self {
        let expires = crate::jwt::expiry(value.expose());
        let issued = crate::jwt::issued(value.expose()).unwrap_or_else(OffsetDateTime::now_utc);
        Token {
            lifetime: expires.map(|exp| exp - issued),
            value,
            expires,
        }
    }

    fn is_fresh(&self, now: OffsetDateTime) -> bool {
        let margin = self.lifetime.map_or(RENEW_MARGIN, renew_margin);
        self.expires.is_none_or(|exp| exp - margin > now)
    }
}

/// The current token of one backend login, shared by concurrent calls. Renewing holds the
/// lock, so that ten calls meeting an expired token cause one login, not ten.
#[derive(Debug, Default)]
struct TokenSlot {
    current: tokio::sync::Mutex<Option<Token>>,
}

impl TokenSlot {
    /// The current token, or a new one from `renew` if there is none or it is about to expire.
    async fn get<F>(&self, renew: impl FnOnce() -> F) -> Result<Secret, BackendError>
    where
        F: Future<Output = Result<Token, BackendError>>,
    {
        let mut current = self.current.lock().await;
        match &*current {
            Some(token) if token.is_fresh(OffsetDateTime::now_utc()) => Ok(token.value.clone()),
            _ => {
                let token = renew().await?;
                let value = token.value.clone();
                *current = Some(token);
                Ok(value)
            }
        }
    }

    /// Forgets `stale` after a 401, unless another call has already replaced it.
    async fn forget(&self, stale: &Secret) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| &t.value == stale) {
            *current = None;
        }
    }

    /// Sends `call` with a valid bearer token; on a 401, renews the token once and sends
    /// again. A 401 comes from the backend's auth check before any handler runs, so the
    /// second send cannot apply anything twice.
    async fn send<'c, T, F>(
        &self,
        api: &Api,
        renew: impl Fn() -> F,
        call: impl Fn() -> Call<'c>,
    ) -> Result<T, BackendError>
    where
        T: DeserializeOwned,
        F: Future<Output = Result<Token, BackendError>>,
    {
        let token = self.get(&renew).await?;
        match api.send(call().bearer(&token)).await {
            Err(err) if err.is_unauthorized() => {
                tracing::info!(error = %err, "token refused; logging in again");
                self.forget(&token).await;
                let token = self.get(&renew).await?;
                api.send(call().bearer(&token)).await
            }
            other => other,
        }
    }
}

/// Deserialises an id the backends send as a number or a string into a string.
fn id_as_string<'de, D: serde::Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match Id::deserialize(de)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_classified_by_status_and_the_contract_texts() {
        let c = |status: u16, msg: &str| {
            Rejection::classify(StatusCode::from_u16(status).unwrap(), msg)
        };
        assert_eq!(c(400, "Code expired"), Rejection::CodeExpired);
        assert_eq!(
            c(400, "Not enough remaining MB"),
            Rejection::NotEnoughRemaining
        );
        assert_eq!(c(400, "code required"), Rejection::BadRequest);
        assert_eq!(c(401, "Invalid credentials"), Rejection::Unauthorized);
        assert_eq!(c(404, "Invalid code"), Rejection::NotFound);
        assert_eq!(c(503, ""), Rejection::ServerError);
        assert_eq!(c(418, ""), Rejection::Other);
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let now = OffsetDateTime::now_utc();
        let token = |expires| Token {
            value: Secret::new("t"),
            expires,
            lifetime: Some(time::Duration::hours(12)),
        };
        assert!(token(None).is_fresh(now));
        assert!(token(Some(now + time::Duration::hours(1))).is_fresh(now));
        assert!(!token(Some(now + time::Duration::minutes(4))).is_fresh(now));
        assert!(!token(Some(now - time::Duration::minutes(1))).is_fresh(now));
    }

    #[test]
    fn a_short_token_is_renewed_late_in_its_life_not_at_once() {
        let minutes = time::Duration::minutes;
        assert_eq!(renew_margin(time::Duration::hours(12)), minutes(5));
        assert_eq!(renew_margin(minutes(5)), time::Duration::seconds(45));
        assert_eq!(
            renew_margin(time::Duration::seconds(-3)),
            time::Duration::ZERO
        );
        // A 4-minute token obtained now: fresh for its first 85 % (204 s), stale after.
        let now = OffsetDateTime::now_utc();
        let token = Token {
            value: Secret::new("t"),
            expires: Some(now + minutes(4)),
            lifetime: Some(minutes(4)),
        };
        assert!(token.is_fresh(now));
        assert!(token.is_fresh(now + time::Duration::seconds(203)));
        assert!(!token.is_fresh(now + time::Duration::seconds(205)));
    }

    #[test]
    fn a_jwts_lifetime_comes_from_its_own_claims() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"iat":1800000000,"exp":1800000120}"#)
        );
        let token = Token::from_jwt(Secret::new(jwt));
        assert_eq!(token.lifetime, Some(time::Duration::minutes(2)));
    }

    proptest::proptest! {
        /// Whatever the lifetime, a token is renewed between 85 % of its life and its expiry,
        /// and never more than 5 minutes early.
        #[test]
        fn renewal_falls_late_in_a_tokens_life(secs in 1i64..200_000) {
            let lifetime = time::Duration::seconds(secs);
            let margin = renew_margin(lifetime);
            proptest::prop_assert!(margin >= time::Duration::ZERO && margin <= RENEW_MARGIN);
            proptest::prop_assert!(lifetime - margin >= lifetime * 0.85);
            proptest::prop_assert!(margin < lifetime);
        }
    }

    #[test]
    fn snippets_are_short_and_never_empty() {
        assert_eq!(snippet(b""), "(empty body)");
        let long = "x".repeat(1000);
        assert_eq!(snippet(long.as_bytes()).chars().count(), BODY_SNIPPET + 1);
    }
}
