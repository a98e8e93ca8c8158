//! The contract-3 client against the stand-in: client tokens, the tenant header, ingest,
//! re-authentication and the body limit.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::time::Duration;

use common::{count, http, standin, url};
use edgeshare_shared::backend::telemetry::{
    BODY_LIMIT, Connection, FlowStatus, MetricsSnapshot, Protocol, TelemetryClient,
};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::secret::Secret;
use edgeshare_standin::Standin;
use time::OffsetDateTime;

fn client(standin: &Standin, tenant: &str) -> TelemetryClient {
    TelemetryClient::new(
        &http(),
        &url(standin),
        "edge@example.com".to_owned(),
        Secret::new("Edge@123"),
        tenant.to_owned(),
    )
}

fn flow(id: &str, bytes_in: u64) -> Connection {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    Connection {
        id: id.to_owned(),
        source_ip: "10.66.0.2".parse().unwrap(),
        dest_ip: "198.51.100.7".parse().unwrap(),
        source_port: 40000,
        dest_port: 443,
        protocol: Protocol::Tcp,
        status: FlowStatus::Active,
        start_time: now,
        last_activity: now,
        duration: Some(1500),
        bytes_in,
        bytes_out: 100,
        packets_in: 3,
        packets_out: 2,
    }
}

#[tokio::test]
async fn connections_are_ingested_for_the_tenant_and_upserted() {
    let standin = standin().await;
    let client = client(&standin, "tenant-edge");
    client
        .post_connections(&[flow("f1", 10), flow("f2", 20)])
        .await
        .unwrap();
    client.post_connections(&[flow("f1", 99)]).await.unwrap();
    let stored = standin.connections("tenant-edge");
    assert_eq!(stored.len(), 2);
    let f1 = stored.iter().find(|c| c["id"] == "f1").unwrap();
    assert_eq!(f1["bytesIn"], 99);
    let ingest = standin
        .received()
        .into_iter()
        .find(|r| r.path == "/api/connections")
        .unwrap();
    assert_eq!(ingest.header("x-tenant-id"), Some("tenant-edge"));
    assert_eq!(ingest.status, Some(202));
    // One sign-in and one client token served both calls.
    assert_eq!(count(&standin, "/auth/signin"), 1);
    assert_eq!(count(&standin, "/auth/client-token"), 1);
}

#[tokio::test]
async fn metrics_are_ingested() {
    let standin = standin().await;
    let snapshot = MetricsSnapshot {
        timestamp: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
        connections: 4,
        bandwidth_in: 17_300_000,
        bandwidth_out: 2_500,
        inactive: 1,
    };
    client(&standin, "tenant-edge")
        .post_metrics(&[snapshot])
        .await
        .unwrap();
    assert_eq!(standin.snapshots("tenant-edge").len(), 1);
}

#[tokio::test]
async fn another_users_tenant_is_forbidden() {
    let standin = standin().await;
    let err = client(&standin, "tenant-other")
        .post_connections(&[flow("f1", 1)])
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Forbidden), "{err}");
    assert!(standin.connections("tenant-other").is_empty());
}

#[tokio::test]
async fn an_expired_client_token_is_renewed_once() {
    let standin = standin().await;
    let client = client(&standin, "tenant-edge");
    client.post_connections(&[flow("f1", 1)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    standin.expire_tokens();
    client.post_connections(&[flow("f1", 2)]).await.unwrap();
    assert_eq!(count(&standin, "/auth/client-token"), 2);
    assert_eq!(
        count(&standin, "/api/connections"),
        3,
        "one refused, two accepted"
    );
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_before_sending() {
    let standin = standin().await;
    let flows: Vec<Connection> = (0..8000)
        .map(|i| flow(&format!("flow-{i:06}"), i))
        .collect();
    assert!(serde_json::to_vec(&flows).unwrap().len() > BODY_LIMIT);
    let err = client(&standin, "tenant-edge")
        .post_connections(&flows)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::BodyTooLarge { .. }), "{err}");
    assert!(standin.received().is_empty(), "nothing was sent");
}
