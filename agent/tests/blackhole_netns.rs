//! A blackholed link: packets silently dropped, no FIN, no RST, no close frame. The agent
//! must notice within `stream.dead_after` and, once the path is clear again, deliver
//! everything it sampled meanwhile.
//!
//! The drop rule is real nftables, so the test runs in a network namespace of its own: this
//! test binary starts itself again under `ip netns exec` (the gateway harness's re-exec
//! pattern) and the inner run holds the stand-in, the agent and the rule, all on the
//! namespace's loopback. Needs root; skips with a message when not root, fails in CI.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "../../gateway/tests/support/mod.rs"]
mod netns;
mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Agent, Setup, config_text, parse_config, received, standin, wait_until};

/// Set in the inner run's environment.
const INSIDE: &str = "EDGESHARE_AGENT_BLACKHOLE_INSIDE";
const INNER_TEST: &str = "blackhole_inside_a_namespace";
const DEAD_AFTER: Duration = Duration::from_secs(3);

#[test]
fn a_blackholed_link_is_noticed_and_nothing_is_lost() {
    if std::env::var_os(INSIDE).is_some() || !netns::require_root() {
        return;
    }
    let ns = netns::Netns::new("agbh");
    let exe = std::env::current_exe().unwrap();
    let mut command = ns.command(exe);
    command
        .args([INNER_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1");
    let (status, stdout, stderr) = netns::run_with_timeout(&mut command, Duration::from_secs(90));
    assert!(
        status.is_some_and(|s| s.success()),
        "inner run failed ({status:?}):\n{stdout}\n{stderr}"
    );
    let figure = stdout
        .lines()
        .find_map(|l| l.find("@figure ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("the inner run reported nothing:\n{stdout}\n{stderr}"));
    println!("{figure}");
}

/// Not a test on its own: the body of the inner run (passes at once in a normal run).
#[test]
fn blackhole_inside_a_namespace() {
    if std::env::var_os(INSIDE).is_none() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(inside());
}

fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (nftables) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn inside() {
    let standin = standin().await;
    let port = standin.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        dead_after: "3s",
        ..Setup::default()
    };
    let config = parse_config(&config_text(&standin.base_url(), dir.path(), &setup));
    let agent = Agent::start(config, dir.path()).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            received(&standin).len() > 5
        })
        .await
    );
    assert_eq!(agent.metric("dead_links_total").await, 0.0);

    // Drop every packet of the stream, both ways, without a trace. Only this namespace's
    // loopback is touched; the namespace goes away with the test.
    let table = format!("agentbh{}", std::process::id());
    nft(&format!(
        "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  tcp dport {port} drop\n  tcp sport {port} drop\n }}\n}}\n"
    ));
    let cut = Instant::now();
    let noticed = wait_until(Duration::from_secs(15), || async {
        agent.metric("dead_links_total").await >= 1.0
    })
    .await;
    let took = cut.elapsed();
    assert!(noticed, "{}", agent.metrics_text().await);
    // Within the configured time (plus the 1 s poll of this test and scheduling slack).
    assert!(
        took < DEAD_AFTER + Duration::from_secs(2),
        "noticed after {took:?}"
    );
    assert_eq!(agent.metric("connected").await, 0.0);
    let (error, _) =
        edgeshare_agent::metrics::last_error_sample(&agent.metrics_text().await).unwrap();
    assert!(
        error.contains("silent") || error.contains("connect"),
        "{error}"
    );

    // The path clears: everything sampled meanwhile arrives, in order of sampling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nft(&format!("delete table inet {table}\n"));
    let cleared = Instant::now();
    support::wait_all_delivered(&agent, || received(&standin), Duration::from_secs(30)).await;
    let resumed = cleared.elapsed();
    agent.stop().await;
    println!(
        "@figure blackhole: noticed after {} ms (dead_after 3 s); all samples delivered {} ms after the path cleared",
        took.as_millis(),
        resumed.as_millis()
    );
}
