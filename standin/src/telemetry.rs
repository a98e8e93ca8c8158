//! Contract 3 (seed 001): the connection-telemetry backend — sign-in, client tokens, and the
//! `/api/connections` and `/api/metrics` ingest endpoints.
//!
//! The order of checks follows an Express app with a global 2 MB JSON body parser: a body that
//! is too large (413) or malformed (400) is refused before authentication; then the bearer
//! token (401), the `X-Tenant-Id` header (401 without, 403 if the token's user does not own the
//! tenant), then the shape of every item (400). Connections are upserted by `(tenant, id)`,
//! snapshots appended. No GeoIP enrichment, no Socket.IO broadcast.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::post;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ApiError, ApiResult, JsonBody, Shared, bearer, hex_id, lock, str_field};

const AUD: &str = "telemetry";

#[derive(Debug)]
struct User {
    id: String,
    email: String,
    password: String,
    tenants: Vec<String>,
}

#[derive(Debug, Default)]
struct Connections {
    /// First-seen order.
    items: Vec<Value>,
    by_id: HashMap<String, usize>,
}

#[derive(Debug)]
pub(crate) struct Db {
    users: Vec<User>,
    connections: HashMap<String, Connections>,
    snapshots: HashMap<String, Vec<Value>>,
}

impl Db {
    pub(crate) fn seeded() -> Self {
        let user = |email: &str, password: &str, tenant: &str| User {
            id: hex_id(24),
            email: email.into(),
            password: password.into(),
            tenants: vec![tenant.into()],
        };
        Self {
            users: vec![
                user("edge@example.com", "Edge@123", "tenant-edge"),
                user("other@example.com", "Other@123", "tenant-other"),
            ],
            connections: HashMap::new(),
            snapshots: HashMap::new(),
        }
    }

    pub(crate) fn connections(&self, tenant: &str) -> Vec<Value> {
        self.connections
            .get(tenant)
            .map(|c| c.items.clone())
            .unwrap_or_default()
    }

    pub(crate) fn snapshots(&self, tenant: &str) -> Vec<Value> {
        self.snapshots.get(tenant).cloned().unwrap_or_default()
    }

    /// Tenant name → (connections stored, snapshots stored), for the control API.
    pub(crate) fn counts(&self) -> Value {
        let mut tenants: Vec<&String> = self
            .connections
            .keys()
            .chain(self.snapshots.keys())
            .collect();
        tenants.sort();
        tenants.dedup();
        let map: Map<String, Value> = tenants
            .into_iter()
            .map(|t| {
                let conns = self.connections.get(t).map_or(0, |c| c.items.len());
                let snaps = self.snapshots.get(t).map_or(0, Vec::len);
                (
                    t.clone(),
                    json!({ "connections": conns, "snapshots": snaps }),
                )
            })
            .collect();
        Value::Object(map)
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/auth/signin", post(signin))
        .route("/auth/client-token", post(client_token))
        .route("/api/connections", post(connections))
        .route("/api/metrics", post(metrics))
}

/// Like the `ms` package prints a duration: `12h`, `1d`, `90s`, `500ms`.
fn ms_string(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

async fn signin(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let (Some(email), Some(password)) = (str_field(&body, "email"), str_field(&body, "password"))
    else {
        return Err(ApiError::bad_request("Email and password required"));
    };
    let db = lock(&shared.telemetry);
    let user = db
        .users
        .iter()
        .find(|u| u.email.eq_ignore_ascii_case(email) && u.password == password)
        .ok_or_else(|| ApiError::unauthorized("Invalid credentials"))?;
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(user.id));
    claims.insert("email".into(), json!(user.email));
    claims.insert("typ".into(), json!("user"));
    let token = shared.jwt.sign(AUD, claims, shared.config.signin_token_ttl);
    Ok(
        axum::Json(json!({ "token": token, "user": { "id": user.id, "email": user.email } }))
            .into_response(),
    )
}

/// The user id of a valid bearer token whose `typ` is one of `kinds`.
fn caller(shared: &Shared, headers: &HeaderMap, kinds: &[&str]) -> Result<String, ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("No token provided"))?;
    let claims = shared
        .jwt
        .verify(token, AUD)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let typ = claims.get("typ").and_then(Value::as_str).unwrap_or("");
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if kinds.contains(&typ) => Ok(sub.to_owned()),
        _ => Err(ApiError::unauthorized("Invalid token")),
    }
}

async fn client_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let id = caller(&shared, &headers, &["user"])?;
    let db = lock(&shared.telemetry);
    let user = db
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or_else(|| ApiError::unauthorized("Invalid token"))?;
    let tenant = match str_field(&body, "tenantId") {
        Some(t) if user.tenants.iter().any(|own| own == t) => t.to_owned(),
        Some(_) => return Err(ApiError::new(StatusCode::FORBIDDEN, "Tenant not owned")),
        None => user
            .tenants
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into()),
    };
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(user.id));
    claims.insert("email".into(), json!(user.email));
    claims.insert("tenantId".into(), json!(tenant));
    claims.insert("typ".into(), json!("client"));
    let ttl = shared.config.client_token_ttl;
    let token = shared.jwt.sign(AUD, claims, ttl);
    Ok(axum::Json(json!({ "token": token, "expiresIn": ms_string(ttl) })).into_response())
}

/// Authentication and tenant checks of both ingest endpoints; returns the tenant.
fn ingest_tenant(shared: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let id = caller(shared, headers, &["user", "client"])?;
    let tenant = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Missing X-Tenant-Id header"))?;
    let db = lock(&shared.telemetry);
    let user = db
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or_else(|| ApiError::unauthorized("Invalid token"))?;
    if !user.tenants.iter().any(|t| t == tenant) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Tenant not owned"));
    }
    Ok(tenant.to_owned())
}

/// The items of array field `name`, each checked by `check`.
fn items<'a>(
    body: &'a Map<String, Value>,
    name: &str,
    check: fn(&Map<String, Value>) -> Result<(), String>,
) -> Result<&'a Vec<Value>, ApiError> {
    let list = body
        .get(name)
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request(format!("{name} must be an array")))?;
    for (i, item) in list.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| ApiError::bad_request(format!("{name}[{i}] must be an object")))?;
        check(obj).map_err(|e| ApiError::bad_request(format!("{name}[{i}].{e}")))?;
    }
    Ok(list)
}

fn need<'a>(o: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    o.get(field)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("{field}: required"))
}

fn non_negative(o: &Map<String, Value>, field: &str) -> Result<(), String> {
    need(o, field)?
        .as_f64()
        .filter(|n| *n >= 0.0)
        .map(|_| ())
        .ok_or_else(|| format!("{field}: must be a number >= 0"))
}

fn count(o: &Map<String, Value>, field: &str) -> Result<(), String> {
    need(o, field)?
        .as_u64()
        .map(|_| ())
        .ok_or_else(|| format!("{field}: must be an integer >= 0"))
}

fn rfc3339(o: &Map<String, Value>, field: &str) -> Result<(), String> {
    need(o, field)?
        .as_str()
        .filter(|s| OffsetDateTime::parse(s, &Rfc3339).is_ok())
        .map(|_| ())
        .ok_or_else(|| format!("{field}: must be an RFC 3339 date-time"))
}

fn one_of(o: &Map<String, Value>, field: &str, allowed: &[&str]) -> Result<(), String> {
    need(o, field)?
        .as_str()
        .filter(|s| allowed.contains(s))
        .map(|_| ())
        .ok_or_else(|| format!("{field}: must be one of {}", allowed.join("|")))
}

fn check_connection(o: &Map<String, Value>) -> Result<(), String> {
    if need(o, "id")?.as_str().is_none_or(str::is_empty) {
        return Err("id: must be a non-empty string".into());
    }
    for field in ["sourceIp", "destIp"] {
        if need(o, field)?
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .is_none()
        {
            return Err(format!("{field}: must be an IP address"));
        }
    }
    for field in ["sourcePort", "destPort"] {
        if need(o, field)?
            .as_u64()
            .filter(|p| *p <= u64::from(u16::MAX))
            .is_none()
        {
            return Err(format!("{field}: must be a port number"));
        }
    }
    one_of(o, "protocol", &["TCP", "UDP", "ICMP", "OTHER"])?;
    one_of(o, "status", &["active", "inactive"])?;
    rfc3339(o, "startTime")?;
    rfc3339(o, "lastActivity")?;
    // Optional, as in the real backend (its own client never sends `bandwidth`).
    for field in ["duration", "bandwidth"] {
        if o.get(field).is_some_and(|d| !d.is_null()) {
            non_negative(o, field)?;
        }
    }
    for field in ["bytesIn", "bytesOut", "packetsIn", "packetsOut"] {
        non_negative(o, field)?;
    }
    Ok(())
}

fn check_snapshot(o: &Map<String, Value>) -> Result<(), String> {
    rfc3339(o, "timestamp")?;
    count(o, "connections")?;
    count(o, "inactive")?;
    non_negative(o, "bandwidthIn")?;
    non_negative(o, "bandwidthOut")
}

fn accepted(n: usize) -> ApiResult {
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "accepted": n }))).into_response())
}

async fn connections(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let tenant = ingest_tenant(&shared, &headers)?;
    let list = items(&body, "connections", check_connection)?;
    let mut db = lock(&shared.telemetry);
    let store = db.connections.entry(tenant).or_default();
    for conn in list {
        // Checked above: every item has a string id.
        let id = conn["id"].as_str().unwrap_or_default().to_owned();
        match store.by_id.get(&id) {
            Some(&i) => store.items[i] = conn.clone(),
            None => {
                store.by_id.insert(id, store.items.len());
                store.items.push(conn.clone());
            }
        }
    }
    accepted(list.len())
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let tenant = ingest_tenant(&shared, &headers)?;
    let list = items(&body, "snapshots", check_snapshot)?;
    lock(&shared.telemetry)
        .snapshots
        .entry(tenant)
        .or_default()
        .extend(list.iter().cloned());
    accepted(list.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_strings() {
        assert_eq!(ms_string(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(ms_string(Duration::from_secs(86_400)), "1d");
        assert_eq!(ms_string(Duration::from_secs(90)), "90s");
        assert_eq!(ms_string(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn connection_shape() {
        let good = json!({
            "id": "c1", "sourceIp": "10.0.0.2", "destIp": "1.1.1.1", "sourcePort": 5000,
            "destPort": 443, "protocol": "TCP", "status": "active",
            "startTime": "2025-01-01T00:00:00Z", "lastActivity": "2025-01-01T00:00:05.5Z",
            "bytesIn": 10, "bytesOut": 20, "packetsIn": 1, "packetsOut": 2, "bandwidth": 0.5,
        });
        let obj = good.as_object().expect("object");
        assert_eq!(check_connection(obj), Ok(()));
        for (field, bad) in [
            ("protocol", json!("SCTP")),
            ("sourceIp", json!("nope")),
            ("destPort", json!(70000)),
            ("status", json!("open")),
            ("startTime", json!("yesterday")),
            ("bytesIn", json!(-1)),
            ("duration", json!("long")),
            ("bandwidth", json!(-1)),
        ] {
            let mut o = obj.clone();
            o.insert(field.into(), bad);
            assert!(check_connection(&o).is_err(), "{field}");
        }
        let mut o = obj.clone();
        o.remove("bandwidth");
        assert_eq!(check_connection(&o), Ok(()), "bandwidth is optional");
        o.remove("bytesIn");
        assert!(check_connection(&o).is_err());
    }
}
