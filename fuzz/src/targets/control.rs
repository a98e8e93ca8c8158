//! `control`: the control socket's protocol from both ends, each input used both ways.
//!
//! - As a request: read as the daemon reads one (a line of at most `MAX_REQUEST` bytes through
//!   tokio's `read_line`), parsed into `control::Request` by the same serde call, and the
//!   daemon's "bad request" reply built and framed the same way. (`handle_control` itself is
//!   private to the daemon and needs its session state and firewall; it is not reached.)
//! - As a reply: served by a fake daemon on a real Unix socket to `control::call`, the client
//!   that the gateway CLI and the agent use, whose `ok` value is then read as the agent reads
//!   `usage` and `flows` replies.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;

use edgeshare_gateway::control::{ControlError, MAX_REQUEST, Reply, Request, call};
use edgeshare_shared::control::{Flows, LiveUsage};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

use crate::engine::{Target, signature};

#[derive(Debug)]
pub struct ControlTarget {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    replies: mpsc::Sender<Vec<u8>>,
}

impl ControlTarget {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let socket = dir.path().join("gw.sock");
        let listener =
            UnixListener::bind(&socket).unwrap_or_else(|e| panic!("cannot bind a socket: {e}"));
        let (replies, next) = mpsc::channel::<Vec<u8>>();
        // The fake daemon: one connection per input, the reply is the input as it is.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut request = String::new();
                let _ = BufReader::new(&stream).read_line(&mut request);
                let Ok(reply) = next.recv() else { return };
                // The client stops reading at the first newline and may hang up first.
                let _ = (&stream).write_all(&reply);
            }
        });
        ControlTarget {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}")),
            _dir: dir,
            socket,
            replies,
        }
    }
}

impl Default for ControlTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// The daemon's side: read a request line, parse it, frame the reply.
fn as_request(runtime: &tokio::runtime::Runtime, input: &[u8]) -> Result<&'static str, String> {
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(input.take(MAX_REQUEST as u64));
    let reply = match runtime.block_on(reader.read_line(&mut line)) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                // A request that parses has a wire form that parses back to it.
                let wire = serde_json::to_string(&request).map_err(|e| e.to_string())?;
                let back: Request = serde_json::from_str(&wire)
                    .map_err(|e| format!("{request:?} as {wire} does not parse back: {e}"))?;
                if back != request {
                    return Err(format!("{request:?} came back as {back:?}"));
                }
                return Ok(match request {
                    Request::Status => "status",
                    Request::Clients => "clients",
                    Request::Kick { .. } => "kick",
                    Request::RevokeCode { .. } => "revoke-code",
                    Request::Usage => "usage",
                    Request::Flows => "flows",
                });
            }
            Err(err) => Reply::Error(format!("bad request: {err}")),
        },
        Err(err) => Reply::Error(format!("cannot read the request: {err}")),
    };
    // The daemon's framing: one line, that the client reads back as the same reply.
    let text = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
    if text.contains('\n') {
        return Err(format!("the reply {text:?} is not one line"));
    }
    let back: Reply =
        serde_json::from_str(&text).map_err(|e| format!("reply {text:?} does not parse: {e}"))?;
    if back != reply {
        return Err(format!("reply {reply:?} came back as {back:?}"));
    }
    Ok("refused")
}

impl ControlTarget {
    /// The client's side: `input` is what the daemon answers.
    fn as_reply(&self, input: &[u8]) -> Result<&'static str, String> {
        self.replies
            .send(input.to_vec())
            .map_err(|_| "the fake daemon is gone".to_owned())?;
        let first_line = match input.iter().position(|&b| b == b'\n') {
            Some(end) => &input[..=end],
            None => input,
        };
        match call(&self.socket, &serde_json::json!({"cmd": "usage"})) {
            Ok(value) => {
                // `ok` comes only from a first line that is an ok reply with that value.
                match serde_json::from_slice::<Reply>(first_line) {
                    Ok(Reply::Ok(expected)) if expected == value => {}
                    other => {
                        return Err(format!(
                            "call returned Ok({value}) for a line read as {other:?}"
                        ));
                    }
                }
                // What the agent does with `usage` and `flows` replies.
                let usage = serde_json::from_value::<LiveUsage>(value.clone()).is_ok();
                let flows = serde_json::from_value::<Flows>(value).is_ok();
                Ok(match (usage, flows) {
                    (true, _) => "ok-usage",
                    (_, true) => "ok-flows",
                    _ => "ok-other",
                })
            }
            Err(ControlError::Refused(_)) => Ok("refused"),
            Err(ControlError::BadReply(text)) => {
                if text.len() > MAX_REQUEST * 16 {
                    return Err(format!("a reply of {} bytes was kept", text.len()));
                }
                Ok("bad-reply")
            }
            Err(ControlError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                // A reply line that is not UTF-8.
                Ok("not-utf8")
            }
            Err(other) => Err(format!("unexpected client error: {other}")),
        }
    }
}

impl Target for ControlTarget {
    fn name(&self) -> &'static str {
        "control"
    }

    fn run(&mut self, input: &[u8]) -> Result<u64, String> {
        let request = as_request(&self.runtime, input).map_err(|e| format!("as a request: {e}"))?;
        let reply = self
            .as_reply(input)
            .map_err(|e| format!("as a reply: {e}"))?;
        Ok(signature(&[request, reply]))
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{\"cmd\":\"status\"}",
            "{\"cmd\":\"kick\",\"mac\":\"02:00:00:00:00:02\"}",
            "{\"cmd\":\"revoke-code\",\"code\":\"abcd2345\"}",
            "{\"cmd\":\"usage\"}",
            "{\"cmd\":\"flows\"}",
            "\"cmd\":",
            "\"mac\":",
            "\"code\":",
            "\"ok\":",
            "\"error\":",
            "{\"ok\":",
            "{\"error\":\"x\"}",
            "\"at_ms\":",
            "\"clients\":[",
            "\"connections\":[",
            "\"ip\":\"10.66.0.2\"",
            "\"ip\":\"::1\"",
            "\"up_rate\":1.5",
            "\"down_rate\":",
            "\"session\":\"ABCD2345-1\"",
            "\"up_bytes\":",
            "\"down_bytes\":",
            "\"mac\":\"aa:bb:cc:dd:ee:ff\"",
            "null",
            "true",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "}}}}}}}}",
            "1.0e-400",
            "\\n",
        ]
    }

    fn max_len(&self) -> usize {
        8 * 1024
    }
}
