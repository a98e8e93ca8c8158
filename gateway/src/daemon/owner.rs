//! The one owner of the gateway's state: a thread that holds [`State`] (the core, the
//! firewall, the counter baselines, the ledger) and is the only code that touches it. The
//! portal, the control socket, the metrics endpoint, the capture meter and the garden
//! resolver send it [`Command`]s through an [`Owner`] handle and await the reply; between
//! commands it ticks once a second (and at each online device's expiry).
//!
//! A thread rather than a tokio task: every firewall call blocks (it waits for the kernel),
//! and the work is serial by design. Commands are handled one at a time in the order they
//! arrive, so the kernel follows the core's decisions in order, without a lock that a slow
//! call would make everyone else wait on in a pile of blocking-pool threads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use edgeshare_shared::code::AccessCode;
use edgeshare_shared::control::Flows;
use edgeshare_shared::systemd::Notifier;
use tokio::sync::oneshot;

use super::state::State;
use super::{TICK, handover};
use crate::capture::Report;
use crate::codes::{BackendLink, CodeStore, Recheck};
use crate::control::{Reply, Request};
use crate::core::{Action, Grant};
use crate::dashboard::view::Live;
use crate::firewall::{Firewall, FirewallError};
use crate::neighbours::Entry;
use crate::net::{Client, Millis};
use crate::portal::ClientStatus;
use crate::refusal::Refusal;
use edgeshare_shared::code::redact;

/// Wake this long after a code's expiry, so that by the clock the core reads it has passed.
const EXPIRY_MARGIN: Duration = Duration::from_millis(5);
/// The shortest time between two rounds of the main loop.
const MIN_WAKE: Duration = Duration::from_millis(50);
/// How often the table is checked (someone may flush the ruleset).
const REPAIR_EVERY: Duration = Duration::from_secs(5);
/// How often live usage is written to the local code store (for `codes list`) and codes
/// revoked there are cut off (for a `codes revoke` the daemon did not hear about).
const STORE_SYNC_EVERY: Duration = Duration::from_secs(30);

/// What the owner is asked to do.
pub(super) enum Command {
    /// A device entered a code its source granted: let it in (see [`State::login`]).
    Login {
        client: Client,
        grant: Grant,
        reply: oneshot::Sender<Result<ClientStatus, Refusal>>,
    },
    /// What is left for the device at `ip`, if it is online.
    Status {
        ip: IpAddr,
        reply: oneshot::Sender<Option<ClientStatus>>,
    },
    /// A control-socket request.
    Control {
        request: Request,
        reply: oneshot::Sender<Reply>,
    },
    /// The Prometheus text of the metrics endpoint.
    Metrics { reply: oneshot::Sender<String> },
    /// What the provider's dashboard shows.
    Dashboard { reply: oneshot::Sender<Live> },
    /// A report of the capture meter.
    Capture(Report),
    /// What this gateway has used of each code in all (see [`State::used_by_code`]).
    UsedByCode {
        reply: oneshot::Sender<HashMap<AccessCode, u64>>,
    },
    /// The codes of other accounts being served, to ask the backend about again.
    OtherAccountCodes {
        reply: oneshot::Sender<Vec<AccessCode>>,
    },
    /// What asking the backend again about another account's code came to;
    /// [`Recheck::Unknown`]: it could not be asked for too long, its devices leave.
    Rechecked {
        code: AccessCode,
        outcome: Recheck,
        reply: oneshot::Sender<()>,
    },
    /// Neighbour entries of the LAN the kernel says changed.
    Neighbours(Vec<Entry>),
    /// The same table with a new walled garden (hosts resolved late): installed at once.
    Firewall {
        firewall: Box<dyn Firewall>,
        reply: oneshot::Sender<Result<(), FirewallError>>,
    },
    /// Read the last counters, save, and end (the table stays unless `remove_table`).
    Stop {
        remove_table: bool,
        reply: oneshot::Sender<()>,
    },
}

/// What the owner knows besides its state: fixed for the daemon's life.
pub(super) struct Context {
    pub lan: String,
    pub portal_url: String,
    /// `local` or `backend`, for `status`.
    pub codes: &'static str,
    pub started: Millis,
    /// `capture.flow_idle`, told to the agent with the flows.
    pub flow_idle_ms: u64,
    /// The local code store, when codes are local.
    pub store: Option<CodeStore>,
    /// Whether the backend answers, when codes are checked there.
    pub backend: Option<Arc<BackendLink>>,
    pub notifier: Notifier,
}

/// A handle on the owner: cheap to clone, one per task that needs the state.
#[derive(Clone)]
pub(super) struct Owner {
    commands: Sender<Command>,
}

/// The owner's end of the command channel, until [`Inbox::start`] hands it to the thread.
pub(super) struct Inbox(Receiver<Command>);

impl Owner {
    /// A handle and the inbox it sends to. Commands wait in the inbox until the owner's
    /// thread starts, so the handle can be given out (to the capture meter, say) before the
    /// state it will own is complete.
    pub fn new() -> (Owner, Inbox) {
        let (commands, inbox) = std::sync::mpsc::channel();
        (Owner { commands }, Inbox(inbox))
    }

    /// Sends a command made around a reply channel and waits for the reply; `None` once the
    /// owner has stopped.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        answer.await.ok()
    }

    /// Lets `client` in with `grant`; a daemon stopping refuses it as [`Refusal::Internal`].
    pub async fn login(&self, client: Client, grant: Grant) -> Result<ClientStatus, Refusal> {
        self.ask(|reply| Command::Login {
            client,
            grant,
            reply,
        })
        .await
        .unwrap_or(Err(Refusal::Internal))
    }

    pub async fn status(&self, ip: IpAddr) -> Option<ClientStatus> {
        self.ask(|reply| Command::Status { ip, reply })
            .await
            .flatten()
    }

    pub async fn control(&self, request: Request) -> Reply {
        self.ask(|reply| Command::Control { request, reply })
            .await
            .unwrap_or_else(|| Reply::Error("the gateway is stopping".to_owned()))
    }

    pub async fn metrics(&self) -> String {
        self.ask(|reply| Command::Metrics { reply })
            .await
            .unwrap_or_default()
    }

    pub async fn dashboard(&self) -> Option<Live> {
        self.ask(|reply| Command::Dashboard { reply }).await
    }

    pub async fn used_by_code(&self) -> Option<HashMap<AccessCode, u64>> {
        self.ask(|reply| Command::UsedByCode { reply }).await
    }

    pub async fn other_account_codes(&self) -> Option<Vec<AccessCode>> {
        self.ask(|reply| Command::OtherAccountCodes { reply }).await
    }

    pub async fn rechecked(&self, code: AccessCode, outcome: Recheck) {
        self.ask(|reply| Command::Rechecked {
            code,
            outcome,
            reply,
        })
        .await;
    }

    /// Hands over a capture report; no reply (the capture thread does not wait).
    pub fn capture(&self, report: Report) {
        // Fails only once the owner has stopped, when reports no longer matter.
        let _ = self.commands.send(Command::Capture(report));
    }

    /// Hands over changed neighbour entries; no reply. False once the owner has stopped.
    pub fn neighbours(&self, entries: Vec<Entry>) -> bool {
        self.commands.send(Command::Neighbours(entries)).is_ok()
    }

    pub async fn replace_firewall(
        &self,
        firewall: Box<dyn Firewall>,
    ) -> Option<Result<(), FirewallError>> {
        self.ask(|reply| Command::Firewall { firewall, reply })
            .await
    }

    /// Stops the owner: the last counters are read and the state saved.
    pub async fn stop(&self, remove_table: bool) {
        self.ask(|reply| Command::Stop {
            remove_table,
            reply,
        })
        .await;
    }
}

impl Inbox {
    /// Starts the owner's thread with `state`: from now on only it touches the state.
    pub fn start(
        self,
        state: State,
        context: Context,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("state-owner".to_owned())
            .spawn(move || run(state, context, self.0))
    }
}

/// When the owner must tick next for an expiry: just after the earliest online device's
/// code expires, so that the cut-off (after the last counter read) comes at expiry, not up
/// to a tick later; never sooner than [`MIN_WAKE`], so a deadline that cannot be cleared
/// does not spin.
fn expiry_wake(state: &State, now: Instant) -> Option<Instant> {
    let until = state.core.next_expiry()?;
    Some(now + (Millis::now().until(until) + EXPIRY_MARGIN).max(MIN_WAKE))
}

/// The owner's loop: commands as they come, ticks in between.
fn run(mut state: State, context: Context, inbox: Receiver<Command>) {
    let started = Instant::now();
    let mut next_tick = started + TICK;
    let mut last_repair = started;
    let mut last_store_sync = started;
    // A command read while gathering logins, to handle next.
    let mut deferred: Option<Command> = None;
    loop {
        let now = Instant::now();
        let wake = expiry_wake(&state, now).map_or(next_tick, |at| at.min(next_tick));
        if now >= wake {
            let repair = last_repair.elapsed() >= REPAIR_EVERY;
            if repair {
                last_repair = now;
            }
            let sync = context.store.is_some() && last_store_sync.elapsed() >= STORE_SYNC_EVERY;
            if sync {
                last_store_sync = now;
            }
            guarded("the tick", || tick(&mut state, &context, repair, sync));
            // Petted only after a tick completed: a tick stuck in the kernel stops the
            // pets, and systemd's watchdog restarts the daemon.
            if let Err(err) = context.notifier.watchdog() {
                tracing::warn!(error = %err, "cannot pet systemd's watchdog");
            }
            next_tick = Instant::now() + TICK;
            continue;
        }
        let received = match deferred.take() {
            Some(command) => Ok(command),
            None => inbox.recv_timeout(wake - now),
        };
        match received {
            Ok(Command::Login {
                client,
                grant,
                reply,
            }) => {
                let mut logins = vec![(client, grant, reply)];
                deferred = gather_logins(&inbox, &mut logins);
                guarded("the logins", || login(&mut state, &context, logins));
            }
            Ok(Command::Stop {
                remove_table,
                reply,
            }) => {
                stop(&mut state, &context, remove_table);
                let _ = reply.send(());
                return;
            }
            Ok(command) => guarded("a request", || handle(&mut state, &context, command)),
            Err(RecvTimeoutError::Timeout) => {}
            // Every handle is gone without a stop: save what there is.
            Err(RecvTimeoutError::Disconnected) => {
                stop(&mut state, &context, false);
                return;
            }
        }
    }
}

/// The most logins handled together: one save and one counter reading for them all.
const LOGIN_BATCH: usize = 256;

/// A login and where its answer goes.
type PendingLogin = (
    Client,
    Grant,
    oneshot::Sender<Result<ClientStatus, Refusal>>,
);

/// Takes the logins waiting right behind the first (a crowd arriving), up to
/// [`LOGIN_BATCH`]; the first other command met is returned, to be handled next.
fn gather_logins(inbox: &Receiver<Command>, logins: &mut Vec<PendingLogin>) -> Option<Command> {
    while logins.len() < LOGIN_BATCH {
        match inbox.try_recv() {
            Ok(Command::Login {
                client,
                grant,
                reply,
            }) => logins.push((client, grant, reply)),
            Ok(other) => return Some(other),
            Err(_) => return None,
        }
    }
    None
}

/// Lets the devices in (see [`State::logins`]) and tells each what came of it. A login
/// whose consumer is no longer waiting (the portal gave up on it) is not made: the device
/// would be online while its consumer was told it failed.
fn login(state: &mut State, context: &Context, logins: Vec<PendingLogin>) {
    let now = Millis::now();
    let (waiting, replies): (Vec<(Client, Grant)>, Vec<_>) = logins
        .into_iter()
        .filter(|(_, _, reply)| !reply.is_closed())
        .map(|(client, grant, reply)| ((client, grant), reply))
        .unzip();
    let clients: Vec<Client> = waiting.iter().map(|(client, _)| *client).collect();
    let results = state.logins(waiting, now, context.store.as_ref());
    for ((client, result), reply) in clients.into_iter().zip(results).zip(replies) {
        let answer =
            result.and_then(|()| status_of(state, client.ip, now).ok_or(Refusal::NotEnforced));
        let _ = reply.send(answer);
    }
}

/// Runs `work`; a panic in it is logged and the owner carries on with the state as the
/// last complete call left it (the core's calls leave it consistent), rather than take the
/// gateway, and every online device's accounting, down.
fn guarded(what: &str, work: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%message, "{what} failed (a bug); carrying on");
    }
}

fn tick(state: &mut State, context: &Context, repair: bool, sync: bool) {
    let now = Millis::now();
    if repair {
        state.repair(now, context.store.as_ref());
    }
    state.tick(now, context.store.as_ref());
    if let (true, Some(store)) = (sync, &context.store) {
        state.sync_store(store, now);
    }
    state.persist(now);
}

fn handle(state: &mut State, context: &Context, command: Command) {
    match command {
        Command::Status { ip, reply } => {
            let _ = reply.send(status_of(state, ip, Millis::now()));
        }
        Command::Control { request, reply } => {
            let _ = reply.send(handle_control(state, context, request));
        }
        Command::Metrics { reply } => {
            let _ = reply.send(state.metrics(&context.lan));
        }
        Command::Dashboard { reply } => {
            let mut live = state.dashboard();
            live.health.uptime_seconds = context.started.until(Millis::now()).as_secs();
            live.health.codes = context.codes.to_owned();
            live.health.backend_down_since_ms = backend_down_since(context).map(|at| at.0);
            let _ = reply.send(live);
        }
        Command::UsedByCode { reply } => {
            let _ = reply.send(state.used_by_code());
        }
        Command::OtherAccountCodes { reply } => {
            let _ = reply.send(state.core.other_account_codes());
        }
        Command::Rechecked {
            code,
            outcome,
            reply,
        } => {
            rechecked(state, context, &code, outcome);
            let _ = reply.send(());
        }
        Command::Capture(report) => state.meters.capture_report(&report),
        Command::Neighbours(entries) => state.neighbours_changed(&entries, Millis::now()),
        Command::Firewall { firewall, reply } => {
            state.firewall = firewall;
            let _ = reply.send(state.firewall.install());
        }
        // Handled by the loop.
        Command::Login { .. } | Command::Stop { .. } => {}
    }
}

fn status_of(state: &State, ip: IpAddr, now: Millis) -> Option<ClientStatus> {
    state.core.status_of(ip, now).map(|s| ClientStatus {
        bytes_left: s.bytes_left,
        seconds_left: now.until(s.expires_at).as_secs(),
        code_expires: s.code_expires,
        other_account: s.other_account,
    })
}

fn backend_down_since(context: &Context) -> Option<Millis> {
    context.backend.as_ref().and_then(|link| link.down_since())
}

/// Carries out what asking the backend again about another account's code said: the
/// counters are read first (a session may end), then the core decides.
fn rechecked(state: &mut State, context: &Context, code: &AccessCode, outcome: Recheck) {
    let now = Millis::now();
    let store = context.store.as_ref();
    state.settle(now, store);
    let actions = match outcome {
        Recheck::Left(left) => state.core.code_left(code, left, now),
        Recheck::Expired => {
            tracing::info!(code = %redact(code.as_str()), "another account's code has expired: its session ends");
            state.core.code_expired(code, now)
        }
        Recheck::Unknown => {
            tracing::warn!(code = %redact(code.as_str()), "another account's code could not be checked again for too long (backend unreachable?): its devices are logged out until it can be");
            state.core.release_devices(code)
        }
    };
    if !actions.is_empty() {
        state.apply(actions, now, store);
        state.persist(now);
    }
}

/// The last counters go to their sessions and the state is saved; the table stays (online
/// devices stay online across a restart) unless `remove_table`.
fn stop(state: &mut State, context: &Context, remove_table: bool) {
    // Joins the capture thread (within its read timeout); its last tallies and the flows the
    // agent has not fetched are kept for the agent, as this run's.
    let kept = state.meters.finish(context.started.0);
    handover::save(&state.books.beside(handover::FILE), &kept);
    let now = Millis::now();
    state.settle(now, None);
    // Logged by `save`: what the kernel counted since the last save still goes to its
    // session at the next start (the baselines on disk are older).
    let _ = state.save(now);
    if remove_table {
        if let Err(err) = state.firewall.uninstall() {
            tracing::error!(error = %err, "cannot remove the nftables table");
        }
    }
}

pub(super) fn handle_control(state: &mut State, context: &Context, request: Request) -> Reply {
    let now = Millis::now();
    let store = context.store.as_ref();
    if matches!(request, Request::Kick { .. } | Request::RevokeCode { .. }) {
        state.settle(now, store);
    }
    match request {
        Request::Status => {
            let sessions = state.core.sessions();
            Reply::Ok(serde_json::json!({
                "lan": context.lan,
                "portal": context.portal_url,
                "codes": context.codes,
                "uptime_seconds": context.started.until(now).as_secs(),
                "sessions": sessions.len(),
                "online_devices": state.core.online_devices(),
                "unattributed_bytes": state.core.unattributed_bytes(),
                "backend": context.backend.as_ref().map(|link| backend_text(link.down_since())),
            }))
        }
        Request::Clients => match serde_json::to_value(state.core.sessions()) {
            Ok(value) => Reply::Ok(value),
            Err(err) => Reply::Error(format!("internal error: {err}")),
        },
        Request::Usage => match serde_json::to_value(state.live_usage()) {
            Ok(value) => Reply::Ok(value),
            Err(err) => Reply::Error(format!("internal error: {err}")),
        },
        Request::Flows => {
            // What the previous run kept comes first, under its own instance.
            let (instance, connections) = state.meters.flows_for_agent(context.started.0);
            let flows = Flows {
                connections,
                instance: Some(instance),
                flow_idle_ms: Some(context.flow_idle_ms),
            };
            match serde_json::to_value(flows) {
                Ok(value) => Reply::Ok(value),
                Err(err) => Reply::Error(format!("internal error: {err}")),
            }
        }
        Request::Kick { mac } => {
            let actions = state.core.kick(mac, now);
            let kicked = actions
                .iter()
                .filter(|a| matches!(a, Action::Revoke { .. }))
                .count();
            state.apply(actions, now, store);
            state.persist(now);
            if kicked == 0 {
                Reply::Error(format!("no online device has MAC {mac}"))
            } else {
                Reply::Ok(serde_json::json!({ "kicked": kicked }))
            }
        }
        Request::RevokeCode { code } => {
            let actions = state.core.revoke_code(&code, now);
            let cut = actions
                .iter()
                .filter(|a| matches!(a, Action::Revoke { .. }))
                .count();
            state.apply(actions, now, store);
            state.persist(now);
            Reply::Ok(serde_json::json!({ "devices_cut_off": cut }))
        }
    }
}

/// The backend's state as `status` shows it.
fn backend_text(down_since: Option<Millis>) -> String {
    match down_since {
        None => "reachable".to_owned(),
        Some(at) => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(at.0);
            format!(
                "unreachable since {}",
                humantime::format_rfc3339_seconds(at)
            )
        }
    }
}
