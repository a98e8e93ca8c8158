//! Traffic probes that run inside a network namespace: TCP and UDP listeners and clients
//! written with `std::net`, so the tests need no netcat, socat or python.
//!
//! A namespace belongs to a process (a thread, strictly, but `setns` is not in std), so a
//! probe is this very test binary started again under `ip netns exec NS`, told what to do
//! through the environment variable [`PROBE_ENV`]. libtest then runs only the test named
//! [`PROBE_TEST`], which every test file that uses probes declares with
//! `netns_probe_entry!()` at its crate root; that test does nothing in a normal run. The
//! probe reports on stdout, one `@probe {json}` line per [`Event`], and exits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite;

/// Carries the [`Request`] (JSON) to the probe process.
pub const PROBE_ENV: &str = "EDGESHARE_NETNS_PROBE";
/// The libtest name of the entry test `netns_probe_entry!()` declares.
pub const PROBE_TEST: &str = "netns_probe_entry";
/// Carries the PID of the test process that started the probe.
pub const PARENT_ENV: &str = "EDGESHARE_NETNS_PROBE_PARENT";
/// Prefix of the probe's report lines on stdout (libtest prints its own lines too).
pub const EVENT_PREFIX: &str = "@probe ";

/// How long a probe's sockets wait for the other side before giving up, so that no probe
/// hangs whatever the firewall does.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a probe process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Accepts TCP connections until killed; reads each to EOF, then writes `reply_bytes`
    /// bytes and closes. Reports [`Event::Ready`] once bound, [`Event::Accepted`] per
    /// connection.
    TcpListen { bind: SocketAddr, reply_bytes: u64 },
    /// Answers each UDP datagram with the same bytes until killed. Reports
    /// [`Event::Ready`], then [`Event::Datagram`] per datagram.
    UdpEcho { bind: SocketAddr },
    /// Connects (within `connect_timeout_ms`), sends `bytes` bytes, shuts down its sending
    /// side, reads the reply to EOF. Reports [`Event::Sent`] or [`Event::Failed`].
    TcpSend {
        to: SocketAddr,
        bytes: u64,
        connect_timeout_ms: u64,
    },
    /// Sends one datagram and waits `timeout_ms` for the answer. Reports [`Event::Reply`]
    /// or [`Event::Failed`].
    UdpQuery { to: SocketAddr, timeout_ms: u64 },
    /// Sends one datagram to each address, waiting for no answer (so that the kernel learns
    /// each one's neighbour entry, say). Reports [`Event::Scattered`].
    UdpScatter { to: Vec<SocketAddr> },
    /// A tiny web server ("a site on the internet") until killed: one request per
    /// connection (its head only, a body is not read), answered from `pages` by exact path
    /// (query left out), `404` otherwise, then closed. Reports [`Event::Ready`] once bound,
    /// [`Event::HttpRequest`] per request.
    HttpServe { bind: SocketAddr, pages: Vec<Page> },
    /// Like [`Request::TcpListen`], but a connection that stalls (nothing can be read or
    /// written for `stall_ms`) is not an error: reads to EOF or a stall, then writes
    /// `reply_bytes` bytes or until a stall. Reports [`Event::Transferred`] per connection.
    TcpSink {
        bind: SocketAddr,
        reply_bytes: u64,
        stall_ms: u64,
    },
    /// Like [`Request::TcpSend`], but a stall (nothing can be written or read for
    /// `stall_ms`) ends that direction instead of failing: sends up to `bytes` bytes, shuts
    /// down its sending side, reads to EOF or a stall. Reports [`Event::Transferred`] (or
    /// [`Event::Failed`] if it cannot connect).
    TcpTransfer {
        to: SocketAddr,
        bytes: u64,
        connect_timeout_ms: u64,
        stall_ms: u64,
    },
    /// A WebSocket echo server until killed: each text or binary message goes back as it
    /// came. Reports [`Event::Ready`] once bound, [`Event::WsOpen`] per connection and
    /// [`Event::WsClosed`] when one ends.
    WsEcho { bind: SocketAddr },
    /// A WebSocket client of `ws://to/` that sends each line of its stdin as a text message
    /// and is otherwise idle (no heartbeat: it notices a dead connection only if the network
    /// says so). Reports [`Event::Ready`] once connected (`local`: its own address),
    /// [`Event::WsEchoed`] per message that comes back, and [`Event::WsClosed`] when the
    /// connection ends (then exits); exits quietly when its stdin closes.
    WsClient { to: SocketAddr },
}

/// One page of [`Request::HttpServe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub path: String,
    pub status: u16,
    /// `None`: no `Content-Type` header.
    pub content_type: Option<String>,
    pub body: String,
}

impl Page {
    pub fn new(path: &str, status: u16, content_type: Option<&str>, body: &str) -> Page {
        Page {
            path: path.to_owned(),
            status,
            content_type: content_type.map(str::to_owned),
            body: body.to_owned(),
        }
    }
}

/// What a probe reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Ready {
        local: SocketAddr,
    },
    Accepted {
        peer: SocketAddr,
        local: SocketAddr,
        received: u64,
        sent: u64,
    },
    Datagram {
        peer: SocketAddr,
        len: usize,
    },
    Sent {
        local: SocketAddr,
        peer: SocketAddr,
        sent: u64,
        received: u64,
    },
    Reply {
        len: usize,
    },
    /// What a [`Request::UdpScatter`] sent: datagrams the kernel took, and refused.
    Scattered {
        sent: usize,
        refused: usize,
    },
    /// A request [`Request::HttpServe`] answered (`host` empty if there was none).
    HttpRequest {
        peer: SocketAddr,
        method: String,
        path: String,
        host: String,
        status: u16,
    },
    Failed {
        stage: String,
        error: String,
    },
    /// What a [`Request::TcpSink`] or [`Request::TcpTransfer`] moved: `sent` counts bytes
    /// the socket took (not necessarily delivered), `received` bytes read; `eof` is false
    /// when reading ended in a stall.
    Transferred {
        peer: SocketAddr,
        sent: u64,
        received: u64,
        eof: bool,
    },
    /// A WebSocket connection is up (`peer`: the other end as this end sees it).
    WsOpen {
        peer: SocketAddr,
    },
    /// A text message came back.
    WsEchoed {
        text: String,
    },
    /// A WebSocket connection ended: how, and when (milliseconds since the Unix epoch).
    WsClosed {
        peer: SocketAddr,
        error: String,
        at_ms: u64,
    },
}

/// Declares the probe's entry test; invoke once at the crate root of a test file that uses
/// probes (`mod support;` first).
#[macro_export]
macro_rules! netns_probe_entry {
    () => {
        /// Not a test: the entry point of probe processes (see `support::probe`). Passes at
        /// once in a normal run.
        #[test]
        fn netns_probe_entry() {
            $crate::support::probe::serve_if_requested();
        }
    };
}

/// The body of the entry test: if this process was started as a probe, do the work and exit
/// (0 on success, 1 on failure); otherwise return.
pub fn serve_if_requested() {
    let Ok(json) = std::env::var(PROBE_ENV) else {
        return;
    };
    die_with_parent();
    let code = match serde_json::from_str::<Request>(&json) {
        Ok(request) => run(request),
        Err(e) => {
            report(&Event::Failed {
                stage: "request".to_owned(),
                error: e.to_string(),
            });
            1
        }
    };
    std::process::exit(code);
}

/// A probe must not outlive the test that started it, even when that test process is
/// killed before its drops run: ask the kernel for SIGKILL when the parent goes (`ip netns
/// exec` execs in place, so the parent is the test process), and leave at once if it has
/// gone already.
fn die_with_parent() {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    let _ = set_parent_process_death_signal(Some(Signal::KILL));
    let expected = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let actual = getppid().map(|pid| pid.as_raw_nonzero().get());
    if expected.is_some() && expected != actual {
        std::process::exit(1);
    }
}

fn report(event: &Event) {
    // Straight to the stdout handle (not `println!`, which libtest may capture), one whole
    // line per lock so that events from several connection threads never interleave.
    let line = format!(
        "{EVENT_PREFIX}{}\n",
        serde_json::to_string(event).unwrap_or_default()
    );
    let mut out = io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn failed(stage: &str, error: io::Error) -> i32 {
    report(&Event::Failed {
        stage: stage.to_owned(),
        error: error.to_string(),
    });
    1
}

fn run(request: Request) -> i32 {
    match request {
        Request::TcpListen { bind, reply_bytes } => tcp_listen(bind, reply_bytes),
        Request::UdpEcho { bind } => udp_echo(bind),
        Request::TcpSend {
            to,
            bytes,
            connect_timeout_ms,
        } => tcp_send(to, bytes, Duration::from_millis(connect_timeout_ms)),
        Request::UdpQuery { to, timeout_ms } => udp_query(to, Duration::from_millis(timeout_ms)),
        Request::UdpScatter { to } => udp_scatter(&to),
        Request::HttpServe { bind, pages } => http_serve(bind, pages),
        Request::TcpSink {
            bind,
            reply_bytes,
            stall_ms,
        } => tcp_sink(bind, reply_bytes, Duration::from_millis(stall_ms)),
        Request::TcpTransfer {
            to,
            bytes,
            connect_timeout_ms,
            stall_ms,
        } => tcp_transfer(
            to,
            bytes,
            Duration::from_millis(connect_timeout_ms),
            Duration::from_millis(stall_ms),
        ),
        Request::WsEcho { bind } => ws_run("ws-echo", ws_echo(bind)),
        Request::WsClient { to } => ws_run("ws-client", ws_client(to)),
    }
}

/// Milliseconds since the Unix epoch: the time stamps of [`Event::WsClosed`], which the
/// test compares with its own clock (one machine, one clock).
pub fn epoch_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a WebSocket probe on a runtime of its own; its exit code.
fn ws_run(stage: &str, probe: impl Future<Output = io::Result<()>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failed("runtime", e),
    };
    match runtime.block_on(probe) {
        Ok(()) => 0,
        Err(e) => failed(stage, e),
    }
}

/// Why a WebSocket stream ended, from what it gave last.
fn ws_end(next: Option<Result<tungstenite::Message, tungstenite::Error>>) -> Option<String> {
    match next {
        None => Some("end of stream".to_owned()),
        Some(Err(e)) => Some(e.to_string()),
        Some(Ok(tungstenite::Message::Close(frame))) => Some(format!("close frame {frame:?}")),
        Some(Ok(_)) => None,
    }
}

async fn ws_echo(bind: SocketAddr) -> io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind(bind).await?;
    report(&Event::Ready {
        local: listener.local_addr()?,
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let mut ws = match tokio_tungstenite::accept_async(stream).await {
                Ok(ws) => ws,
                Err(e) => {
                    failed("ws-accept", io::Error::other(e));
                    return;
                }
            };
            report(&Event::WsOpen { peer });
            let error = loop {
                let next = ws.next().await;
                if let Some(Ok(message)) = &next {
                    if message.is_text() || message.is_binary() {
                        if let Err(e) = ws.send(message.clone()).await {
                            break e.to_string();
                        }
                        continue;
                    }
                }
                if let Some(end) = ws_end(next) {
                    break end;
                }
            };
            report(&Event::WsClosed {
                peer,
                error,
                at_ms: epoch_millis(),
            });
        });
    }
}

async fn ws_client(to: SocketAddr) -> io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{to}/"))
        .await
        .map_err(io::Error::other)?;
    let local = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(stream) => stream.local_addr()?,
        _ => return Err(io::Error::other("ws:// gave a TLS stream")),
    };
    report(&Event::Ready { local });
    // stdin on a thread of its own: a blocking read must not stop the socket being watched.
    let (lines, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let error = loop {
        tokio::select! {
            line = inbox.recv() => match line {
                Some(text) => {
                    if let Err(e) = ws.send(tungstenite::Message::text(text)).await {
                        break e.to_string();
                    }
                }
                None => return Ok(()),
            },
            next = ws.next() => {
                if let Some(Ok(tungstenite::Message::Text(text))) = &next {
                    report(&Event::WsEchoed { text: text.to_string() });
                    continue;
                }
                if let Some(end) = ws_end(next) {
                    break end;
                }
            }
        }
    };
    report(&Event::WsClosed {
        peer: to,
        error,
        at_ms: epoch_millis(),
    });
    Ok(())
}

/// Writes up to `count` bytes; stops early at a stall (the write timeout) or a reset.
fn write_until_stall(stream: &mut TcpStream, count: u64) -> u64 {
    let chunk = [0x5a_u8; 16 * 1024];
    let mut sent = 0;
    while sent < count {
        let n = usize::try_from((count - sent).min(chunk.len() as u64)).unwrap_or(chunk.len());
        match stream.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(written) => sent += written as u64,
        }
    }
    sent
}

/// Reads to EOF (true) or until a stall (the read timeout) or a reset (false).
fn read_until_stall(stream: &mut TcpStream) -> (u64, bool) {
    let mut buffer = [0_u8; 64 * 1024];
    let mut total = 0_u64;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (total, true),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (total, false),
        }
    }
}

/// Binds `bind`, reports it ready, and hands each accepted connection (with its peer and the
/// listening address) to `serve` on a thread of its own; returns only when binding or
/// accepting fails.
fn accept_each(
    bind: SocketAddr,
    serve: impl Fn(TcpStream, SocketAddr, SocketAddr) + Copy + Send + 'static,
) -> i32 {
    let listener = match TcpListener::bind(bind) {
        Ok(listener) => listener,
        Err(e) => return failed("bind", e),
    };
    let local = listener.local_addr().unwrap_or(bind);
    report(&Event::Ready { local });
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => return failed("accept", e),
        };
        std::thread::spawn(move || serve(stream, peer, local));
    }
}

fn tcp_sink(bind: SocketAddr, reply_bytes: u64, stall: Duration) -> i32 {
    accept_each(bind, move |mut stream, peer, _| {
        let _ = stream.set_read_timeout(Some(stall));
        let _ = stream.set_write_timeout(Some(stall));
        let (received, eof) = read_until_stall(&mut stream);
        let sent = write_until_stall(&mut stream, reply_bytes);
        let _ = stream.shutdown(Shutdown::Write);
        report(&Event::Transferred {
            peer,
            sent,
            received,
            eof,
        });
    })
}

fn tcp_transfer(to: SocketAddr, bytes: u64, connect_timeout: Duration, stall: Duration) -> i32 {
    let mut stream = match TcpStream::connect_timeout(&to, connect_timeout) {
        Ok(stream) => stream,
        Err(e) => return failed("connect", e),
    };
    let _ = stream.set_read_timeout(Some(stall));
    let _ = stream.set_write_timeout(Some(stall));
    let sent = write_until_stall(&mut stream, bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let (received, eof) = read_until_stall(&mut stream);
    report(&Event::Transferred {
        peer: to,
        sent,
        received,
        eof,
    });
    0
}

/// Writes `count` bytes of a fixed pattern.
fn write_bytes(stream: &mut TcpStream, count: u64) -> io::Result<u64> {
    let chunk = [0x5a_u8; 16 * 1024];
    let mut left = count;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(count)
}

/// Reads to EOF, counting.
fn drain(stream: &mut TcpStream) -> io::Result<u64> {
    let mut buffer = [0_u8; 16 * 1024];
    let mut total = 0_u64;
    loop {
        match stream.read(&mut buffer)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn tcp_listen(bind: SocketAddr, reply_bytes: u64) -> i32 {
    accept_each(bind, move |mut stream, peer, listening| {
        let local = stream.local_addr().unwrap_or(listening);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let outcome = drain(&mut stream).and_then(|received| {
            let sent = write_bytes(&mut stream, reply_bytes)?;
            stream.shutdown(Shutdown::Write)?;
            Ok((received, sent))
        });
        match outcome {
            Ok((received, sent)) => report(&Event::Accepted {
                peer,
                local,
                received,
                sent,
            }),
            Err(e) => {
                failed("serve", e);
            }
        }
    })
}

fn udp_echo(bind: SocketAddr) -> i32 {
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(e) => return failed("bind", e),
    };
    report(&Event::Ready {
        local: socket.local_addr().unwrap_or(bind),
    });
    let mut buffer = [0_u8; 2048];
    loop {
        match socket.recv_from(&mut buffer) {
            Ok((len, peer)) => {
                let _ = socket.send_to(&buffer[..len], peer);
                report(&Event::Datagram { peer, len });
            }
            Err(e) => return failed("receive", e),
        }
    }
}

fn tcp_send(to: SocketAddr, bytes: u64, connect_timeout: Duration) -> i32 {
    let mut stream = match TcpStream::connect_timeout(&to, connect_timeout) {
        Ok(stream) => stream,
        Err(e) => return failed("connect", e),
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => return failed("connect", e),
    };
    let sent = match write_bytes(&mut stream, bytes).and_then(|sent| {
        stream.shutdown(Shutdown::Write)?;
        Ok(sent)
    }) {
        Ok(sent) => sent,
        Err(e) => return failed("send", e),
    };
    match drain(&mut stream) {
        Ok(received) => {
            report(&Event::Sent {
                local,
                peer: to,
                sent,
                received,
            });
            0
        }
        Err(e) => failed("receive", e),
    }
}

fn udp_query(to: SocketAddr, timeout: Duration) -> i32 {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0_u16; 8], 0))
    };
    let socket = match UdpSocket::bind(any) {
        Ok(socket) => socket,
        Err(e) => return failed("bind", e),
    };
    if let Err(e) = socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))) {
        return failed("bind", e);
    }
    if let Err(e) = socket.send_to(b"edgeshare netns probe", to) {
        return failed("send", e);
    }
    let mut buffer = [0_u8; 2048];
    match socket.recv_from(&mut buffer) {
        Ok((len, _)) => {
            report(&Event::Reply { len });
            0
        }
        Err(e) => failed("receive", e),
    }
}

fn udp_scatter(to: &[SocketAddr]) -> i32 {
    let socket = match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))) {
        Ok(socket) => socket,
        Err(e) => return failed("bind", e),
    };
    let sent = to
        .iter()
        .filter(|to| socket.send_to(b"edgeshare netns probe", to).is_ok())
        .count();
    report(&Event::Scattered {
        sent,
        refused: to.len() - sent,
    });
    0
}

/// The longest request head [`Request::HttpServe`] reads.
const MAX_HTTP_HEAD: usize = 16 * 1024;

fn http_serve(bind: SocketAddr, pages: Vec<Page>) -> i32 {
    let listener = match TcpListener::bind(bind) {
        Ok(listener) => listener,
        Err(e) => return failed("bind", e),
    };
    report(&Event::Ready {
        local: listener.local_addr().unwrap_or(bind),
    });
    let pages = std::sync::Arc::new(pages);
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => return failed("accept", e),
        };
        let pages = pages.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let head = match read_head(&mut stream) {
                Ok(head) => head,
                Err(e) => {
                    failed("serve", e);
                    return;
                }
            };
            let mut lines = head.lines();
            let mut parts = lines.next().unwrap_or_default().split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default().to_owned();
            let host = lines
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default();
            let not_found = Page::new("", 404, Some("text/plain"), "not found\n");
            let page = pages.iter().find(|p| p.path == path).unwrap_or(&not_found);
            let reason = match page.status {
                200 => "OK",
                204 => "No Content",
                302 => "Found",
                404 => "Not Found",
                _ => "Status",
            };
            let mut reply = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", page.status);
            if let Some(kind) = &page.content_type {
                reply.push_str(&format!("Content-Type: {kind}\r\n"));
            }
            if page.status != 204 {
                reply.push_str(&format!("Content-Length: {}\r\n", page.body.len()));
            }
            reply.push_str("\r\n");
            if method != "HEAD" && page.status != 204 {
                reply.push_str(&page.body);
            }
            let outcome = stream
                .write_all(reply.as_bytes())
                .and_then(|()| stream.shutdown(Shutdown::Write));
            match outcome {
                Ok(()) => report(&Event::HttpRequest {
                    peer,
                    method,
                    path,
                    host,
                    status: page.status,
                }),
                Err(e) => {
                    failed("serve", e);
                }
            }
        });
    }
}

/// Reads a request head (up to the empty line), at most [`MAX_HTTP_HEAD`] bytes.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HTTP_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        match stream.read(&mut buffer)? {
            0 => break,
            n => head.extend_from_slice(&buffer[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
