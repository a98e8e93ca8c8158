//! Telling systemd how a `Type=notify` service is doing (the `sd_notify` protocol): `READY=1`
//! once the daemon truly serves, `WATCHDOG=1` from its main loop, `STOPPING=1` on shutdown,
//! `STATUS=…` for `systemctl status`.
//!
//! The protocol is one datagram of `KEY=value` lines to the Unix socket named in
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Without `NOTIFY_SOCKET`
//! (run by hand, in tests, under another supervisor) every call does nothing. The watchdog
//! interval comes from `WATCHDOG_USEC`, and applies to this process only if `WATCHDOG_PID`
//! is unset or names it.
//!
//! Own code rather than the `sd-notify` crate: that crate reads the environment inside each
//! call (so tests would have to change the process environment, which is `unsafe` in edition
//! 2024 and races other threads), and pulls in `libc`; this is a few lines of std. The
//! variables are not removed from the environment: the programs the daemons start (`nft`,
//! `ip`) do not speak the protocol, and with systemd's default `NotifyAccess=main` their
//! messages would be ignored anyway.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the service manager listens, and the watchdog it expects. Cheap to share: sending
/// opens a fresh unbound socket each time (a handful of datagrams a second at most).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// None: not run by a service manager that wants notifications.
    socket: Option<SocketAddr>,
    /// The watchdog timeout systemd enforces (`WatchdogSec`), if it applies to us.
    watchdog: Option<Duration>,
}

/// A notification variable that systemd set but that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={value:?} is not a usable socket address (a path starting with '/', or '@name'): {source}"
    )]
    BadSocket {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {what} to the service manager at NOTIFY_SOCKET: {source}")]
    Send {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Notifier {
    /// From this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_values(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
    }

    /// From the variables' values, for a process whose PID is `pid`. An empty or unset
    /// `NOTIFY_SOCKET` means "not supervised"; a watchdog variable that does not parse, or
    /// a `WATCHDOG_PID` of another process, means "no watchdog" (as in libsystemd).
    pub fn from_values(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Result<Notifier, NotifyError> {
        let socket = match notify_socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(value) => {
                Some(
                    socket_address(value).map_err(|source| NotifyError::BadSocket {
                        value: value.to_string_lossy().into_owned(),
                        source,
                    })?,
                )
            }
        };
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(Duration::from_micros);
        Ok(Notifier { socket, watchdog })
    }

    /// True if a service manager listens (calls send something).
    pub fn is_supervised(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog timeout, if systemd enforces one on this process: send
    /// [`Notifier::watchdog`] well within it (libsystemd advises every half of it).
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1` (with a status line): startup is finished, the service serves.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the main loop is alive. Nothing is sent when no watchdog applies.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        if self.watchdog.is_none() {
            return Ok(());
        }
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1` (with a status line): shutdown has begun.
    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=…`: one line shown by `systemctl status`.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// Sends `message` (newline-separated `KEY=value` assignments) as one datagram.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(address) = &self.socket else {
            return Ok(());
        };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(message.as_bytes(), address));
        match sent {
            Ok(n) if n == message.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "only {n} of {} bytes were sent",
                message.len()
            ))),
            Err(err) => Err(err),
        }
        .map_err(|source| NotifyError::Send {
            what: message.lines().next().unwrap_or_default().to_owned(),
            source,
        })
    }
}

/// `@name` is an abstract-namespace socket (no file; scoped to the network namespace),
/// anything else a path.
fn socket_address(value: &OsStr) -> io::Result<SocketAddr> {
    match value.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name",
        )),
    }
}

/// A newline would start a new assignment: a status is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// A listener like systemd's, on a path in a fresh temporary directory.
    fn listener() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.into_os_string())
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_status_watchdog_and_stopping_arrive_as_datagrams() {
        let (_dir, socket, path) = listener();
        let notifier = Notifier::from_values(Some(&path), Some("30000000"), None, 42).unwrap();
        assert!(notifier.is_supervised());
        assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(30)));

        notifier.ready("serving on wlan0\nsecond line").unwrap();
        assert_eq!(
            receive(&socket),
            "READY=1\nSTATUS=serving on wlan0 second line"
        );
        notifier.watchdog().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1");
        notifier.status("3 online").unwrap();
        assert_eq!(receive(&socket), "STATUS=3 online");
        notifier.stopping("stopping").unwrap();
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn abstract_namespace_sockets_work() {
        let name = format!("edgeshare-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let value = OsString::from(format!("@{name}"));
        let notifier = Notifier::from_values(Some(&value), None, None, 1).unwrap();
        notifier.ready("ok").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        for unset in [None, Some(OsStr::new(""))] {
            let notifier = Notifier::from_values(unset, Some("1000000"), None, 1).unwrap();
            assert!(!notifier.is_supervised());
            notifier.ready("x").unwrap();
            notifier.watchdog().unwrap();
            notifier.stopping("x").unwrap();
        }
    }

    #[test]
    fn the_watchdog_applies_only_to_its_pid_and_to_sane_values() {
        let sock = OsStr::new("/run/systemd/notify");
        let timeout = |usec, pid| {
            Notifier::from_values(Some(sock), usec, pid, 42)
                .unwrap()
                .watchdog_timeout()
        };
        assert_eq!(
            timeout(Some("2500000"), Some("42")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(timeout(Some("2500000"), Some("43")), None, "another PID");
        assert_eq!(timeout(Some("2500000"), Some("junk")), None);
        assert_eq!(timeout(Some("0"), None), None);
        assert_eq!(timeout(Some("soon"), None), None);
        assert_eq!(timeout(None, Some("42")), None);
    }

    #[test]
    fn no_watchdog_means_no_watchdog_datagram() {
        let (_dir, socket, path) = listener();
        let notifier = Notifier::from_values(Some(&path), None, None, 1).unwrap();
        notifier.watchdog().unwrap();
        notifier.status("after").unwrap();
        assert_eq!(receive(&socket), "STATUS=after", "no WATCHDOG=1 before it");
    }

    #[test]
    fn a_listener_that_is_gone_is_an_error_naming_the_message() {
        let (dir, socket, path) = listener();
        drop(socket);
        std::fs::remove_file(dir.path().join("notify.sock")).unwrap();
        let notifier = Notifier::from_values(Some(&path), None, None, 1).unwrap();
        let err = notifier.ready("x").unwrap_err();
        assert!(err.to_string().contains("READY=1"), "{err}");
    }

    #[test]
    fn a_relative_or_overlong_socket_is_refused() {
        let long = OsString::from(format!("/{}", "x".repeat(200)));
        for bad in [long, OsString::from("run/notify")] {
            let err = Notifier::from_values(Some(&bad), None, None, 1).unwrap_err();
            assert!(matches!(err, NotifyError::BadSocket { .. }), "{err}");
        }
    }
}
