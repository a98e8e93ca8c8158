//! The agent's stream end to end: the daemon in-process, the stand-in backend over loopback,
//! real WebSockets, real files, and the faults a field device meets: a backend that goes down
//! and comes back, a socket dropped without a close frame, 500s, tokens refused mid-stream,
//! a spool that fills up, an agent restarted with messages waiting.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::time::Duration;

use edgeshare_standin::{Fault, FaultKind};
use support::{
    Agent, FakeGateway, Setup, config_text, framings, missing, parse_config, received, standin,
    standin_at, usage_received, wait_all_delivered, wait_until,
};

const DELIVERY: Duration = Duration::from_secs(20);

async fn start(setup: &Setup) -> (edgeshare_standin::Standin, Agent, tempfile::TempDir) {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&config_text(&standin.base_url(), dir.path(), setup));
    let agent = Agent::start(config, dir.path()).await;
    (standin, agent, dir)
}

async fn streams_in_order(framing: &'static str, expected: &str) {
    let setup = Setup {
        framing,
        ..Setup::default()
    };
    let (standin, agent, _dir) = start(&setup).await;
    assert!(
        wait_until(DELIVERY, || async { received(&standin).len() >= 10 }).await,
        "no stream: {:?}",
        agent.metrics_text().await
    );
    let seen = received(&standin);
    assert_eq!(missing(&seen, seen.len() as u64), Vec::<u64>::new());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert_eq!(
        framings(&standin).into_iter().collect::<Vec<_>>(),
        [expected]
    );
    let message = standin.ws_messages().remove(0);
    let payload = message.payload.unwrap();
    assert_eq!(payload["device_id"], "test-device");
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(agent.metric("connected").await, 1.0);
    assert!(
        wait_until(DELIVERY, || async {
            agent.metric("messages_confirmed_total").await >= 10.0
        })
        .await,
        "{framing}: messages are confirmed (acks or pongs)"
    );
    // The token went in the URL, and nowhere in what the agent shows.
    let text = agent.metrics_text().await;
    assert!(!text.contains("token="), "{text}");
    let stopped = agent.stop().await;
    eprintln!("{framing}: the daemon stopped {stopped:?} after the signal");
    assert!(stopped < Duration::from_secs(5), "stopped in {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_framing_streams_every_sample_in_order() {
    streams_in_order("bare", "bare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_framing_streams_every_sample_in_order_and_is_acked() {
    streams_in_order("typed", "wrapped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_and_up_again_loses_nothing() {
    for framing in ["bare", "typed"] {
        let setup = Setup {
            framing,
            ..Setup::default()
        };
        let (standin, agent, _dir) = start(&setup).await;
        for round in 0..3 {
            let before = received(&standin).len();
            assert!(
                wait_until(DELIVERY, || async {
                    agent.metric("connected").await == 1.0 && received(&standin).len() > before + 2
                })
                .await,
                "{framing}, round {round}: not streaming: {}",
                agent.metrics_text().await
            );
            standin.refuse_connections().await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert_eq!(
                agent.metric("connected").await,
                0.0,
                "{framing}, round {round}: still connected to a backend that is down"
            );
            standin.accept_connections().await.unwrap();
        }
        wait_all_delivered(&agent, || received(&standin), DELIVERY).await;
        let reconnects = agent.metric("reconnects_total").await;
        assert!(reconnects >= 3.0, "{framing}: {reconnects} reconnects");
        // Confirmations follow the deliveries within a round trip.
        assert!(
            wait_until(DELIVERY, || async {
                agent.metric("spool_depth").await < 3.0
            })
            .await,
            "{framing}: {}",
            agent.metrics_text().await
        );
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_process_restarted_on_its_port_loses_nothing() {
    let setup = Setup::default();
    let standin = standin().await;
    let addr = standin.addr();
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&config_text(&standin.base_url(), dir.path(), &setup));
    let agent = Agent::start(config, dir.path()).await;
    let mut seen = Vec::new();
    let mut standin = Some(standin);
    for _ in 0..3 {
        let current = standin.take().unwrap();
        assert!(wait_until(DELIVERY, || async { received(&current).len() > 3 }).await);
        // Killed: every connection cut at once, what it received kept here, then it is gone.
        current.refuse_connections().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.extend(received(&current));
        drop(current);
        tokio::time::sleep(Duration::from_millis(500)).await;
        standin = Some(standin_at(addr).await);
    }
    let last = standin.unwrap();
    let target = agent.produced();
    assert!(
        wait_until(DELIVERY, || {
            let mut all = seen.clone();
            all.extend(received(&last));
            async move { missing(&all, target).is_empty() }
        })
        .await,
        "lost across restarts: {:?}",
        {
            let mut all = seen.clone();
            all.extend(received(&last));
            missing(&all, target)
        }
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_dropped_without_a_close_frame_is_replaced() {
    let (standin, agent, _dir) = start(&Setup::default()).await;
    assert!(wait_until(DELIVERY, || async { received(&standin).len() > 3 }).await);
    standin.drop_websockets();
    assert!(
        wait_until(DELIVERY, || async {
            agent.metric("reconnects_total").await >= 1.0 && agent.metric("connected").await == 1.0
        })
        .await
    );
    wait_all_delivered(&agent, || received(&standin), DELIVERY).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_mid_stream_means_a_new_login() {
    let (standin, agent, _dir) = start(&Setup::default()).await;
    assert!(wait_until(DELIVERY, || async { received(&standin).len() > 3 }).await);
    let logins =
        |s: &edgeshare_standin::Standin| s.received().iter().filter(|r| r.path == "/login").count();
    assert_eq!(logins(&standin), 1);
    // Every token (access and refresh) is now refused; the socket goes down.
    standin.expire_tokens();
    standin.drop_websockets();
    assert!(
        wait_until(DELIVERY, || async {
            logins(&standin) == 2 && agent.metric("connected").await == 1.0
        })
        .await,
        "{:?}",
        standin
            .received()
            .iter()
            .map(|r| (&r.path, r.status))
            .collect::<Vec<_>>()
    );
    // The old token was refused at the upgrade (401), the refresh too, then a login.
    let producer_401 = standin
        .received()
        .iter()
        .any(|r| r.path == "/producer" && r.status == Some(401));
    assert!(producer_401);
    assert!(agent.metric("auth_failures_total").await >= 1.0);
    wait_all_delivered(&agent, || received(&standin), DELIVERY).await;
    // No token or password in the metrics or the last error.
    let text = agent.metrics_text().await;
    assert!(
        !text.contains("Device@123") && !text.contains("eyJ"),
        "{text}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff() {
    let standin = standin().await;
    // The first logins and upgrades answer 500.
    standin.set_fault(Fault::new("/login", FaultKind::Status500).times(2));
    standin.set_fault(Fault::new("/producer", FaultKind::Status500).times(2));
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&config_text(
        &standin.base_url(),
        dir.path(),
        &Setup::default(),
    ));
    let agent = Agent::start(config, dir.path()).await;
    assert!(
        wait_until(DELIVERY, || async {
            agent.metric("connected").await == 1.0
        })
        .await
    );
    let statuses: Vec<(String, Option<u16>)> = standin
        .received()
        .iter()
        .map(|r| (r.path.clone(), r.status))
        .collect();
    let count = |path: &str, status: u16| {
        statuses
            .iter()
            .filter(|(p, s)| p == path && *s == Some(status))
            .count()
    };
    assert_eq!(count("/login", 500), 2, "{statuses:?}");
    assert_eq!(count("/producer", 500), 2, "{statuses:?}");
    let (error, _) =
        edgeshare_agent::metrics::last_error_sample(&agent.metrics_text().await).unwrap();
    assert!(error.contains("500"), "{error}");
    wait_all_delivered(&agent, || received(&standin), DELIVERY).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_sensor_samples_and_keeps_usage() {
    let setup = Setup {
        pad: 1500,
        spool_max_bytes: 64 * 1024,
        interval: "100ms",
        gateway_interval: "100ms",
        ..Setup::default()
    };
    let (standin, agent, dir) = start(&setup).await;
    let gateway = FakeGateway::start(&dir.path().join("gw.sock"));
    assert!(wait_until(DELIVERY, || async { !usage_received(&standin).is_empty() }).await);
    standin.refuse_connections().await;
    // ~1.6 KB per sample, 64 KiB of spool: full after ~40 samples (4 s).
    assert!(
        wait_until(Duration::from_secs(30), || async {
            agent.metric("spool_dropped_total").await >= 20.0
        })
        .await,
        "{}",
        agent.metrics_text().await
    );
    let spool_bytes = agent.metric("spool_bytes").await;
    assert!(spool_bytes <= 64.0 * 1024.0 + 4096.0, "{spool_bytes}");
    standin.accept_connections().await.unwrap();
    let answered = gateway.answered.load(std::sync::atomic::Ordering::SeqCst);
    // Usage: every poll answered before this point arrives, none dropped.
    assert!(
        wait_until(DELIVERY, || async {
            missing(&usage_received(&standin), answered).is_empty()
        })
        .await,
        "usage lost: {:?}",
        missing(&usage_received(&standin), answered)
    );
    // Sensors: the newest made it, the oldest of the outage were dropped and counted.
    let produced = agent.produced();
    assert!(
        wait_until(DELIVERY, || async {
            received(&standin).contains(&produced)
        })
        .await
    );
    // Samples taken while the spool was still full after the reconnect may have been dropped
    // too: count over everything up to a moment when the spool is empty again (no drop can
    // come after it while the stream keeps pace).
    assert!(
        wait_until(DELIVERY, || async {
            agent.metric("spool_depth").await == 0.0
        })
        .await,
        "{}",
        agent.metrics_text().await
    );
    let dropped = agent.metric("spool_dropped_total").await as u64;
    let produced = agent.produced();
    assert!(
        wait_until(DELIVERY, || async {
            received(&standin).contains(&produced)
        })
        .await
    );
    let lost = missing(&received(&standin), produced).len() as u64;
    assert_eq!(lost, dropped, "every missing sample is a counted drop");
    // The arrival order is the sampling order, outage or not.
    let seen = received(&standin);
    let firsts: Vec<u64> = {
        let mut s = std::collections::BTreeSet::new();
        seen.iter().copied().filter(|n| s.insert(*n)).collect()
    };
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_at_a_stop_go_first_at_the_next_start() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&standin.base_url(), dir.path(), &Setup::default());
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    assert!(wait_until(DELIVERY, || async { received(&standin).len() > 3 }).await);
    standin.refuse_connections().await;
    let before = agent.produced();
    assert!(
        wait_until(DELIVERY, || async {
            agent.metric("spool_disk_messages").await >= 5.0
        })
        .await
    );
    let took = agent.stop().await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let waiting = agent_produced(dir.path()) - before;
    assert!(waiting >= 5);
    standin.accept_connections().await.unwrap();
    let agent = Agent::start(parse_config(&text), dir.path()).await;
    wait_all_delivered(&agent, || received(&standin), DELIVERY).await;
    agent.stop().await;
}

fn agent_produced(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_usage_is_streamed_and_a_missing_gateway_is_quiet() {
    let setup = Setup {
        gateway_interval: "100ms",
        ..Setup::default()
    };
    let (standin, agent, dir) = start(&setup).await;
    // No socket yet: no usage, no errors.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(usage_received(&standin).is_empty());
    assert_eq!(agent.metric("gateway_present").await, 0.0);
    assert_eq!(agent.metric("sample_errors_total").await, 0.0);
    // The gateway appears: its usage is streamed, as totals only.
    let _gateway = FakeGateway::start(&dir.path().join("gw.sock"));
    assert!(wait_until(DELIVERY, || async { usage_received(&standin).len() >= 3 }).await);
    assert_eq!(agent.metric("gateway_present").await, 1.0);
    let usage = standin
        .ws_messages()
        .into_iter()
        .find_map(|m| {
            let payload = m.payload?;
            payload["data"].get("gateway_clients")?;
            Some(payload)
        })
        .unwrap();
    assert_eq!(usage["data"]["gateway_clients"], 1);
    assert_eq!(usage["device_id"], "test-device");
    let text = usage.to_string();
    assert!(
        !text.contains("ABCD2345") && !text.contains("aa:bb"),
        "{text}"
    );
    agent.stop().await;
}
