//! The gateway's flows to the telemetry backend (contract 3), end to end: the daemon
//! in-process, a fake gateway control socket, the stand-in over loopback, with 500s and
//! expired tokens on the way.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeshare_standin::{Fault, FaultKind, Standin};
use serde_json::Value;
use support::{
    Agent, FakeGateway, Setup, config_text, gateway_flow, parse_config, standin, wait_until,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TENANT: &str = "tenant-edge";

/// An agent config with `[telemetry]` for `tenant`, flows read every `interval`.
fn telemetry_config(
    standin: &Standin,
    dir: &std::path::Path,
    tenant: &str,
    interval: &str,
) -> String {
    format!(
        "{}\n[telemetry]\nurl = \"{}\"\nemail = \"edge@example.com\"\npassword = \"Edge@123\"\ntenant = \"{tenant}\"\ninterval = \"{interval}\"\nsnapshot_interval = \"1s\"\n",
        config_text(&standin.base_url(), dir, &Setup::default()),
        standin.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_upserted_with_the_tenant_through_500s_and_expired_tokens() {
    let standin = standin().await;
    standin.set_fault(Fault::new("/api/connections", FaultKind::Status500).times(2));
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start(&dir.path().join("gw.sock"));
    let text = telemetry_config(&standin, dir.path(), TENANT, "200ms");
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

fn at(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &Rfc3339).unwrap()
}

/// The snapshots' timestamps: each on a multiple of the window (1 s here), one window
/// apart, none twice.
fn assert_whole_windows(snapshots: &[Value]) {
    let starts: Vec<OffsetDateTime> = snapshots.iter().map(|s| at(&s["timestamp"])).collect();
    for start in &starts {
        assert_eq!(start.nanosecond(), 0, "not on a boundary: {start}");
    }
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            time::Duration::seconds(1),
            "windows must follow each other, 1 s each, none twice: {starts:?}"
        );
    }
}

fn sum(snapshots: &[Value], field: &str) -> u64 {
    snapshots.iter().map(|s| s[field].as_u64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_the_bytes_of_its_window_and_is_dated_at_its_start() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    // Flow a grows to 5000 bytes in / 300 out, flow b carries 700 / 70 and ends. Nothing
    // after that.
    let _gateway = FakeGateway::with_flows(&dir.path().join("gw.sock"), |n| match n {
        1 => vec![gateway_flow("a", 1000, 100, "active", n)],
        2 => vec![
            gateway_flow("a", 5000, 300, "active", n),
            gateway_flow("b", 700, 70, "inactive", n),
        ],
        _ => vec![],
    });
    let text = telemetry_config(&standin, dir.path(), TENANT, "100ms");
    let started = OffsetDateTime::now_utc();
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    // Windows of 1 s on whole seconds: wait for two past the one with the traffic.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let snapshots = standin.snapshots(TENANT);
            sum(&snapshots, "bandwidthIn") == 5700
                && snapshots
                    .last()
                    .is_some_and(|s| at(&s["timestamp"]) > started + time::Duration::seconds(2))
        })
        .await,
        "{:?} {}",
        standin.snapshots(TENANT),
        agent.metrics_text().await
    );
    agent.stop().await;

    let snapshots = standin.snapshots(TENANT);
    assert_whole_windows(&snapshots);
    assert_eq!(sum(&snapshots, "bandwidthIn"), 5000 + 700);
    assert_eq!(sum(&snapshots, "bandwidthOut"), 300 + 70);
    assert_eq!(sum(&snapshots, "inactive"), 1, "b ended once");
    // Dated at its start: the first window began at most 1 s before the agent did, before
    // the first flows were posted.
    let first_post = standin
        .received()
        .iter()
        .find(|r| r.path == "/api/connections")
        .map(|r| r.at)
        .unwrap();
    let start = at(&snapshots[0]["timestamp"]);
    assert!(
        started - time::Duration::seconds(1) < start && start <= first_post,
        "{start} {started}"
    );
    // The per-flow rate is not sent: the backend would add it up as bytes.
    let stored = standin.connections(TENANT);
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|c| c.get("bandwidth").is_none()),
        "{stored:?}"
    );
}

/// The agent stopped while the backend refuses everything, then started again with the
/// backend back: the flows and windows that waited arrive, and the flow's history is not
/// counted again (its first reading after the restart counts only its growth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_loses_no_window_and_counts_no_history_again() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    // Flow a carries 1000 bytes between reads, up to 40,000 in all; then it is idle.
    let gateway = FakeGateway::with_flows(&dir.path().join("gw.sock"), |n| {
        vec![gateway_flow(
            "a",
            1000 * n.min(40),
            10 * n.min(40),
            "active",
            n,
        )]
    });
    let text = telemetry_config(&standin, dir.path(), TENANT, "100ms");
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    // A window posted, then the backend refuses everything for a while before the stop.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sum(&standin.snapshots(TENANT), "bandwidthIn") > 0
        })
        .await
    );
    standin.set_fault(Fault::new("/api/", FaultKind::Status500));
    let reads = gateway.flows_answered.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            gateway.flows_answered.load(Ordering::SeqCst) >= reads + 12
        })
        .await
    );
    agent.stop().await;
    let posted_before = standin.snapshots(TENANT).len();

    standin.clear_faults();
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    let settled = || async {
        let snapshots = standin.snapshots(TENANT);
        let flow = standin.connections(TENANT);
        sum(&snapshots, "bandwidthIn") >= 40_000
            && flow.first().is_some_and(|c| c["bytesIn"] == 40_000)
            && gateway.flows_answered.load(Ordering::SeqCst) > 45
    };
    let done = wait_until(Duration::from_secs(20), settled).await;
    // One window past the last growth, so that the window holding it has closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.stop().await;
    let snapshots = standin.snapshots(TENANT);
    let total = sum(&snapshots, "bandwidthIn");
    eprintln!(
        "agent restart: {} windows, {total} bytes in them, 40000 carried: {} doubled, {} lost",
        snapshots.len(),
        total.saturating_sub(40_000),
        40_000u64.saturating_sub(total)
    );
    assert!(done, "{snapshots:?} {:?}", standin.connections(TENANT));
    assert!(
        snapshots.len() > posted_before + 1,
        "the waiting windows came"
    );
    assert_eq!(total, 40_000, "every byte once");
    assert_eq!(sum(&snapshots, "bandwidthOut"), 400);
    assert_whole_windows(&snapshots);
    assert_eq!(standin.connections(TENANT).len(), 1);
}

/// A client token of 4 s (the shipped margin was 5 min: every call signed in again) is
/// renewed late in its life: about one sign-in per 3.4 s of posting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_renewed_late_in_its_life_not_before_every_call() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = edgeshare_standin::StandinConfig {
        client_token_ttl: Duration::from_secs(4),
        ..Default::default()
    };
    let standin = edgeshare_standin::start(listener, config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::with_flows(&dir.path().join("gw.sock"), |n| {
        vec![gateway_flow("a", 1000 * n, 10 * n, "active", n)]
    });
    let text = telemetry_config(&standin, dir.path(), TENANT, "100ms");
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    agent.stop().await;
    let received = standin.received();
    let count = |path: &str| received.iter().filter(|r| r.path == path).count();
    let (signins, posts) = (count("/auth/signin"), count("/api/connections"));
    eprintln!("short-lived token (4 s): {signins} sign-ins for {posts} posts in 8 s");
    assert!(posts >= 40, "{posts} posts");
    assert!(gateway.flows_answered.load(Ordering::SeqCst) >= 40);
    // Renewed 0.6 s before each expiry: 3 sign-ins in 8 s (2 to 4 with the clocks' whole
    // seconds), where one before every call would be one per post.
    assert!((2..=4).contains(&signins), "{signins} sign-ins");
    assert!(
        received
            .iter()
            .filter(|r| r.path.starts_with("/api/"))
            .all(|r| r.status == Some(202)),
        "no call met an expired token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tenant_backs_off_instead_of_signing_in_at_every_read() {
    use edgeshare_agent::metrics::Metrics;
    use edgeshare_agent::telemetry::TelemetrySettings;
    use edgeshare_shared::backend::telemetry::TelemetryClient;
    use edgeshare_shared::backend::{HttpClient, HttpSettings};
    use edgeshare_shared::retry::Backoff;

    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start(&dir.path().join("gw.sock"));
    // The account does not own this tenant: every client token is refused with a 403.
    let client = TelemetryClient::new(
        &HttpClient::new(&HttpSettings::default()).unwrap(),
        &standin.base_url().parse().unwrap(),
        "edge@example.com".to_owned(),
        edgeshare_shared::secret::Secret::new("Edge@123"),
        "tenant-other".to_owned(),
    );
    // The shipped backoff (5 s to 5 min) scaled down 25 times, flows read every 50 ms.
    let settings = TelemetrySettings {
        control_socket: dir.path().join("gw.sock"),
        interval: Duration::from_millis(50),
        snapshot_interval: Duration::from_secs(1),
        max_flows: 1000,
        state_file: dir.path().join("telemetry.json"),
        refused: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(1600),
            multiplier: 2.0,
        },
    };
    let metrics = std::sync::Arc::new(Metrics::default());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(edgeshare_agent::telemetry::run(
        settings,
        std::sync::Arc::new(client),
        metrics.clone(),
        stopping,
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop.send(true);
    task.await.unwrap();

    let count = |path: &str| standin.received().iter().filter(|r| r.path == path).count();
    let refused = standin
        .received()
        .into_iter()
        .filter(|r| r.path == "/auth/client-token")
        .all(|r| r.status == Some(403));
    assert!(refused);
    // Waits of at least 0.1, 0.2, 0.4, 0.8 s, then 0.8 s each: at most 8 sign-ins in 4 s,
    // where one at every read would be about 80. And it kept trying.
    let signins = count("/auth/signin");
    let reads = gateway.flows_answered.load(Ordering::SeqCst);
    assert!((4..=8).contains(&signins), "{signins} sign-ins");
    assert!(reads >= 40, "flows were read meanwhile: {reads}");
    assert_eq!(count("/auth/client-token"), signins);
    assert_eq!(count("/api/connections"), 0);
    assert_eq!(metrics.auth_failures.load(Ordering::SeqCst), signins as u64);
}
