//! Contract 2: the DePin data-streaming platform (seed 002): producer login with access and
//! refresh tokens, the producer WebSocket URL, and the stream's message framings.
//!
//! The WebSocket link itself (reconnects, keepalive, spool) is the agent's; this module holds
//! what must be byte-exact with the platform.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use super::{Api, BackendError, Call, HttpClient, Rejection, Token};
use crate::secret::Secret;

/// The auth service's paths. Its documents disagree (`/login` or `/api/auth/login`), so they
/// are configurable; these are the defaults of its README.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DepinPaths {
    pub login: String,
    pub refresh: String,
    pub register: String,
}

impl Default for DepinPaths {
    fn default() -> Self {
        DepinPaths {
            login: "/login".to_owned(),
            refresh: "/refresh".to_owned(),
            register: "/register".to_owned(),
        }
    }
}

/// The access and refresh tokens of one producer login.
#[derive(Debug, Clone)]
pub struct DepinTokens {
    pub access: Secret,
    pub refresh: Secret,
    pub user_id: String,
    /// When the access token runs out (from its JWT `exp`), if it says.
    pub access_expires: Option<OffsetDateTime>,
}

impl DepinTokens {
    /// True if the access token should be refreshed before it is used again.
    pub fn access_is_stale(&self, now: OffsetDateTime) -> bool {
        let token = Token {
            expires: self.access_expires,
            ..Token::from_jwt(self.access.clone())
        };
        !token.is_fresh(now)
    }
}

#[derive(Deserialize)]
struct LoginReply {
    access_token: Secret,
    refresh_token: Secret,
    #[serde(deserialize_with = "super::id_as_string")]
    user_id: String,
}

#[derive(Deserialize)]
struct RefreshReply {
    access_token: Secret,
    /// Some deployments rotate the refresh token; others keep the old one valid.
    #[serde(default)]
    refresh_token: Option<Secret>,
}

/// `POST /register` reply, as far as a producer needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registered {
    #[serde(deserialize_with = "super::id_as_string")]
    pub user_id: String,
}

#[derive(Serialize)]
struct Credentials<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct RefreshBody<'a> {
    refresh_token: &'a str,
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    username: &'a str,
    password: &'a str,
    role: &'a str,
    device_id: &'a str,
}

/// The auth service of contract 2 for one producer.
#[derive(Debug, Clone)]
pub struct DepinAuth {
    api: Api,
    paths: DepinPaths,
    username: String,
    password: Secret,
}

impl DepinAuth {
    pub fn new(
        http: &HttpClient,
        auth_url: &Url,
        paths: DepinPaths,
        username: String,
        password: Secret,
    ) -> Self {
        DepinAuth {
            api: Api::new(http, auth_url),
            paths,
            username,
            password,
        }
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            username: &self.username,
            password: self.password.expose(),
        }
    }

    /// Logs in; a refused login is [`Rejection::BadCredentials`].
    pub async fn login(&self) -> Result<DepinTokens, BackendError> {
        let reply: LoginReply = self
            .api
            .send(Call::post(&self.paths.login, &self.credentials()))
            .await
            .map_err(super::crowd::bad_credentials)?;
        Ok(DepinTokens {
            access_expires: crate::jwt::expiry(reply.access_token.expose()),
            access: reply.access_token,
            refresh: reply.refresh_token,
            user_id: reply.user_id,
        })
    }

    /// Trades the refresh token for a new access token.
    pub async fn refresh(&self, tokens: &DepinTokens) -> Result<DepinTokens, BackendError> {
        let body = RefreshBody {
            refresh_token: tokens.refresh.expose(),
        };
        let reply: RefreshReply = self
            .api
            .send(Call::post(&self.paths.refresh, &body))
            .await?;
        Ok(DepinTokens {
            access_expires: crate::jwt::expiry(reply.access_token.expose()),
            access: reply.access_token,
            refresh: reply
                .refresh_token
                .unwrap_or_else(|| tokens.refresh.clone()),
            user_id: tokens.user_id.clone(),
        })
    }

    /// Tokens fit to use now: `current` if its access token is fresh, else refreshed, else
    /// (no tokens yet, or the refresh token refused) a new login.
    pub async fn fresh(
        &self,
        current: Option<&DepinTokens>,
        now: OffsetDateTime,
    ) -> Result<DepinTokens, BackendError> {
        match current {
            Some(tokens) if !tokens.access_is_stale(now) => Ok(tokens.clone()),
            Some(tokens) => match self.refresh(tokens).await {
                Err(err)
                    if matches!(
                        err.rejection(),
                        Some(
                            Rejection::Unauthorized | Rejection::Forbidden | Rejection::BadRequest
                        )
                    ) =>
                {
                    tracing::info!(error = %err, "refresh token refused; logging in again");
                    self.login().await
                }
                other => other,
            },
            None => self.login().await,
        }
    }

    /// Registers this producer and its device (a one-time set-up step).
    pub async fn register(&self, device_id: &str) -> Result<Registered, BackendError> {
        let body = RegisterBody {
            username: &self.username,
            password: self.password.expose(),
            role: "producer",
            device_id,
        };
        self.api.send(Call::post(&self.paths.register, &body)).await
    }
}

/// The producer stream URL with the access token in its query, as the platform wants it
/// (`…/producer?token=<access_token>`). Any earlier `token` parameter is replaced. The result
/// holds a secret: log it with [`redacted`].
pub fn producer_url(ws_url: &Url, access: &Secret) -> Url {
    let mut url = ws_url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("token", access.expose());
    url
}

/// A URL fit for a log line: the `token` parameter's value is hidden.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "token" {
                "***".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    if !pairs.is_empty() {
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// One sensor sample as the platform takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// How readings are framed on the producer socket; the platform's documents show both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// The reading itself as the message; no acknowledgement comes back.
    #[default]
    Bare,
    /// `{"type":"data","payload":<reading>}`, acknowledged with `{"type":"ack",…}`.
    Typed,
}

#[derive(Serialize)]
struct Typed<'a> {
    r#type: &'static str,
    payload: &'a Reading,
}

impl Framing {
    /// The text message for one reading.
    pub fn encode(self, reading: &Reading) -> String {
        // Serialising a struct of strings, a timestamp and a JSON map cannot fail.
        match self {
            Framing::Bare => serde_json::to_string(reading),
            Framing::Typed => serde_json::to_string(&Typed {
                r#type: "data",
                payload: reading,
            }),
        }
        .unwrap_or_default()
    }
}

/// A message the platform sends on the producer socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Ack {
        #[serde(rename = "subscriberCount", default)]
        subscriber_count: Option<u64>,
        #[serde(default)]
        transaction_id: Option<serde_json::Value>,
    },
    Error {
        #[serde(default)]
        error: String,
    },
    /// Anything else the platform may add; ignored, not an error.
    #[serde(other)]
    Other,
}

impl ServerMessage {
    /// Parses a text message; `None` for text that is not a typed JSON message.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        let mut data = serde_json::Map::new();
        data.insert("temperature".into(), 21.5.into());
        Reading {
            device_id: "device-001".into(),
            timestamp: time::macros::datetime!(2026-11-21 12:00:00 UTC),
            data,
        }
    }

    #[test]
    fn both_framings_match_the_contract() {
        assert_eq!(
            Framing::Bare.encode(&reading()),
            r#"{"device_id":"device-001","timestamp":"2026-11-21T12:00:00Z","data":{"temperature":21.5}}"#
        );
        assert_eq!(
            Framing::Typed.encode(&reading()),
            r#"{"type":"data","payload":{"device_id":"device-001","timestamp":"2026-11-21T12:00:00Z","data":{"temperature":21.5}}}"#
        );
    }

    #[test]
    fn server_messages_parse() {
        assert_eq!(
            ServerMessage::parse(r#"{"type":"ack","subscriberCount":2,"transaction_id":"t1"}"#),
            Some(ServerMessage::Ack {
                subscriber_count: Some(2),
                transaction_id: Some("t1".into())
            })
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"hello"}"#),
            Some(ServerMessage::Other)
        );
        assert_eq!(ServerMessage::parse("not json"), None);
    }

    #[test]
    fn the_token_goes_in_the_query_and_never_in_logs() {
        let base = Url::parse("wss://h:8001/producer?token=old&v=2").unwrap();
        let url = producer_url(&base, &Secret::new("a b&c"));
        assert_eq!(url.as_str(), "wss://h:8001/producer?v=2&token=a+b%26c");
        let shown = redacted(&url);
        assert_eq!(shown, "wss://h:8001/producer?v=2&token=***");
        assert!(!shown.contains("a+b"));
    }
}
