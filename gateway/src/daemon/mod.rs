//! `edgeshare-gateway run`: the daemon around the pure session core. Where things are:
//! - `owner.rs`: the one thread that owns the state; everything else sends it messages.
//! - `state.rs`: the state, made of the pure core and owned parts with private fields (the
//!   kernel as known, [`crate::reconcile::Kernel`]; the meters, `meter.rs`; the books,
//!   `persist.rs`; the LAN's neighbour table, `lan.rs`), and the accounting glue (kernel
//!   counters in, the core's actions out); `enforce.rs`: plans the kernel's changes with
//!   [`crate::reconcile`] and applies them; `persist.rs`: `sessions.json`, the usage ledger
//!   and the rebuild when the saved state is lost.
//! - `servers.rs`: the portal's gate, the control socket, the metrics endpoint;
//!   `dashboard.rs`: what the provider's dashboard asks of the daemon.
//! - `garden.rs`: the walled garden's hosts; `meter.rs`: the capture meter, its audit, the
//!   flows kept for the agent and the live rates; `lan.rs`: the neighbour table and guard.
//! - here: [`run`], which wires them together as tasks of one `Supervisor` (shared with the
//!   agent), and what they share. At SIGTERM or SIGINT, or when a server fails, every task
//!   and every connection is stopped and joined within [`STOP_WITHIN`]; the owner's thread
//!   stops last, saving the state.
//!
//! The state is kept on disk so that a restart or `kill -9` keeps online clients online with
//! the quota they had, and the kernel's table outlives the daemon.

mod dashboard;
mod enforce;
mod garden;
mod handover;
mod lan;
mod meter;
mod owner;
mod persist;
mod servers;
mod state;
mod watch;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::crowd::CrowdClient;
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::ledger::{LedgerLimits, LedgerWriter};
use edgeshare_shared::supervisor::{Supervisor, stopped};

use crate::code_book::CodeBook;
use crate::codes::{BackendCodes, CodeStore};
use crate::config::{CodeSource, GatewayConfig};
use crate::control;
use crate::core::Policy;
use crate::cutoff::Cutoff;
use crate::firewall::{Firewall, GardenEntry, NetlinkFirewall};
use crate::neighbours::{NeighbourTable, NeighbourWatch, Reach};
use crate::net::{Millis, interface_ipv4, local_addresses};
use crate::portal::{self, PortalSettings};
use dashboard::DaemonSource;
use garden::{garden_entries, resolve_garden, resolve_garden_later};
use lan::Lan;
use meter::start_capture;
use owner::{Context, Owner};
use persist::load_state;
use servers::{PortalGate, bind_portal, serve_control, serve_metrics};
use state::State;

/// How often kernel counters are read and the core ticks.
const TICK: Duration = Duration::from_secs(1);

/// How long every task together gets after SIGTERM or SIGINT to finish (a portal request in
/// flight, a login being saved) before the rest are aborted and joined; then the state's
/// owner saves the sessions. Well within systemd's `TimeoutStopSec` (15 s).
const STOP_WITHIN: Duration = Duration::from_secs(3);

/// Where codes are checked.
#[derive(Debug)]
enum Codes {
    Local(CodeStore),
    Backend(BackendCodes),
}

/// The name of a session's kernel quota: derived from the code so it is the same after a
/// restart, but not the code itself (the ruleset is readable to anyone with CAP_NET_ADMIN).
fn quota_id(code: &AccessCode) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(code.as_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A session's id in the ledger, logs and `usage`: its quota id and start, not the code.
fn session_id(code: &AccessCode, started_at: Millis) -> String {
    format!("{}-{}", quota_id(code), started_at.0)
}

/// The start of the session a [`session_id`] names.
fn session_start(id: &str) -> Option<Millis> {
    Some(Millis(id.rsplit_once('-')?.1.parse().ok()?))
}

fn policy(config: &GatewayConfig) -> Policy {
    Policy {
        devices_per_code: config.session.devices_per_code,
        idle_timeout: (!config.session.idle_timeout.is_zero())
            .then_some(config.session.idle_timeout),
        max_session: config.session.max_duration,
    }
}

/// The firewall for this configuration with the walled garden `garden`.
fn firewall_for(config: &GatewayConfig, garden: Vec<GardenEntry>) -> Box<dyn Firewall> {
    Box::new(NetlinkFirewall::new(config.firewall_config(garden)))
}

/// The LAN's neighbour table, where devices' other addresses are learned. Without it the
/// gateway still works, each device on the address it logged in with.
fn open_neighbour_table(lan: &str) -> Option<(NeighbourTable, u32)> {
    let opened = NeighbourTable::open().and_then(|table| {
        let index = table.interface_index(lan)?;
        Ok((table, index))
    });
    opened
        .inspect_err(|err| {
            tracing::warn!(error = %err, "cannot read the neighbour table of lan.interface {lan}: devices are let through on the address they logged in with only (no IPv6 besides it)");
        })
        .ok()
}

/// How long the neighbour watcher waits after handing the owner a batch: a claimant's flood
/// of advertisements costs the owner 100 batches a second at most, and a claim waits this
/// long at most.
const NEIGHBOUR_BATCH: Duration = Duration::from_millis(10);

/// Hands the changes of the LAN's neighbour entries to the owner as the kernel tells them,
/// in batches, until the stop, so that a claim on an online device's address is turned down
/// at once (see `Guard::notified`); without it, at the next tick.
async fn watch_neighbours(
    mut watch: NeighbourWatch,
    owner: Owner,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let changed = tokio::select! {
            () = stopped(&mut stop) => return,
            changed = watch.changed() => changed,
        };
        let mut batch = match changed {
            Ok(batch) => batch,
            // Notifications lost to a flood (ENOBUFS): the tick reads the table.
            Err(err) => {
                tracing::debug!(error = %err, "neighbour notifications lost");
                continue;
            }
        };
        while let Ok(more) = watch.waiting() {
            if more.is_empty() {
                break;
            }
            batch.extend(more);
        }
        // A claim (an advertisement or ARP taken) leaves the entry STALE or REACHABLE; the
        // kernel's own probing and failures are the ticks' to read.
        batch.retain(|entry| entry.reach == Reach::Answered);
        if batch.is_empty() {
            continue;
        }
        if !owner.neighbours(batch) {
            return;
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(NEIGHBOUR_BATCH) => {}
        }
    }
}

/// The dashboard's listener, source and settings, if a password turns it on. A listen
/// address on the LAN is refused: the dashboard is the provider's, not the consumers'.
async fn start_dashboard(
    config: &GatewayConfig,
    codes: &Codes,
    owner: &Owner,
    portal_url: &str,
    ledger_dir: &std::path::Path,
) -> anyhow::Result<
    Option<(
        tokio::net::TcpListener,
        DaemonSource,
        crate::dashboard::Settings,
    )>,
> {
    let settings = &config.dashboard;
    if settings.password.is_empty() {
        tracing::info!("no dashboard.password: the provider's dashboard is off");
        return Ok(None);
    }
    let listen = settings.listen;
    let lan = crate::net::interface_networks(&config.lan.interface)?;
    if let Some(problem) = settings.listen_problem(&config.lan.interface, &lan) {
        anyhow::bail!("dashboard.listen: {problem}");
    }
    let book = match codes {
        Codes::Local(store) => CodeBook::Local(store.clone()),
        Codes::Backend(backend) => CodeBook::Backend(backend.client()),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding dashboard.listen {listen}"))?;
    tracing::info!(%listen, "provider dashboard on http://{listen}/");
    let source = DaemonSource::new(
        owner.clone(),
        book,
        ledger_dir.to_owned(),
        settings.agent_metrics,
    );
    let settings = crate::dashboard::Settings {
        password: settings.password.clone(),
        provider: config
            .portal
            .brand
            .name
            .clone()
            .unwrap_or_else(|| "edgeshare".to_owned()),
        ssid: config.portal.ssid.clone(),
        portal_url: portal_url.to_owned(),
        lan,
    };
    Ok(Some((listener, source, settings)))
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let notifier = edgeshare_shared::systemd::Notifier::from_env()?;
    let state_dir = config.state.dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state.dir {}", state_dir.display()))?;
    let lan_ip = interface_ipv4(&config.lan.interface)?;
    let portal_url = format!("http://{lan_ip}:{}/", config.portal.port);
    crate::neighbours::limits::fit_and_log(config.lan.max_clients);

    let codes = match config.codes.source {
        CodeSource::Local => Codes::Local(CodeStore::new(&state_dir)),
        CodeSource::Backend => {
            let backend = config
                .backend
                .as_ref()
                .context("codes.source = \"backend\" needs a [backend] section")?;
            let http = HttpClient::new(&config.http)?;
            if let Some(warning) = config.codes.deprecation() {
                tracing::warn!("{warning}");
            }
            Codes::Backend(BackendCodes::new(
                CrowdClient::new(&http, backend),
                format!("{} at {}", backend.email, backend.url),
                config.codes.expiry_margin,
                config.codes.serve_other_accounts,
                &state_dir,
            ))
        }
    };

    // A host that does not resolve yet (no DNS at boot) does not stop the gateway: it joins
    // the garden later (see `resolve_garden_later`).
    let (mut garden, garden_hosts) = garden_entries(&config)?;
    let (found, unresolved) = resolve_garden(&garden_hosts).await;
    garden.extend(found);
    let mut firewall = firewall_for(&config, garden.clone());
    firewall
        .install()
        .context("installing the nftables table")?;
    // Only now: forwarding is never on without the table (at boot edgeshare-portal-only put
    // it in place already; run by hand, this install did).
    crate::forwarding::turn_on_and_log(config.wan.interface.as_deref())?;

    let sessions_file = state_dir.join("sessions.json");
    let now = Millis::now();
    let saved = load_state(&sessions_file)?;
    let rebuild = saved.is_none();
    let (mut state, actions) =
        State::restored(policy(&config), saved, firewall, sessions_file, now);
    state
        .meters
        .keep_handover(handover::take(&state_dir.join(handover::FILE)));
    // Without the list the gateway's own connections get probed too: a few stray segments.
    let own = local_addresses().unwrap_or_default();
    state.cutoff = match Cutoff::open(own) {
        Ok(cutoff) => Some(cutoff),
        Err(err) => {
            tracing::warn!(error = %err, "no raw socket (CAP_NET_RAW?): the connections of a client cut off end at their next segment, not at once");
            None
        }
    };
    let group = match &config.control.group {
        Some(name) => Some(
            control::group_id(name)
                .with_context(|| format!("control.group: no group \"{name}\""))?,
        ),
        None => None,
    };
    let ledger_dir = state_dir.join("ledger");
    let mut ledger = LedgerWriter::open(&ledger_dir, LedgerLimits::default())
        .with_context(|| format!("opening the usage ledger in {}", ledger_dir.display()))?;
    if let Some(gid) = group {
        ledger
            .share_with_group(gid)
            .context("letting control.group read the usage ledger")?;
    }
    state.books.with_ledger(ledger);
    state.lan = Lan::opened(open_neighbour_table(&config.lan.interface));
    let store = match &codes {
        Codes::Local(store) => Some(store.clone()),
        Codes::Backend(_) => None,
    };
    if rebuild {
        state.rebuild_from_ledger(now, store.as_ref());
    }
    state.resume(actions, now, store.as_ref());
    if let Some(store) = &store {
        state.sync_store(store, now);
    }
    // Logged by `save`; the ticks try again.
    let _ = state.save(now);
    tracing::info!(online = state.core.allowed().len(), "sessions restored");
    // Started after the resume: the bytes the kernel counted while the daemon was down have
    // no capture to compare with.
    let (owner, inbox) = Owner::new();
    let mut supervisor = Supervisor::new(STOP_WITHIN);
    if let Some(lan) = state.lan.index() {
        match NeighbourWatch::open(lan) {
            Ok(watch) => {
                let (owner, stop) = (owner.clone(), supervisor.stopping());
                supervisor.spawn("neighbour watch", async move {
                    watch_neighbours(watch, owner, stop).await;
                    Ok(())
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the LAN's neighbour table: a device claiming an online device's address is turned down at the next tick, not at once");
            }
        }
    }
    let reports = owner.clone();
    if let Some(capture) = start_capture(&config, move |report| reports.capture(report)) {
        state.meters.capture_started(capture, &config.lan.interface);
        state.meters_follow_clients();
    }
    let context = Context {
        lan: config.lan.interface.clone(),
        portal_url: portal_url.clone(),
        codes: match codes {
            Codes::Local(_) => "local",
            Codes::Backend(_) => "backend",
        },
        started: now,
        flow_idle_ms: u64::try_from(config.capture.flow_idle.as_millis()).unwrap_or(u64::MAX),
        store,
        backend: match &codes {
            Codes::Backend(backend) => Some(backend.link()),
            Codes::Local(_) => None,
        },
        notifier: notifier.clone(),
    };
    let owner_thread = inbox
        .start(state, context)
        .context("starting the state owner's thread")?;
    let codes = Arc::new(codes);

    let portal_listener = bind_portal(&config.lan.interface, lan_ip, config.portal.port)?;
    let control_listener = control::bind(&config.control.socket, group)
        .with_context(|| format!("binding control.socket {}", config.control.socket.display()))?;

    let tasks = supervisor.spawner();
    if !config.metrics.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let (owner, tasks) = (owner.clone(), tasks.clone());
        supervisor.spawn_essential("metrics endpoint", async move {
            serve_metrics(listener, owner, tasks).await;
            Ok(())
        });
    }
    if let Some((listener, source, settings)) =
        start_dashboard(&config, &codes, &owner, &portal_url, &ledger_dir).await?
    {
        let tasks = tasks.clone();
        supervisor.spawn_essential("dashboard", async move {
            crate::dashboard::serve(listener, source, settings, tasks).await;
            Ok(())
        });
    }
    let settings = PortalSettings {
        url: portal_url.clone(),
        per_device_attempts: config.portal.attempts_per_device,
        global_attempts: config.portal.attempts_global,
        window: Duration::from_secs(60),
        look: portal::Look::from_config(&config.portal),
    };
    if let Codes::Backend(_) = &*codes {
        let watching = watch::watch_backend(
            Arc::clone(&codes),
            owner.clone(),
            config.codes.recheck_every,
            config.codes.list_refresh,
            supervisor.stopping(),
        );
        supervisor.spawn("code checks", async move {
            watching.await;
            Ok(())
        });
    }
    let gate = Arc::new(PortalGate {
        owner: owner.clone(),
        codes,
        margin: config.codes.expiry_margin,
    });
    let portal_tasks = tasks.clone();
    supervisor.spawn_essential("portal", async move {
        portal::serve(portal_listener, gate, settings, portal_tasks)
            .await
            .context("serving the portal")
    });
    if !unresolved.is_empty() {
        // Ends by itself once every host resolved.
        let resolving = resolve_garden_later(
            config.clone(),
            garden,
            unresolved,
            owner.clone(),
            supervisor.stopping(),
        );
        tasks.spawn("walled garden", resolving);
    }
    let control_owner = owner.clone();
    supervisor.spawn_essential("control socket", async move {
        serve_control(control_listener, control_owner, tasks).await;
        Ok(())
    });
    tracing::info!(portal = %portal_url, lan = %config.lan.interface, "gateway running");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Ready only now: the table is installed, sessions are restored, the portal and the
    // control socket listen, and a SIGTERM is handled (systemd may send one right away).
    let ready = format!("portal {portal_url} on {}", config.lan.interface);
    if let Err(err) = notifier.ready(&ready) {
        tracing::warn!(error = %err, "cannot tell systemd that the gateway is ready");
    }
    let tell_stopping = || {
        if let Err(err) = notifier.stopping("stopping: saving the sessions") {
            tracing::warn!(error = %err, "cannot tell systemd that the gateway is stopping");
        }
    };
    let signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tell_stopping();
    };
    let stopped = supervisor.run_until(signal).await;
    if stopped.failed.is_some() {
        tell_stopping();
    }
    // Last, once no task can ask it anything: the last counters are read and the sessions
    // saved.
    owner.stop(config.firewall.remove_on_exit).await;
    if owner_thread.join().is_err() {
        tracing::error!("the state owner's thread panicked while stopping");
    }
    std::fs::remove_file(&config.control.socket).ok();
    match stopped.failed {
        Some(task) => anyhow::bail!(
            "the gateway's {task} stopped working, so the gateway stopped (the sessions are saved; the log above says why)"
        ),
        None => Ok(()),
    }
}
