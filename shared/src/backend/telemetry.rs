//! Contract 3: the connection-telemetry backend (seed 001): sign-in, a client token per
//! tenant, and the connections and metrics ingest.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use super::{Api, BackendError, Call, HttpClient, Token, TokenSlot};
use crate::secret::Secret;

/// The ingest's body limit. A larger batch is refused here rather than sent for a 413.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Active,
    Inactive,
}

/// One flow. Counters are cumulative totals: each upsert overwrites the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// Stable for the life of the flow: the backend upserts by it.
    pub id: String,
    pub source_ip: IpAddr,
    pub dest_ip: IpAddr,
    pub source_port: u16,
    pub dest_port: u16,
    pub protocol: Protocol,
    pub status: FlowStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub start_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    /// Milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    // No `bandwidth`: the contract's optional per-flow field is added up as bytes by the
    // backend (its "Bandwidth" card, the map's colours), so a rate there shows as a huge
    // byte count; its own client never sets it, nor does this one.
}

/// The summary of one window (a minute by default), as the backend's own client and
/// dashboard read it: byte totals, not rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    /// The window's start.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Distinct flows seen in the window, ended ones included.
    pub connections: u64,
    /// Bytes received over the window.
    pub bandwidth_in: u64,
    /// Bytes sent over the window.
    pub bandwidth_out: u64,
    /// Flows that ended in the window.
    pub inactive: u64,
}

#[derive(Serialize)]
struct SignIn<'a> {
    email: &'a str,
    password: &'a str,
}

#[derive(Deserialize)]
struct SignInReply {
    token: Secret,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientTokenRequest<'a> {
    tenant_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientTokenReply {
    token: Secret,
    /// A duration like "12h".
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Serialize)]
struct ConnectionsBody<'a> {
    connections: &'a [Connection],
}

#[derive(Serialize)]
struct MetricsBody<'a> {
    snapshots: &'a [MetricsSnapshot],
}

/// A client for contract 3, for one tenant. Holds a client token and renews it late in its
/// life (at 85 % of it, at most 5 minutes before its expiry: [`super::renew_margin`]); the
/// backend has no refresh: sign in again, then ask for a new one.
#[derive(Debug)]
pub struct TelemetryClient {
    api: Api,
    email: String,
    password: Secret,
    tenant: String,
    token: TokenSlot,
}

impl TelemetryClient {
    pub fn new(
        http: &HttpClient,
        base: &Url,
        email: String,
        password: Secret,
        tenant: String,
    ) -> Self {
        TelemetryClient {
            api: Api::new(http, base),
            email,
            password,
            tenant,
            token: TokenSlot::default(),
        }
    }

    /// The account it signs in with, for messages.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The tenant it sends for (`X-Tenant-Id`).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Signs in and obtains a client token for the tenant.
    async fn client_token(&self) -> Result<Token, BackendError> {
        let body = SignIn {
            email: &self.email,
            password: self.password.expose(),
        };
        let user: SignInReply = self
            .api
            .send(Call::post("/auth/signin", &body))
            .await
            .map_err(super::crowd::bad_credentials)?;
        let request = ClientTokenRequest {
            tenant_id: &self.tenant,
        };
        let reply: ClientTokenReply = self
            .api
            .send(Call::post("/auth/client-token", &request).bearer(&user.token))
            .await?;
        let lifetime = reply
            .expires_in
            .as_deref()
            .and_then(|text| humantime::parse_duration(text).ok())
            .and_then(|d| time::Duration::try_from(d).ok());
        let token = Token::from_jwt(reply.token);
        Ok(Token {
            expires: token
                .expires
                .or(lifetime.map(|d| OffsetDateTime::now_utc() + d)),
            lifetime: token.lifetime.or(lifetime),
            value: token.value,
        })
    }

    async fn ingest(&self, path: &'static str, body: Vec<u8>) -> Result<(), BackendError> {
        if body.len() > BODY_LIMIT {
            return Err(BackendError::BodyTooLarge {
                endpoint: format!("POST {path}"),
                size: body.len(),
                limit: BODY_LIMIT,
            });
        }
        let call = || {
            let mut call = Call::new(reqwest::Method::POST, path).tenant(&self.tenant);
            call.body = Some(body.clone());
            call
        };
        self.token
            .send::<serde::de::IgnoredAny, _>(&self.api, || self.client_token(), call)
            .await
            .map(drop)
    }

    /// `POST /api/connections` (202). Batch at most a few hundred flows per call.
    pub async fn post_connections(&self, connections: &[Connection]) -> Result<(), BackendError> {
        let body = serde_json::to_vec(&ConnectionsBody { connections }).unwrap_or_default();
        self.ingest("/api/connections", body).await
    }

    /// `POST /api/metrics` (202).
    pub async fn post_metrics(&self, snapshots: &[MetricsSnapshot]) -> Result<(), BackendError> {
        let body = serde_json::to_vec(&MetricsBody { snapshots }).unwrap_or_default();
        self.ingest("/api/metrics", body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_wire_shape() {
        let at = time::macros::datetime!(2026-11-21 12:00:00 UTC);
        let c = Connection {
            id: "f1".into(),
            source_ip: "10.0.0.2".parse().unwrap(),
            dest_ip: "2001:db8::1".parse().unwrap(),
            source_port: 50000,
            dest_port: 443,
            protocol: Protocol::Tcp,
            status: FlowStatus::Active,
            start_time: at,
            last_activity: at,
            duration: None,
            bytes_in: 10,
            bytes_out: 20,
            packets_in: 1,
            packets_out: 2,
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "f1", "sourceIp": "10.0.0.2", "destIp": "2001:db8::1",
                "sourcePort": 50000, "destPort": 443, "protocol": "TCP", "status": "active",
                "startTime": "2026-11-21T12:00:00Z", "lastActivity": "2026-11-21T12:00:00Z",
                "bytesIn": 10, "bytesOut": 20, "packetsIn": 1, "packetsOut": 2
            }),
            "no `bandwidth`: the backend would add the rate up as bytes"
        );
    }

    #[test]
    fn snapshot_wire_shape() {
        let s = MetricsSnapshot {
            timestamp: time::macros::datetime!(2026-11-21 12:00:00 UTC),
            connections: 3,
            bandwidth_in: 17_300_000,
            bandwidth_out: 42,
            inactive: 1,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "timestamp": "2026-11-21T12:00:00Z", "connections": 3,
                "bandwidthIn": 17_300_000, "bandwidthOut": 42, "inactive": 1
            })
        );
    }
}
