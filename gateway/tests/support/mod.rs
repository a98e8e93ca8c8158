//! A network-namespace test bed for system tests: namespaces, veth pairs, commands and
//! background processes inside them, traffic probes, all cleaned up on drop (also when a
//! test fails and unwinds).
//!
//! Rules it keeps: traffic only inside namespaces it created (10.66/10.77 and fd00:66/fd00:77
//! addresses exist only there); unique names per process and call (`es<pid>x<n>…`), so
//! parallel tests and parallel runs never collide; processes are killed by PID, namespaces
//! deleted, on drop. Namespaces left by a run that was killed (its PID is gone) are removed
//! by the next run.
//!
//! Use: `mod support;` and `netns_probe_entry!();` at the test file's root, then
//! `if !support::require_root() { return; }` at the top of each test, then
//! [`Testbed::new`] for the ready-made client — gw — up topology, or [`Netns`] and
//! [`veth`] for another one.

#![allow(dead_code)]

pub mod probe;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use probe::{EVENT_PREFIX, Event, PROBE_ENV, PROBE_TEST, Request};

/// Namespace names start with this, then the PID (see [`sweep_stale`]).
const NAME_PREFIX: &str = "es";

/// True if the test may go on (running as root). Otherwise prints "skipped: needs root" and
/// returns false, except in CI (`CI=true`), where a system test must never skip: it panics.
pub fn require_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this system test needs root (CAP_NET_ADMIN) and CI=true: refusing to skip");
    }
    eprintln!("skipped: needs root");
    false
}

/// A name no other test of any run uses at the same time: `es<pid>x<n><label>` (short,
/// since it also ends up in table and interface-like places).
pub fn unique_name(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}x{n}{label}", std::process::id())
}

/// Deletes namespaces named by this harness whose process is gone (a run that was killed
/// before its drops ran). Runs once per process, from [`Netns::new`].
pub fn sweep_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_processes_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Kills, by PID, every process left in one of our namespaces (all started by a test of
/// this harness): deleting a namespace's name does not end it while processes live in it.
fn kill_processes_in(namespace: &str) {
    let Ok(output) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Runs `command` to completion, killing it at `timeout`: (exit status or None if killed,
/// stdout, stderr).
pub fn run_with_timeout(
    command: &mut Command,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// Runs `command` (killed at `timeout`) and returns its output, whatever its exit status;
/// panics saying "`what` timed out" if it was killed.
pub fn output_within(command: &mut Command, timeout: Duration, what: &str) -> Output {
    let (status, stdout, stderr) = run_with_timeout(command, timeout);
    Output {
        status: status.unwrap_or_else(|| panic!("{what} timed out")),
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

/// The stdout of `output`, the run of `what`, which must have succeeded: panics with its exit
/// status and stderr otherwise.
pub fn success_stdout(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process started by the harness; killed (by its PID) and reaped on drop.
#[derive(Debug)]
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    /// Starts `command` (e.g. one from [`Netns::command`], with its stdio and environment
    /// set by the caller) and keeps it: killed and reaped when the handle drops.
    pub fn start(command: &mut Command) -> Background {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Background {
            child,
            what: format!("{command:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (by PID) unless it has exited already.
    pub fn signal(&mut self, signal: rustix::process::Signal) {
        if !self.is_running() {
            return;
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Waits up to `timeout` for it to exit by itself: its exit status, or `None` if it is
    /// still running (it is then killed on drop as usual).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return None,
            }
        }
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A network namespace of our own; on drop, every process still in it is killed by PID and
/// the namespace is deleted.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `es<pid>x<n><label>` (panics on failure: the test cannot go on).
    pub fn new(label: &str) -> Netns {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        let name = unique_name(label);
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
        assert!(status.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that has entered this network namespace, and returns what it
    /// returns: a socket opened there (e.g. netlink) stays in this namespace wherever it is
    /// used later. The calling thread stays where it is.
    pub fn in_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = std::fs::File::open(format!("/run/netns/{}", self.name))
                        .unwrap_or_else(|e| panic!("namespace {}: {e}", self.name));
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&namespace),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("entering namespace {}: {e}", self.name));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip netns exec NAME program`, to add arguments to.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// The prefix that runs a program in here, e.g. for `NftFirewall::with_command`:
    /// `["ip", "netns", "exec", NAME, program]`.
    pub fn command_prefix(&self, program: &str) -> Vec<OsString> {
        ["ip", "netns", "exec", &self.name, program]
            .into_iter()
            .map(OsString::from)
            .collect()
    }

    /// Runs `args` in here (10 s at most) and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command");
        let mut command = self.command(program);
        command.args(rest);
        output_within(
            &mut command,
            Duration::from_secs(10),
            &format!("{args:?} in {}", self.name),
        )
    }

    /// Runs `args` in here; panics with its stderr if it fails; returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        success_stdout(&self.run(args), &format!("{args:?} in {}", self.name))
    }

    /// `ip -n NAME args…` (no exec needed); panics on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        success_stdout(&output, &format!("ip -n {} {args:?}", self.name))
    }

    /// `ip -n NAME -batch -` with `commands`, one per line (thousands of links and addresses
    /// in one process); panics on failure.
    pub fn ip_batch(&self, commands: &str) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = std::io::Write::write_all(&mut stdin, commands.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().expect("ip -batch ends");
        assert!(
            written.is_ok() && output.status.success(),
            "ip -n {} -batch failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `sysctl -w key=value` in here (per-namespace keys such as `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Sets the MAC address of `interface`.
    pub fn set_mac(&self, interface: &str, mac: &str) {
        self.ip(&["link", "set", "dev", interface, "address", mac]);
    }

    /// The MAC address of `interface`.
    pub fn mac(&self, interface: &str) -> String {
        let json = self.ip(&["-j", "link", "show", "dev", interface]);
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        links[0]["address"].as_str().expect("an address").to_owned()
    }

    /// Adds an address (`10.0.0.1/24`, `fd00::1/64`) to `interface`. IPv6 addresses skip
    /// duplicate address detection so they work at once.
    pub fn add_addr(&self, interface: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", interface, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", interface]);
        }
    }

    /// Adds a route (`default` or a CIDR) via a gateway address.
    pub fn add_route(&self, to: &str, via: &str) {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", to, "via", via]);
    }

    /// Limits what leaves `interface` in here to `rate` (a token bucket, tc's syntax, e.g.
    /// `8mbit`), so that a transfer through it takes a known time whatever the client does.
    pub fn limit_rate(&self, interface: &str, rate: &str) {
        self.run_ok(&[
            "tc", "qdisc", "add", "dev", interface, "root", "tbf", "rate", rate, "burst", "16kb",
            "latency", "200ms",
        ]);
    }

    /// Starts `args` in here in the background; killed when the handle drops.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let (program, rest) = args.split_first().expect("a command");
        let child = self
            .command(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", self.name));
        Background {
            child,
            what: format!("{args:?} in {}", self.name),
        }
    }

    /// The command that runs this test binary as a probe in here (see [`probe`]).
    fn probe_command(&self, request: &Request) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = self.command(exe);
        command
            .args([
                PROBE_TEST,
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(
                PROBE_ENV,
                serde_json::to_string(request).expect("a request"),
            )
            .env(probe::PARENT_ENV, std::process::id().to_string());
        command
    }

    /// Runs a one-shot probe in here and returns its events (bounded by `timeout`).
    pub fn probe(&self, request: &Request, timeout: Duration) -> Vec<Event> {
        let (status, stdout, stderr) = run_with_timeout(&mut self.probe_command(request), timeout);
        let events = parse_events(&stdout);
        assert!(
            status.is_some(),
            "probe {request:?} in {} did not finish within {timeout:?}",
            self.name
        );
        assert!(
            !events.is_empty(),
            "probe {request:?} in {} reported nothing; is `netns_probe_entry!()` at the test \
             crate root? stdout: {stdout} stderr: {stderr}",
            self.name
        );
        events
    }

    /// Connects to `to`, sends `bytes` bytes, reads the answer to its end. `Ok` with the
    /// outcome, or `Err(stage and error)` if it could not connect (within `connect_timeout`)
    /// or the transfer broke.
    pub fn tcp_send(
        &self,
        to: SocketAddr,
        bytes: u64,
        connect_timeout: Duration,
    ) -> Result<Sent, String> {
        let request = Request::TcpSend {
            to,
            bytes,
            connect_timeout_ms: millis(connect_timeout),
        };
        let timeout = connect_timeout + probe::IO_TIMEOUT * 2 + Duration::from_secs(5);
        match self.probe(&request, timeout).pop() {
            Some(Event::Sent {
                local,
                peer,
                sent,
                received,
            }) => Ok(Sent {
                local,
                peer,
                sent,
                received,
            }),
            Some(Event::Failed { stage, error }) => Err(format!("{stage}: {error}")),
            other => panic!("unexpected probe report {other:?}"),
        }
    }

    /// Connects to `to`, sends up to `bytes` bytes, reads the answer; a direction that
    /// stalls for `stall` ends without error (see [`Request::TcpTransfer`]). `Err` if it
    /// could not connect within `connect_timeout`.
    pub fn tcp_transfer(
        &self,
        to: SocketAddr,
        bytes: u64,
        connect_timeout: Duration,
        stall: Duration,
    ) -> Result<Transfer, String> {
        let request = Request::TcpTransfer {
            to,
            bytes,
            connect_timeout_ms: millis(connect_timeout),
            stall_ms: millis(stall),
        };
        let timeout = connect_timeout + stall * 2 + Duration::from_secs(60);
        match self.probe(&request, timeout).pop() {
            Some(Event::Transferred {
                sent,
                received,
                eof,
                ..
            }) => Ok(Transfer {
                sent,
                received,
                eof,
            }),
            Some(Event::Failed { stage, error }) => Err(format!("{stage}: {error}")),
            other => panic!("unexpected probe report {other:?}"),
        }
    }

    /// Starts a stall-tolerant TCP listener in here (see [`Request::TcpSink`]); returns
    /// once it is bound.
    pub fn tcp_sink(&self, bind: SocketAddr, reply_bytes: u64, stall: Duration) -> Listener {
        self.listen(Request::TcpSink {
            bind,
            reply_bytes,
            stall_ms: millis(stall),
        })
    }

    /// True if a TCP connection to `to` is established within `timeout`.
    pub fn tcp_connects(&self, to: SocketAddr, timeout: Duration) -> bool {
        self.tcp_send(to, 0, timeout).is_ok()
    }

    /// Sends one UDP datagram to `to`; the length of the answer, or `Err` if none came
    /// within `timeout`.
    pub fn udp_query(&self, to: SocketAddr, timeout: Duration) -> Result<usize, String> {
        let request = Request::UdpQuery {
            to,
            timeout_ms: millis(timeout),
        };
        match self.probe(&request, timeout + Duration::from_secs(5)).pop() {
            Some(Event::Reply { len }) => Ok(len),
            Some(Event::Failed { stage, error }) => Err(format!("{stage}: {error}")),
            other => panic!("unexpected probe report {other:?}"),
        }
    }

    /// Sends one IPv4 datagram to each of `to` (see [`Request::UdpScatter`]): (sent, refused).
    pub fn udp_scatter(&self, to: &[SocketAddr]) -> (usize, usize) {
        let request = Request::UdpScatter { to: to.to_vec() };
        match self.probe(&request, Duration::from_secs(30)).pop() {
            Some(Event::Scattered { sent, refused }) => (sent, refused),
            other => panic!("unexpected probe report {other:?}"),
        }
    }

    /// Starts a TCP listener in here (see [`Request::TcpListen`]); returns once it is bound.
    /// A listener lives until its handle drops or the thread that started it ends.
    pub fn tcp_listen(&self, bind: SocketAddr, reply_bytes: u64) -> Listener {
        self.listen(Request::TcpListen { bind, reply_bytes })
    }

    /// Starts a UDP echo server in here; returns once it is bound.
    pub fn udp_echo(&self, bind: SocketAddr) -> Listener {
        self.listen(Request::UdpEcho { bind })
    }

    /// Starts a tiny web server in here serving `pages` (see [`Request::HttpServe`]);
    /// returns once it is bound.
    pub fn http_serve(&self, bind: SocketAddr, pages: Vec<probe::Page>) -> Listener {
        self.listen(Request::HttpServe { bind, pages })
    }

    /// Starts a WebSocket echo server in here (see [`Request::WsEcho`]); returns once it is
    /// bound.
    pub fn ws_echo(&self, bind: SocketAddr) -> Listener {
        self.listen(Request::WsEcho { bind })
    }

    /// Opens a WebSocket to `ws://to/` from in here (see [`Request::WsClient`]); returns once
    /// it is open. [`Listener::send_line`] sends a message.
    pub fn ws_client(&self, to: SocketAddr) -> Listener {
        self.listen(Request::WsClient { to })
    }

    fn listen(&self, request: Request) -> Listener {
        let stdin = if matches!(request, Request::WsClient { .. }) {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = self
            .probe_command(&request)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start probe {request:?} in {}: {e}", self.name));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(event) = parse_event(&line) {
                    if sender.send(event).is_err() {
                        break;
                    }
                }
            }
        });
        let process = Background {
            child,
            what: format!("probe {request:?} in {}", self.name),
        };
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Ready { local }) => Listener {
                local,
                events,
                stdin,
                _process: process,
            },
            other => panic!(
                "probe {request:?} in {} did not start: {other:?} (is `netns_probe_entry!()` \
                 at the test crate root?)",
                self.name
            ),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_processes_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn parse_event(line: &str) -> Option<Event> {
    serde_json::from_str(line.strip_prefix(EVENT_PREFIX)?).ok()
}

fn parse_events(stdout: &str) -> Vec<Event> {
    stdout.lines().filter_map(parse_event).collect()
}

/// The outcome of [`Netns::tcp_send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub sent: u64,
    pub received: u64,
}

/// The outcome of [`Netns::tcp_transfer`]: bytes the socket took, bytes read, and whether
/// reading ended at EOF (false: it stalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    pub eof: bool,
}

/// A listener probe running in a namespace; killed on drop.
#[derive(Debug)]
pub struct Listener {
    pub local: SocketAddr,
    events: mpsc::Receiver<Event>,
    /// The probe's stdin, for those that read it.
    stdin: Option<std::process::ChildStdin>,
    _process: Background,
}

impl Listener {
    /// The next report, if one comes within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Writes `line` to the probe's stdin (a [`Request::WsClient`] sends it as a message).
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("a probe that reads its stdin");
        writeln!(stdin, "{line}").expect("writing to the probe's stdin");
        stdin.flush().expect("flushing the probe's stdin");
    }

    /// Every report that has arrived so far.
    pub fn events_so_far(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

/// Connects two namespaces with a veth pair and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// `addr:port` for tests.
pub fn sock(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("a test address")
}

/// The ready-made topology of the gateway's system tests:
///
/// ```text
///  client                    gw (router)                     up ("the internet")
///  eth0 ──────── veth ──────── lan0    wan0 ──────── veth ──────── eth0
///  10.66.0.2/24              10.66.0.1/24  10.77.0.1/24            10.77.0.2/24
///  fd00:66::2/64             fd00:66::1/64 fd00:77::1/64           fd00:77::2/64
///  MAC 02:00:00:66:00:02                                           + 10.77.0.130/24
/// ```
///
/// Forwarding in gw is left as a fresh namespace has it: the gateway turns it on itself
/// (`edgeshare_gateway::forwarding`), as it must on a real host. Client routes everything
/// via gw; up routes the client's networks back via gw (so no NAT is needed, and a test can
/// turn NAT on to see it work). Dropping the bed kills its processes and deletes the three
/// namespaces.
#[derive(Debug)]
pub struct Testbed {
    pub client: Netns,
    pub gw: Netns,
    pub up: Netns,
}

impl Testbed {
    pub const CLIENT_IF: &'static str = "eth0";
    pub const GW_LAN_IF: &'static str = "lan0";
    pub const GW_WAN_IF: &'static str = "wan0";
    pub const UP_IF: &'static str = "eth0";
    pub const CLIENT_MAC: &'static str = "02:00:00:66:00:02";

    pub fn new() -> Testbed {
        let bed = Testbed {
            client: Netns::new("c"),
            gw: Netns::new("g"),
            up: Netns::new("u"),
        };
        veth(&bed.client, Self::CLIENT_IF, &bed.gw, Self::GW_LAN_IF);
        veth(&bed.gw, Self::GW_WAN_IF, &bed.up, Self::UP_IF);
        bed.client.set_mac(Self::CLIENT_IF, Self::CLIENT_MAC);

        bed.client.add_addr(Self::CLIENT_IF, "10.66.0.2/24");
        bed.client.add_addr(Self::CLIENT_IF, "fd00:66::2/64");
        bed.gw.add_addr(Self::GW_LAN_IF, "10.66.0.1/24");
        bed.gw.add_addr(Self::GW_LAN_IF, "fd00:66::1/64");
        bed.gw.add_addr(Self::GW_WAN_IF, "10.77.0.1/24");
        bed.gw.add_addr(Self::GW_WAN_IF, "fd00:77::1/64");
        bed.up.add_addr(Self::UP_IF, "10.77.0.2/24");
        bed.up.add_addr(Self::UP_IF, "10.77.0.130/24");
        bed.up.add_addr(Self::UP_IF, "fd00:77::2/64");

        bed.client.add_route("default", "10.66.0.1");
        bed.client.add_route("default", "fd00:66::1");
        bed.up.add_route("10.66.0.0/24", "10.77.0.1");
        bed.up.add_route("fd00:66::/64", "fd00:77::1");
        bed
    }

    pub fn client_v4() -> IpAddr {
        addr("10.66.0.2")
    }
    pub fn client_v6() -> IpAddr {
        addr("fd00:66::2")
    }
    pub fn gw_lan_v4() -> IpAddr {
        addr("10.66.0.1")
    }
    pub fn gw_lan_v6() -> IpAddr {
        addr("fd00:66::1")
    }
    pub fn gw_wan_v4() -> IpAddr {
        addr("10.77.0.1")
    }
    pub fn gw_wan_v6() -> IpAddr {
        addr("fd00:77::1")
    }
    pub fn up_v4() -> IpAddr {
        addr("10.77.0.2")
    }
    /// A second address of up, for walled-garden tests (inside 10.77.0.128/25).
    pub fn up_extra_v4() -> IpAddr {
        addr("10.77.0.130")
    }
    pub fn up_v6() -> IpAddr {
        addr("fd00:77::2")
    }
}
