//! Contract 2 (seed 002): the DePin auth service and its producer WebSocket.
//!
//! Auth is served at `/login`, `/refresh`, `/register` and again under `/depin/api/auth/`,
//! because `/api/auth/login` is contract 1's on this shared port (the real client's auth paths
//! are configurable). `GET /producer?token=<access token>` upgrades to a WebSocket that takes
//! sensor messages bare (`{device_id, timestamp, data}`, no reply) or wrapped
//! (`{"type": "data", "payload": {...}}`, answered with an ack); a bad message is answered with
//! `{"type": "error"}` and the socket stays open. Every message is recorded. The stand-in has no
//! consumers, so `subscriberCount` is always 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ApiError, ApiResult, JsonBody, Shared, hex_id, lock, str_field};

const AUD: &str = "depin";

/// How a producer message was framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WsFraming {
    /// `{device_id, timestamp, data}`.
    Bare,
    /// `{"type": "data", "payload": {device_id, timestamp, data}}`.
    Wrapped,
    /// Neither: not JSON, not an object, an unknown `type`, or a binary frame.
    Invalid,
}

/// One message received on a producer WebSocket.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedWsMessage {
    pub user_id: u64,
    pub username: String,
    pub framing: WsFraming,
    /// The frame's text (lossy UTF-8 for a binary frame).
    pub text: String,
    /// `{device_id, timestamp, data}` when the message was valid.
    pub payload: Option<Value>,
    /// Why the message was refused (also sent back as `{"type": "error"}`).
    pub error: Option<String>,
    /// What was sent back, if anything.
    pub reply: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug)]
struct User {
    id: u64,
    username: String,
    password: String,
    role: String,
    device_id: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Db {
    users: Vec<User>,
}

impl Db {
    pub(crate) fn seeded() -> Self {
        Self {
            users: vec![User {
                id: 1,
                username: "device-001".into(),
                password: "Device@123".into(),
                role: "producer".into(),
                device_id: Some("device-001".into()),
            }],
        }
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new().route("/producer", get(producer));
    for prefix in ["", "/depin/api/auth"] {
        router = router
            .route(&format!("{prefix}/login"), post(login))
            .route(&format!("{prefix}/refresh"), post(refresh))
            .route(&format!("{prefix}/register"), post(register));
    }
    router
}

/// A new access + refresh pair for a user.
fn token_pair(shared: &Shared, user: &User) -> (String, String) {
    let claims = |typ: &str| {
        let mut c = Map::new();
        c.insert("sub".into(), json!(user.id.to_string()));
        c.insert("user_id".into(), json!(user.id));
        c.insert("username".into(), json!(user.username));
        c.insert("role".into(), json!(user.role));
        c.insert("device_id".into(), json!(user.device_id));
        c.insert("typ".into(), json!(typ));
        c
    };
    let cfg = &shared.config;
    (
        shared.jwt.sign(AUD, claims("access"), cfg.access_token_ttl),
        shared
            .jwt
            .sign(AUD, claims("refresh"), cfg.refresh_token_ttl),
    )
}

/// The user id of a valid token of kind `typ`.
fn verify(shared: &Shared, token: &str, typ: &str) -> Result<u64, ApiError> {
    let claims = shared
        .jwt
        .verify(token, AUD)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if claims.get("typ").and_then(Value::as_str) != Some(typ) {
        return Err(ApiError::unauthorized("Invalid token"));
    }
    claims
        .get("user_id")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::unauthorized("Invalid token"))
}

async fn login(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let (Some(username), Some(password)) =
        (str_field(&body, "username"), str_field(&body, "password"))
    else {
        return Err(ApiError::bad_request("Username and password required"));
    };
    let db = lock(&shared.depin);
    let user = db
        .users
        .iter()
        .find(|u| u.username == username && u.password == password)
        .ok_or_else(|| ApiError::unauthorized("Invalid credentials"))?;
    let (access, refresh) = token_pair(&shared, user);
    Ok(axum::Json(json!({
        "access_token": access, "refresh_token": refresh, "user_id": user.id,
    }))
    .into_response())
}

async fn refresh(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let token = str_field(&body, "refresh_token")
        .ok_or_else(|| ApiError::bad_request("refresh_token required"))?;
    let id = verify(&shared, token, "refresh")?;
    let db = lock(&shared.depin);
    let user = db
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or_else(|| ApiError::unauthorized("Invalid token"))?;
    let (access, refresh) = token_pair(&shared, user);
    Ok(axum::Json(json!({ "access_token": access, "refresh_token": refresh })).into_response())
}

async fn register(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let (Some(username), Some(password), Some(role)) = (
        str_field(&body, "username"),
        str_field(&body, "password"),
        str_field(&body, "role"),
    ) else {
        return Err(ApiError::bad_request(
            "username, password and role required",
        ));
    };
    if role != "producer" && role != "consumer" {
        return Err(ApiError::bad_request("Invalid role"));
    }
    let device_id = str_field(&body, "device_id");
    if role == "producer" && device_id.is_none() {
        return Err(ApiError::bad_request("device_id required for a producer"));
    }
    let mut db = lock(&shared.depin);
    // A taken name: 409 in the `{"error"}` shape, as an Express service on a unique column
    // answers. The platform's documents do not show this reply; clients (the agent's
    // `register`) also take a 400 whose text says the name exists.
    if db.users.iter().any(|u| u.username == username) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Username already exists",
        ));
    }
    let id = db.users.iter().map(|u| u.id).max().unwrap_or(0) + 1;
    db.users.push(User {
        id,
        username: username.to_owned(),
        password: password.to_owned(),
        role: role.to_owned(),
        device_id: device_id.map(str::to_owned),
    });
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "user_id": id, "username": username, "role": role, "device_id": device_id,
        })),
    )
        .into_response())
}

/// The token is checked before the upgrade, so a bad token is an HTTP 401, as in the real
/// service (which validates in `verifyClient`).
async fn producer(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let Some(token) = query.get("token").filter(|t| !t.is_empty()) else {
        return ApiError::unauthorized("No token provided").into_response();
    };
    let id = match verify(&shared, token, "access") {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let username = lock(&shared.depin)
        .users
        .iter()
        .find(|u| u.id == id)
        .map(|u| u.username.clone());
    let Some(username) = username else {
        return ApiError::unauthorized("Invalid token").into_response();
    };
    match ws {
        Ok(ws) => ws
            .on_upgrade(move |socket| serve_producer(socket, shared, id, username))
            .into_response(),
        Err(rejection) => ApiError::new(rejection.status(), rejection.body_text()).into_response(),
    }
}

/// Counts an open socket for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.ws_open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_producer(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    user_id: u64,
    username: String,
) {
    let mut drop_signal = shared.ws_drop.subscribe();
    shared.ws_open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(shared.clone());
    tracing::debug!(user_id, "producer connected");
    loop {
        let msg = tokio::select! {
            // Returning drops the socket: the TCP connection closes with no Close frame.
            _ = drop_signal.changed() => {
                tracing::debug!(user_id, "dropping producer socket");
                return;
            }
            msg = socket.recv() => msg,
        };
        let (text, binary) = match msg {
            None | Some(Err(_)) => return,
            Some(Ok(Message::Text(text))) => (text.as_str().to_owned(), false),
            Some(Ok(Message::Binary(bytes))) => {
                (String::from_utf8_lossy(&bytes).into_owned(), true)
            }
            // Pings are answered by the WebSocket layer; a Close is answered there too, and
            // the next `recv` ends the stream.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
        };
        let (framing, parsed) = if binary {
            (
                WsFraming::Invalid,
                Err("Binary messages are not supported".to_owned()),
            )
        } else {
            parse_message(&text)
        };
        let reply = match (&parsed, framing) {
            (Err(e), _) => Some(json!({ "type": "error", "error": e })),
            (Ok(_), WsFraming::Wrapped) => Some(json!({
                "type": "ack", "subscriberCount": 0, "transaction_id": uuid_like(),
            })),
            (Ok(_), _) => None,
        };
        lock(&shared.ws_messages).push(ReceivedWsMessage {
            user_id,
            username: username.clone(),
            framing,
            text,
            payload: parsed.as_ref().ok().cloned(),
            error: parsed.err(),
            reply: reply.clone(),
            at: OffsetDateTime::now_utc(),
        });
        if let Some(reply) = reply
            && socket
                .send(Message::Text(reply.to_string().into()))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Tells the framing and checks the payload's fields.
fn parse_message(text: &str) -> (WsFraming, Result<Value, String>) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (WsFraming::Invalid, Err(format!("Invalid JSON: {e}"))),
    };
    let Some(obj) = value.as_object() else {
        return (
            WsFraming::Invalid,
            Err("Message must be a JSON object".into()),
        );
    };
    match obj.get("type") {
        None => (WsFraming::Bare, check_payload(&value)),
        Some(t) if t == "data" => match obj.get("payload") {
            Some(payload) => (WsFraming::Wrapped, check_payload(payload)),
            None => (WsFraming::Wrapped, Err("Missing payload".into())),
        },
        Some(t) => (
            WsFraming::Invalid,
            Err(format!("Unknown message type: {t}")),
        ),
    }
}

fn check_payload(payload: &Value) -> Result<Value, String> {
    let field = |name: &str| payload.get(name);
    if field("device_id")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("Missing or invalid field: device_id".into());
    }
    let timestamp_ok = field("timestamp")
        .and_then(Value::as_str)
        .is_some_and(|t| OffsetDateTime::parse(t, &Rfc3339).is_ok());
    if !timestamp_ok {
        return Err("Missing or invalid field: timestamp (RFC 3339)".into());
    }
    if !field("data").is_some_and(Value::is_object) {
        return Err("Missing or invalid field: data (object)".into());
    }
    Ok(payload.clone())
}

/// A random version-4-shaped UUID.
fn uuid_like() -> String {
    let h = hex_id(32);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        8 + fastrand::u8(..4),
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings() {
        let payload = r#"{"device_id":"d","timestamp":"2025-01-29T11:35:00Z","data":{"t":1}}"#;
        assert_eq!(parse_message(payload).0, WsFraming::Bare);
        assert!(parse_message(payload).1.is_ok());
        let wrapped = format!(r#"{{"type":"data","payload":{payload}}}"#);
        assert_eq!(parse_message(&wrapped).0, WsFraming::Wrapped);
        assert!(parse_message(&wrapped).1.is_ok());
        assert!(parse_message("nope").1.is_err());
        assert!(parse_message(r#"{"device_id":"d"}"#).1.is_err());
        assert!(parse_message(r#"{"type":"data"}"#).1.is_err());
        assert_eq!(parse_message(r#"{"type":"x"}"#).0, WsFraming::Invalid);
        let bad_time = r#"{"device_id":"d","timestamp":"yesterday","data":{}}"#;
        assert!(parse_message(bad_time).1.is_err());
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_like();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
    }
}
