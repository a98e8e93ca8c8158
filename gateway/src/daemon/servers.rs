//! The daemon's servers: the portal's view of the state ([`PortalGate`]), the control
//! socket, and the metrics endpoint. Each asks the state's owner by message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::supervisor::{Spawner, stopped};

use super::Codes;
use super::owner::Owner;
use crate::codes::{SignIn, Verdict};
use crate::control::{self, Reply, Request};
use crate::net::{Client, Millis};
use crate::portal::{Account, ClientStatus, Gate, Redeem};
use crate::refusal::Refusal;

/// The portal's view of the daemon.
pub(super) struct PortalGate {
    pub owner: Owner,
    /// Where codes are checked (outside the owner: a backend check takes up to seconds).
    pub codes: Arc<Codes>,
    /// `codes.expiry_margin`, for codes admitted from the kept list while the backend is
    /// unreachable.
    pub margin: Duration,
}

/// The portal's listening socket: every address of the LAN interface, IPv4 and IPv6 (a
/// captive phone's IPv6 port-80 request is redirected here as well as its IPv4 one), and no
/// other interface's: the portal is not for the WAN. On a kernel without IPv6, the LAN's
/// IPv4 address alone.
pub(super) fn bind_portal(
    lan: &str,
    lan_ip: Ipv4Addr,
    port: u16,
) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = match tokio::net::TcpSocket::new_v6() {
        Ok(socket) => socket,
        Err(err) => {
            tracing::warn!(error = %err, "no IPv6 here: the portal listens on {lan_ip} only");
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket
                .bind(SocketAddr::from((lan_ip, port)))
                .with_context(|| format!("binding the portal to {lan_ip}:{port}"))?;
            return Ok(socket.listen(1024)?);
        }
    };
    // Both families on one socket; IPv4 peers arrive as mapped addresses, which the portal
    // turns back into IPv4 ones.
    rustix::net::sockopt::set_ipv6_v6only(&socket, false)
        .context("letting the portal's IPv6 socket take IPv4 too")?;
    socket.bind_device(Some(lan.as_bytes())).with_context(|| {
        format!("binding the portal to lan.interface {lan} (needs CAP_NET_RAW)")
    })?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .with_context(|| format!("binding the portal to port {port} on {lan}"))?;
    Ok(socket.listen(1024)?)
}

/// How long a control client may take to send its request: the CLI and the agent send it at
/// once, so a connection idle this long is held open by something else.
const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once. At the limit a new connection closes the oldest one:
/// idle connections piling up cannot keep `status` (or the agent's usage reads) out.
const CONTROL_MAX_CONNECTIONS: usize = 64;
/// Longest pause after failed accepts in a row (out of file descriptors, EMFILE): doubling
/// from 10 ms, so a lasting failure neither spins a core nor floods the log.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long about failing accepts; the rest are counted in it.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves the control socket until the stop; each connection is a task of `tasks`.
pub(super) async fn serve_control(
    listener: tokio::net::UnixListener,
    owner: Owner,
    tasks: Spawner,
) {
    let open: Arc<Mutex<std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>> =
        Arc::default();
    let mut stop = tasks.stopping();
    let mut next_id = 0_u64;
    let mut backoff = Duration::ZERO;
    let mut last_logged: Option<tokio::time::Instant> = None;
    let mut unlogged = 0_u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(err) => {
                unlogged += 1;
                if last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY) {
                    tracing::warn!(error = %err, failures = unlogged, "control socket accept failing; backing off (too many open files? see LimitNOFILE)");
                    last_logged = Some(tokio::time::Instant::now());
                    unlogged = 0;
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (evict_tx, evicted) = tokio::sync::oneshot::channel();
        let id = next_id;
        next_id += 1;
        {
            let mut open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if open.len() >= CONTROL_MAX_CONNECTIONS {
                // Dropping its sender ends the oldest connection.
                open.pop_first();
            }
            open.insert(id, evict_tx);
        }
        let owner = owner.clone();
        let open = open.clone();
        let stop = tasks.stopping();
        tasks.spawn("control connection", async move {
            tokio::select! {
                () = serve_control_connection(stream, owner, stop) => {}
                _ = evicted => {}
            }
            open.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        });
    }
}

/// One request and its reply; a client silent for [`CONTROL_IDLE_TIMEOUT`], or still silent
/// at the stop, is dropped (a request read by then is answered).
async fn serve_control_connection(
    stream: tokio::net::UnixStream,
    owner: Owner,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(control::MAX_REQUEST as u64));
    let read = tokio::select! {
        read = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, reader.read_line(&mut line)) => read,
        () = stopped(&mut stop) => return,
    };
    let reply = match read {
        Err(_) => return,
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => owner.control(request).await,
            Err(err) => Reply::Error(format!("bad request: {err}")),
        },
        Ok(Err(err)) => Reply::Error(format!("cannot read the request: {err}")),
    };
    let mut text = serde_json::to_string(&reply)
        .unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_owned());
    text.push('\n');
    let _ = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, write.write_all(text.as_bytes())).await;
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until the stop; each connection is
/// a task of `tasks`.
pub(super) async fn serve_metrics(listener: tokio::net::TcpListener, owner: Owner, tasks: Spawner) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let owner = owner.clone();
            async move {
                let text = owner.metrics().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    edgeshare_shared::serve::serve(listener, app, tasks, "metrics connection").await;
}

impl PortalGate {
    /// Signs a consumer in before their code is redeemed: the account's id, or the refusal.
    async fn sign_in(&self, account: &Account) -> Result<String, Refusal> {
        let Codes::Backend(backend) = &*self.codes else {
            // The portal offers accounts only with backend codes (`accounts`).
            return Err(Refusal::Internal);
        };
        match backend.sign_in(&account.email, &account.password).await {
            SignIn::Consumer(id) => Ok(id),
            SignIn::WrongCredentials => Err(Refusal::WrongAccount),
            SignIn::NotConsumer => Err(Refusal::NotConsumer),
            SignIn::Unreachable(reason) => {
                tracing::warn!(%reason, "consumer sign-in failed");
                Err(Refusal::AccountUnreachable)
            }
        }
    }
}

impl Gate for PortalGate {
    async fn redeem(&self, ip: IpAddr, code: AccessCode, account: Option<Account>) -> Redeem {
        let Some(mac) = lookup_mac(ip).await else {
            tracing::info!(%ip, "no MAC for this client in the neighbour table");
            return Err(Refusal::UnknownDevice);
        };
        let client = Client { mac, ip };
        // The credentials go no further than the sign-in: only the account's id is kept.
        let signed_in = account.is_some();
        let consumer = match account {
            Some(account) => Some(self.sign_in(&account).await?),
            None => None,
        };
        // Whether the code was admitted from the provider's kept list (backend unreachable).
        let mut from_kept_list = false;
        let verdict = match &*self.codes {
            Codes::Local(store) => {
                let store = store.clone();
                let code = code.clone();
                tokio::task::spawn_blocking(move || store.check(&code, Millis::now()))
                    .await
                    .unwrap_or_else(|e| Verdict::Unreachable(e.to_string()))
            }
            Codes::Backend(backend) => match backend.check(&code, Millis::now()).await {
                // What the list said less what this gateway has used of the code since.
                Verdict::Offline(own) => {
                    let used = self.owner.used_by_code().await.ok_or(Refusal::Internal)?;
                    from_kept_list = true;
                    crate::own_codes::offline_verdict(
                        &own,
                        used.get(&code).copied().unwrap_or(0),
                        self.margin,
                        Millis::now(),
                    )
                }
                verdict => verdict,
            },
        };
        let grant = match verdict {
            Verdict::Granted(grant) => crate::core::Grant { consumer, ..grant },
            Verdict::Refused(refusal) => return Err(refusal),
            // Turned into a verdict above.
            Verdict::Offline(_) => return Err(Refusal::Internal),
            Verdict::Unreachable(reason) => {
                tracing::warn!(%reason, "code check failed");
                return Err(Refusal::BackendUnreachable);
            }
        };
        let login = self.owner.login(client, grant).await;
        match &login {
            Ok(_) => {
                tracing::info!(%client, account = signed_in, from_kept_list, "client online")
            }
            Err(refusal @ (Refusal::NotSaved | Refusal::NotEnforced)) => {
                tracing::error!(%client, reason = %refusal, "login refused");
            }
            // The page asks the device to reconnect and try again: by then the holder has
            // answered its probe (the address is not this device's) or failed it.
            Err(Refusal::AddressHeld) => {
                tracing::info!(%client, "login refused for now: an online device of another session holds this address and is being probed");
            }
            Err(_) => {}
        }
        login
    }

    async fn status(&self, ip: IpAddr) -> Option<ClientStatus> {
        self.owner.status(ip).await
    }

    async fn mac(&self, ip: IpAddr) -> Option<crate::net::Mac> {
        lookup_mac(ip).await
    }

    fn accounts(&self) -> bool {
        matches!(*self.codes, Codes::Backend(_))
    }

    fn backend_down_since(&self) -> Option<Millis> {
        match &*self.codes {
            Codes::Backend(backend) => backend.link().down_since(),
            Codes::Local(_) => None,
        }
    }
}

/// The MAC of the device at `ip`, from the neighbour table (a blocking netlink read).
async fn lookup_mac(ip: IpAddr) -> Option<crate::net::Mac> {
    tokio::task::spawn_blocking(move || crate::neighbours::lookup_mac(ip))
        .await
        .ok()
        .flatten()
}
