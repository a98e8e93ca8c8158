//! Figures, not checks (ignored by default; they print a table):
//!
//! ```sh
//! cargo test -p edgeshare-agent --test figures -- --ignored --nocapture
//! ```
//!
//! - messages lost across 20 backend restarts (the stand-in dropped — its connections cut,
//!   no close frames — and a new one started on the same port a second later), and how
//!   many arrived twice (at least once: resent after a reconnect);
//! - time from the backend listening again to the stream resumed (first message received
//!   by the new backend), median and p99, with the default reconnect backoff.
//!
//! The blackhole figure comes from `tests/blackhole_netns.rs` (it needs a namespace), and RSS
//! and CPU from `bench/agent.sh` (release build, the real binary).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Agent, Setup, config_text, missing, parse_config, received, standin, standin_at};
use time::OffsetDateTime;

const RESTARTS: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure: run with --ignored --nocapture"]
async fn figures_backend_restarts() {
    for framing in ["bare", "typed"] {
        let first = standin().await;
        let addr = first.addr();
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            framing,
            interval: "100ms",
            ..Setup::default()
        };
        // The shipped reconnect policy, not the tests' quick one.
        let text = config_text(&first.base_url(), dir.path(), &setup).replace(
            "[stream.backoff]\ninitial = \"50ms\"\nmax = \"500ms\"\nmultiplier = 2.0\n",
            "",
        );
        let agent = Agent::start(parse_config(&text), dir.path()).await;
        let mut all: Vec<u64> = Vec::new();
        let mut resume_ms = Vec::new();
        let mut current = first;
        for _ in 0..RESTARTS {
            support::wait_until(Duration::from_secs(30), || async {
                received(&current).len() >= 5
            })
            .await;
            // Killed: cut every connection first, so that nothing arrives between the
            // read-out of what it received and its end.
            current.refuse_connections().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            all.extend(received(&current));
            drop(current);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let next = standin_at(addr).await;
            let up = OffsetDateTime::now_utc();
            let resumed = support::wait_until(Duration::from_secs(90), || async {
                !next.ws_messages().is_empty()
            })
            .await;
            assert!(resumed, "the stream did not resume within 90 s");
            let first_at = next.ws_messages()[0].at;
            resume_ms.push((first_at - up).as_seconds_f64() * 1000.0);
            current = next;
        }
        let target = agent.produced();
        let delivered = support::wait_until(Duration::from_secs(60), || {
            let mut seen = all.clone();
            seen.extend(received(&current));
            async move { missing(&seen, target).is_empty() }
        })
        .await;
        all.extend(received(&current));
        let lost = missing(&all, target).len();
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for n in &all {
            *counts.entry(*n).or_default() += 1;
        }
        let twice = counts.values().filter(|c| **c > 1).count();
        resume_ms.sort_by(f64::total_cmp);
        println!(
            "{framing:>5} framing: {RESTARTS} restarts, {target} samples at 10/s, lost {lost}, delivered twice {twice}; \
             backend up -> stream resumed: median {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
            percentile(&resume_ms, 50.0),
            percentile(&resume_ms, 99.0),
            resume_ms[0],
            resume_ms[resume_ms.len() - 1],
        );
        assert!(delivered, "lost {lost} of {target}");
        agent.stop().await;
    }
}
