//! The agent daemon in-process (`daemon::run`) against the stand-in backend over loopback,
//! with a counting sensor command, so that every sample can be found again at the backend.

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeshare_agent::config::AgentConfig;
use edgeshare_standin::{Standin, StandinConfig, WsFraming};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub async fn standin() -> Standin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    edgeshare_standin::start(listener, StandinConfig::default())
        .await
        .unwrap()
}

/// A stand-in on the same address as one that was dropped (a backend restarted).
pub async fn standin_at(addr: SocketAddr) -> Standin {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                return edgeshare_standin::start(listener, StandinConfig::default())
                    .await
                    .unwrap();
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// The settings a test varies.
#[derive(Debug, Clone)]
pub struct Setup {
    pub framing: &'static str,
    pub interval: &'static str,
    /// Bytes of padding in each sample, to fill a spool quickly.
    pub pad: usize,
    pub spool_max_bytes: u64,
    pub dead_after: &'static str,
    pub gateway_interval: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            framing: "bare",
            interval: "100ms",
            pad: 0,
            spool_max_bytes: 50 * 1024 * 1024,
            dead_after: "3s",
            gateway_interval: "200ms",
        }
    }
}

/// A sensor command that prints `{"n": <count>, "pad": "..."}`, counting in `dir/count`.
pub fn counter_command(dir: &Path, pad: usize) -> Vec<String> {
    let count = dir.join("count");
    let script = format!(
        "f='{}'; n=$(( $(cat \"$f\" 2>/dev/null || echo 0) + 1 )); echo $n > \"$f\"; printf '{{\"n\": %d, \"pad\": \"%s\"}}' $n '{}'",
        count.display(),
        "x".repeat(pad)
    );
    vec!["sh".into(), "-c".into(), script]
}

pub fn config_text(base: &str, dir: &Path, setup: &Setup) -> String {
    let ws = base.replacen("http", "ws", 1);
    let command = serde_json::to_string(&counter_command(dir, setup.pad)).unwrap();
    format!(
        r#"
[device]
id = "test-device"

[stream]
auth_url = "{base}"
ws_url = "{ws}/producer"
username = "device-001"
password = "Device@123"
framing = "{framing}"
dead_after = "{dead_after}"

[stream.backoff]
initial = "50ms"
max = "500ms"
multiplier = 2.0

[[source]]
kind = "command"
name = "counter"
command = {command}
interval = "{interval}"

[gateway]
control_socket = "{dir}/gw.sock"
interval = "{gateway_interval}"

[spool]
dir = "{dir}/spool"
max_bytes = {max_bytes}

[metrics]
listen = "127.0.0.1:0"

[http]
timeout = "2s"
connect_timeout = "1s"

[state]
dir = "{dir}/state"
"#,
        framing = setup.framing,
        dead_after = setup.dead_after,
        interval = setup.interval,
        gateway_interval = setup.gateway_interval,
        dir = dir.display(),
        max_bytes = setup.spool_max_bytes,
    )
}

pub fn parse_config(text: &str) -> AgentConfig {
    edgeshare_shared::config::parse(text, "test agent.toml", &[])
        .unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"))
}

/// The daemon running in this process.
pub struct Agent {
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    pub async fn start(config: AgentConfig, dir: &Path) -> Agent {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(edgeshare_agent::daemon::run(
            config,
            async move {
                let _ = stopped.await;
            },
            move |addr| {
                let _ = ready_tx.send(addr);
            },
        ));
        let metrics = tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("the agent did not get ready")
            .expect("the agent failed to start");
        Agent {
            metrics,
            dir: dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn metrics_text(&self) -> String {
        edgeshare_shared::prometheus::fetch_agent(self.metrics)
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        edgeshare_agent::metrics::sample(&self.metrics_text().await, name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Stops the daemon; returns how long it took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the agent did not stop within 10 s")
            .unwrap()
            .unwrap();
        started.elapsed()
    }

    /// Samples the counting command has produced so far.
    pub fn produced(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("count"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The counter values the stand-in received on the producer socket, in arrival order.
pub fn received(standin: &Standin) -> Vec<u64> {
    standin
        .ws_messages()
        .iter()
        .filter_map(|m| m.payload.as_ref()?.get("data")?.get("n")?.as_u64())
        .collect()
}

/// Every payload's framing.
pub fn framings(standin: &Standin) -> BTreeSet<String> {
    standin
        .ws_messages()
        .iter()
        .map(|m| {
            match m.framing {
                WsFraming::Bare => "bare",
                WsFraming::Wrapped => "wrapped",
                WsFraming::Invalid => "invalid",
            }
            .to_owned()
        })
        .collect()
}

/// Counter values 1..=up_to that never arrived.
pub fn missing(seen: &[u64], up_to: u64) -> Vec<u64> {
    let seen: BTreeSet<u64> = seen.iter().copied().collect();
    (1..=up_to).filter(|n| !seen.contains(n)).collect()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every sample produced up to now has arrived (across `standins`' records).
pub async fn wait_all_delivered(agent: &Agent, seen: impl Fn() -> Vec<u64>, timeout: Duration) {
    // The first sample may still be on its way (the command runs at start).
    let ran = wait_until(timeout, || async { agent.produced() > 0 }).await;
    assert!(ran, "the sensor command never ran");
    let target = agent.produced();
    let ok = wait_until(timeout, || {
        let seen = seen();
        async move { missing(&seen, target).is_empty() }
    })
    .await;
    assert!(
        ok,
        "samples 1..={target} not all delivered; missing {:?}",
        missing(&seen(), target)
    );
}

/// A fake gateway control socket answering `{"cmd":"usage"}` (one client, the n-th answer
/// with n bytes up) and `{"cmd":"flows"}`, counting the requests it answered.
pub struct FakeGateway {
    /// `usage` requests answered.
    pub answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `flows` requests answered; with [`FakeGateway::start`] the n-th gives flow f1
    /// `1000 * n` bytes in (and the 2nd also a finished flow f2).
    pub flows_answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    path: PathBuf,
}

/// One flow as the gateway's `flows` reply has it.
pub fn gateway_flow(id: &str, bytes_in: u64, bytes_out: u64, status: &str, n: u64) -> Value {
    // A port of its own per id: the gateway never has two flows of one 5-tuple at once.
    let port = 40000 + id.bytes().map(u16::from).sum::<u16>();
    serde_json::json!({
        "id": id, "sourceIp": "10.66.0.2", "destIp": "192.0.2.10",
        "sourcePort": port, "destPort": 443, "protocol": "TCP",
        "status": status, "startTime": "2026-11-21T12:00:00Z",
        "lastActivity": "2026-11-21T12:00:01Z", "bytesIn": bytes_in,
        "bytesOut": bytes_out, "packetsIn": n, "packetsOut": n,
        "bandwidth": 100.0
    })
}

impl FakeGateway {
    pub fn start(path: &Path) -> FakeGateway {
        Self::with_flows(path, |n| {
            let mut connections = vec![gateway_flow("f1", 1000 * n, 100 * n, "active", n)];
            if n == 2 {
                connections.push(gateway_flow("f2", 500, 50, "inactive", n));
            }
            connections
        })
    }

    /// A gateway whose n-th `flows` answer (from 1) is `flows(n)`.
    pub fn with_flows(
        path: &Path,
        reply: impl Fn(u64) -> Vec<Value> + Send + 'static,
    ) -> FakeGateway {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flows_answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (count, halt, flows) = (answered.clone(), stop.clone(), flows_answered.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let request: Value = serde_json::from_str(&line).unwrap_or_default();
                let reply = if request["cmd"] == "flows" {
                    let n = flows.fetch_add(1, Ordering::SeqCst) + 1;
                    serde_json::json!({"ok": {"connections": reply(n)}})
                } else if request["cmd"] == "usage" {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    serde_json::json!({"ok": {"at_ms": 1_790_000_000_000u64 + n, "clients": [
                        {"mac": "aa:bb:cc:dd:ee:01", "ip": "10.66.0.2", "session": "ABCD2345-1",
                         "up_bytes": n, "down_bytes": 10 * n, "up_rate": 1.0, "down_rate": 2.0}
                    ]}})
                } else {
                    serde_json::json!({"error": "unknown command"})
                };
                let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
            }
        });
        FakeGateway {
            answered,
            flows_answered,
            stop,
            path: path.to_owned(),
        }
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `gateway_up_bytes` of the usage messages the stand-in received (each poll's n).
pub fn usage_received(standin: &Standin) -> Vec<u64> {
    standin
        .ws_messages()
        .iter()
        .filter_map(|m| {
            m.payload
                .as_ref()?
                .get("data")?
                .get("gateway_up_bytes")?
                .as_u64()
        })
        .collect()
}
