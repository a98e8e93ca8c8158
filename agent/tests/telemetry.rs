//! The gateway's flows to the telemetry backend (contract 3), end to end: the daemon
//! in-process, a fake gateway control socket, the stand-in over loopback, with 500s and
//! expired tokens on the way.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_standin::{Fault, FaultKind};
use support::{Agent, FakeGateway, Setup, config_text, parse_config, standin, wait_until};

const TENANT: &str = "tenant-edge";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_upserted_with_the_tenant_through_500s_and_expired_tokens() {
    let standin = standin().await;
    standin.set_fault(Fault::new("/api/connections", FaultKind::Status500).times(2));
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start(&dir.path().join("gw.sock"));
    let text = format!(
        "{}\n[telemetry]\nurl = \"{}\"\nemail = \"edge@example.com\"\npassword = \"Edge@123\"\ntenant = \"{TENANT}\"\ninterval = \"200ms\"\nsnapshot_interval = \"1s\"\n",
        config_text(&standin.base_url(), dir.path(), &Setup::default()),
        standin.base_url()
    );
    let agent = Agent::start(parse_config(&text), dir.path()).await;

    let f1_bytes = || {
        standin
            .connections(TENANT)
            .iter()
            .find(|c| c["id"] == "f1")
            .and_then(|c| c["bytesIn"].as_u64())
    };
    assert!(
        wait_until(Duration::from_secs(20), || async { f1_bytes().is_some() }).await,
        "{}",
        agent.metrics_text().await
    );
    // The two 500s were retried; the finished flow f2 (read during them) was kept, not lost.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            standin
                .connections(TENANT)
                .iter()
                .any(|c| c["id"] == "f2" && c["status"] == "inactive")
        })
        .await
    );
    // Every ingest call carried the tenant; the first two got 500.
    let ingest: Vec<_> = standin
        .received()
        .into_iter()
        .filter(|r| r.path == "/api/connections")
        .collect();
    assert!(
        ingest
            .iter()
            .all(|r| r.header("x-tenant-id") == Some(TENANT))
    );
    assert_eq!(ingest[0].status, Some(500));
    assert_eq!(ingest[1].status, Some(500));
    assert!(
        ingest.iter().skip(2).all(|r| r.status == Some(202)),
        "{ingest:?}"
    );

    // Tokens refused from now on: a new sign-in and client token, and the counters go on.
    let signins = || {
        standin
            .received()
            .iter()
            .filter(|r| r.path == "/auth/signin")
            .count()
    };
    let before = signins();
    standin.expire_tokens();
    let served = gateway.flows_answered.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            signins() > before && f1_bytes().is_some_and(|b| b > 1000 * served)
        })
        .await,
        "{}",
        agent.metrics_text().await
    );
    // A snapshot a second.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !standin.snapshots(TENANT).is_empty()
        })
        .await
    );
    let snapshot = standin.snapshots(TENANT).remove(0);
    assert!(snapshot["connections"].as_u64().unwrap() >= 1, "{snapshot}");
    assert!(agent.metric("telemetry_flows_posted_total").await >= 2.0);
    assert_eq!(agent.metric("telemetry_flows_dropped_total").await, 0.0);
    agent.stop().await;
}
