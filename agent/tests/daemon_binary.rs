//! The real `edgeshare-agent` binary: `run` streams to the stand-in, `status` reads its
//! health, SIGTERM stops it cleanly within 5 s, and secrets stay out of its output.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use edgeshare_standin::Standin;
use support::{Setup, config_text, received, standin, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_edgeshare-agent");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status(config: &Path) -> (i32, String, String) {
    let out = agent(config).arg("status").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary with `config`, its arguments to follow.
fn agent(config: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.arg("--config").arg(config);
    command
}

/// `run` at `verbosity`, its log piped.
fn run(config: &Path, verbosity: &str) -> Command {
    let mut command = agent(config);
    command.arg(verbosity).arg("run").stderr(Stdio::piped());
    command
}

/// `agent.toml` in `dir`, for the stand-in.
fn write_config(standin: &Standin, dir: &Path, setup: &Setup) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(&config, config_text(&standin.base_url(), dir, setup)).unwrap();
    config
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

/// Sends SIGTERM and polls every `poll` until the process has exited, at most `limit`;
/// returns how it exited and how long it took.
async fn stop(child: &mut Child, limit: Duration, poll: Duration) -> (ExitStatus, Duration) {
    let asked = Instant::now();
    sigterm(child);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < limit,
            "still running {limit:?} after SIGTERM"
        );
        tokio::time::sleep(poll).await;
    };
    (exit, asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_status_and_a_clean_stop_on_sigterm() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config_text(&standin.base_url(), dir.path(), &Setup::default())
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        // The password comes from the env file beside the config, as in production.
        .replace("password = \"Device@123\"\n", "");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::write(
        dir.path().join("agent.env"),
        "EDGESHARE_STREAM__PASSWORD=Device@123\n",
    )
    .unwrap();

    let (code, _, stderr) = status(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not running"), "{stderr}");

    // Played by systemd: the notify socket, a watchdog of 400 ms.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let heard = notes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..300 {
            if let Ok(n) = notify.recv(&mut buf) {
                heard
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    let mut child = run(&config, "-vv")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            received(&standin).len() >= 5
        })
        .await,
        "the binary did not stream"
    );
    let (code, report, stderr) = status(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(report.contains("stream:   connected"), "{report}");
    let so_far = notes.lock().unwrap().clone();
    assert!(so_far[0].starts_with("READY=1"), "{so_far:?}");
    assert!(
        so_far.iter().filter(|n| n.as_str() == "WATCHDOG=1").count() >= 2,
        "the watchdog is petted every 200 ms: {so_far:?}"
    );
    assert!(report.contains("last error: none"), "{report}");

    let (exit, took) = stop(
        &mut child,
        Duration::from_secs(5),
        Duration::from_millis(10),
    )
    .await;
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(exit.success(), "{exit:?}: {logs}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(logs.contains("spool flushed"), "{logs}");
    let all = notes.lock().unwrap().clone();
    assert!(all.iter().any(|n| n.starts_with("STOPPING=1")), "{all:?}");
    // Even at debug level: no password, no token.
    assert!(!logs.contains("Device@123"), "{logs}");
    assert!(!logs.contains("token=ey"), "{logs}");
    eprintln!("stopped {took:?} after SIGTERM");
}

/// A gateway that accepts the agent's control-socket calls and never answers holds a blocking
/// thread of the agent in a read (up to its 10 s timeout). SIGTERM still ends the process at
/// once: systemd sees it gone, with nothing left behind, well within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_while_a_gateway_call_hangs() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        gateway_interval: "100ms",
        ..Setup::default()
    };
    let config = write_config(&standin, dir.path(), &setup);
    // The hung gateway: connections are accepted and kept, never answered.
    let gateway = std::os::unix::net::UnixListener::bind(dir.path().join("gw.sock")).unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in gateway.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(connection);
        }
    });
    let mut child = run(&config, "-v").stdout(Stdio::null()).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            !received(&standin).is_empty() && calls.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await,
        "the agent did not stream and call the gateway"
    );
    let (exit, took) = stop(
        &mut child,
        Duration::from_secs(15),
        Duration::from_millis(5),
    )
    .await;
    let logs = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
    eprintln!("exited {took:?} after SIGTERM, with a gateway call hanging");
    assert!(exit.success(), "{exit:?}: {logs}");
    assert!(logs.contains("stopped"), "{logs}");
    // The hung call would hold the process for its 10 s read timeout; 2 s leaves room for a
    // loaded CI machine around the ~0.1 s it takes.
    assert!(took < Duration::from_secs(2), "{took:?}: {logs}");
}

/// At trace level, where the WebSocket library dumps its whole handshake request (the
/// producer URL with the access token in it), no secret reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_logs_at_trace_level() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&standin, dir.path(), &Setup::default());
    let child = agent(&config)
        .arg("run")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let streamed = wait_until(Duration::from_secs(20), || async {
        received(&standin).len() >= 3
    })
    .await;
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(streamed, "the binary did not stream: {logs}");
    assert!(logs.contains("TRACE"), "not at trace level: {logs}");
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Device@123") || l.contains("token=ey") || l.contains("\"access\""))
        .collect();
    println!(
        "secrets in {} trace-level log lines: {}",
        logs.lines().count(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
}
