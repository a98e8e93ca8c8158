//! `edgeshare-agent run`: every task of the daemon beside each other in one [`Supervisor`]
//! (shared with the gateway), stopped together and joined within [`STOP_WITHIN`] on SIGTERM
//! or SIGINT, with the spool flushed to disk last.
//!
//! Tasks: the metrics endpoint (each of its connections a task too); with `[stream]`: the
//! link, its token refresher, each source, the gateway usage source and the spool's fsync
//! tick; with `[telemetry]`: the flows poster; with `[backend]`: the usage reporter. Further
//! tasks are spawned beside them with [`Supervisor::spawn`]. Beside the tasks, the outbox's own thread ([`OutboxOwner`]) does
//! the spool's disk I/O; it is closed (everything flushed) and joined after the tasks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::crowd::CrowdClient;
use edgeshare_shared::backend::depin::DepinAuth;
use edgeshare_shared::backend::telemetry::TelemetryClient;
use edgeshare_shared::supervisor::{Supervisor, stopped};
use tokio::sync::{Notify, watch};

use crate::auth::StreamAuth;
use crate::config::AgentConfig;
use crate::link::{Link, LinkSettings};
use crate::metrics::{self, Metrics};
use crate::outbox::{Outbox, OutboxHandle, OutboxOwner};
use crate::sources::{self, Sink};
use crate::spool::SpoolLimits;
use crate::telemetry::TelemetrySettings;
use crate::usage::{ReporterSettings, run_reporter};

/// Every task is given this long to finish after the shutdown signal, then aborted. Short,
/// because stopping early loses nothing: the usage cursor is saved before each report is
/// sent (a report cut off in flight is read back at the next start), and the spool is
/// flushed after the tasks end. The whole stop stays under a second.
pub const STOP_WITHIN: Duration = Duration::from_millis(500);

/// How often the spool's appends and head are made durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until `signal` resolves. `ready` is called once everything listens.
pub async fn run(
    config: AgentConfig,
    signal: impl Future<Output = ()>,
    ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let listener = metrics::bind(config.metrics.listen).await?;
    let metrics_addr = listener
        .local_addr()
        .context("reading the metrics address")?;
    let mut supervisor = Supervisor::new(STOP_WITHIN);

    let (serve_metrics, connections) = (metrics.clone(), supervisor.spawner());
    supervisor.spawn("metrics", async move {
        metrics::serve(listener, serve_metrics, connections).await;
        Ok(())
    });

    let http = HttpClient::new(&config.http).context("setting up the HTTP client")?;
    if let Some(telemetry) = &config.telemetry {
        let client = Arc::new(TelemetryClient::new(
            &http,
            &telemetry.url,
            telemetry.email.clone(),
            telemetry.password.clone(),
            telemetry.tenant.clone(),
        ));
        let settings = TelemetrySettings {
            control_socket: config.gateway.control_socket.clone(),
            interval: telemetry.interval,
            snapshot_interval: telemetry.snapshot_interval,
            max_flows: telemetry.max_flows,
            state_file: config.state.dir.join(crate::telemetry::STATE_FILE),
            refused: crate::telemetry::REFUSED_BACKOFF,
        };
        let (stop, telemetry_metrics) = (supervisor.stopping(), metrics.clone());
        supervisor.spawn("telemetry", async move {
            crate::telemetry::run(settings, client, telemetry_metrics, stop).await;
            Ok(())
        });
    }

    if let Some(settings) = ReporterSettings::from_config(&config) {
        let backend = config
            .backend
            .as_ref()
            .context("usage reports need [backend]")?;
        let client = CrowdClient::new(&http, backend);
        let mut stop = supervisor.stopping();
        let usage_metrics = metrics.clone();
        supervisor.spawn("usage reports", async move {
            let shutdown = async move {
                stopped(&mut stop).await;
            };
            run_reporter(&settings, &client, &usage_metrics, shutdown)
                .await
                .context("reporting the usage ledger")
        });
    }

    let mut outbox_owner = None;
    if let Some(stream) = &config.stream {
        metrics
            .stream_configured
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let dir = config.spool_dir();
        if let Some(legacy) = config.legacy_spool_dir() {
            match move_legacy_spool(&legacy, &dir) {
                Ok(true) => tracing::info!(
                    from = %legacy.display(),
                    to = %dir.display(),
                    "moved the spool of an earlier version to its documented place"
                ),
                Ok(false) => {}
                Err(err) => tracing::warn!(
                    from = %legacy.display(),
                    to = %dir.display(),
                    error = %err,
                    "cannot move the spool of an earlier version; its messages wait there"
                ),
            }
        }
        let (outbox, recovered) =
            Outbox::open(&dir, SpoolLimits::with_max_bytes(config.spool.max_bytes))
                .with_context(|| format!("opening the spool in {} (spool.dir)", dir.display()))?;
        if recovered.entries > 0 {
            tracing::info!(
                messages = recovered.entries,
                dir = %dir.display(),
                "spool holds messages from before; they go first"
            );
        }
        metrics.set_outbox(outbox.stats());
        let owner = OutboxOwner::spawn(outbox).context("starting the outbox's thread")?;
        let outbox = owner.handle();
        outbox_owner = Some(owner);
        let wake = Arc::new(Notify::new());
        let tls = edgeshare_shared::tls::client_config(config.http.ca_file.as_deref())
            .context("setting up TLS for the stream (http.ca_file)")?;
        let auth = Arc::new(StreamAuth::new(
            DepinAuth::new(
                &http,
                &stream.auth_url,
                stream.paths.clone(),
                stream.username.clone(),
                stream.password.clone(),
            ),
            metrics.clone(),
        ));

        let stop = supervisor.stopping();
        let refresher = auth.clone();
        supervisor.spawn("token refresh", async move {
            refresher.keep_fresh(stop).await;
            Ok(())
        });

        let link = Link {
            settings: LinkSettings {
                ws_url: stream.ws_url.clone(),
                framing: stream.framing,
                dead_after: stream.dead_after,
                max_in_flight: stream.max_in_flight,
                backoff: stream.backoff,
                connect_timeout: config.http.connect_timeout,
                tls: Arc::new(tls),
            },
            auth,
            outbox: outbox.clone(),
            wake: wake.clone(),
            metrics: metrics.clone(),
        };
        let stop = supervisor.stopping();
        supervisor.spawn("stream", async move {
            link.run(stop).await;
            Ok(())
        });

        let sink = Sink {
            device_id: config.device.id.clone(),
            outbox: outbox.clone(),
            wake,
            metrics: metrics.clone(),
        };
        for source in config.sources() {
            let (sink, stop) = (sink.clone(), supervisor.stopping());
            supervisor.spawn("source", async move {
                sources::run(source, sink, stop).await;
                Ok(())
            });
        }
        let (gateway, stop, gateway_sink) =
            (config.gateway.clone(), supervisor.stopping(), sink.clone());
        supervisor.spawn("gateway usage", async move {
            sources::run_gateway(gateway.control_socket, gateway.interval, gateway_sink, stop)
                .await;
            Ok(())
        });

        let (stop, syncing, sync_metrics) =
            (supervisor.stopping(), outbox.clone(), metrics.clone());
        supervisor.spawn("spool sync", sync_spool(syncing, sync_metrics, stop));
    } else {
        tracing::info!("no [stream] configured: no sensor data is streamed");
    }

    tracing::info!(metrics = %metrics_addr, "agent running");
    // Under systemd (Type=notify): ready once every task runs, then the watchdog is petted
    // from the supervisor's own runtime, so a wedged runtime gets the agent restarted.
    let notifier = edgeshare_shared::systemd::Notifier::from_env()
        .context("reading NOTIFY_SOCKET (systemd)")?;
    if let Err(err) = notifier.ready("running") {
        tracing::warn!(error = %err, "cannot tell systemd the agent is ready");
    }
    if let Some(timeout) = notifier.watchdog_timeout() {
        let mut stop = supervisor.stopping();
        let pets = notifier.clone();
        supervisor.spawn("watchdog", async move {
            let mut every = tokio::time::interval(timeout / 2);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        if let Err(err) = pets.watchdog() {
                            tracing::warn!(error = %err, "cannot pet the systemd watchdog");
                        }
                    }
                    () = stopped(&mut stop) => return Ok(()),
                }
            }
        });
    }
    ready(metrics_addr);
    supervisor.run_until(signal).await;
    if let Err(err) = notifier.stopping("stopping: flushing the spool") {
        tracing::warn!(error = %err, "cannot tell systemd the agent is stopping");
    }

    if let Some(owner) = outbox_owner {
        let flushed = owner.close().await.context("flushing the spool")?;
        tracing::info!(
            waiting = flushed.depth,
            "spool flushed; waiting messages go first at the next start"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Makes spool appends durable every [`SYNC_EVERY`] (batched fsyncs spare the SD card),
/// and keeps the spool's figures in the metrics fresh.
async fn sync_spool(
    outbox: OutboxHandle,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(SYNC_EVERY);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
            _ = ticker.tick() => {}
        }
        match outbox.sync().await {
            Ok(stats) => metrics.set_outbox(stats),
            Err(err) => {
                tracing::error!(error = %err, "cannot sync the spool");
                metrics.set_last_error(&err.to_string());
            }
        }
    }
}

/// Moves a spool left at `legacy` by an earlier version to `dir`, so its messages are sent,
/// unless `dir` exists already. True if it moved one.
fn move_legacy_spool(legacy: &std::path::Path, dir: &std::path::Path) -> std::io::Result<bool> {
    if !legacy.is_dir() || dir.exists() {
        return Ok(false);
    }
    std::fs::rename(legacy, dir)?;
    // The folder that held it (`agent` in state.dir) is left over if nothing else is in it.
    if let Some(parent) = legacy.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(true)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    fn config(extra: &str) -> AgentConfig {
        let text = format!(
            "[device]\nid = \"d\"\n\n[stream]\nauth_url = \"http://b\"\nws_url = \"ws://b/producer\"\nusername = \"u\"\npassword = \"p\"\n\n[state]\ndir = \"/var/lib/edgeshare/agent\"\n{extra}"
        );
        edgeshare_shared::config::parse(&text, "agent.toml", &[]).expect("test config")
    }

    #[test]
    fn the_spool_is_where_the_example_config_says() {
        let packaged = config("");
        assert_eq!(
            packaged.spool_dir(),
            std::path::Path::new("/var/lib/edgeshare/agent/spool")
        );
        assert_eq!(
            packaged.legacy_spool_dir().as_deref(),
            Some(std::path::Path::new("/var/lib/edgeshare/agent/agent/spool"))
        );
        let chosen = config("[spool]\ndir = \"/srv/spool\"\n");
        assert_eq!(chosen.spool_dir(), std::path::Path::new("/srv/spool"));
        assert_eq!(
            chosen.legacy_spool_dir(),
            None,
            "a chosen folder is left alone"
        );
    }

    #[test]
    fn an_earlier_versions_spool_is_moved_once_and_never_over_a_newer_one() {
        let state = tempfile::tempdir().unwrap();
        let legacy = state.path().join("agent/spool");
        let dir = state.path().join("spool");
        assert!(
            !move_legacy_spool(&legacy, &dir).unwrap(),
            "nothing to move"
        );

        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("seg"), b"waiting").unwrap();
        assert!(move_legacy_spool(&legacy, &dir).unwrap());
        assert_eq!(std::fs::read(dir.join("seg")).unwrap(), b"waiting");
        assert!(
            !state.path().join("agent").exists(),
            "the empty folder is gone"
        );

        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("seg"), b"older").unwrap();
        assert!(!move_legacy_spool(&legacy, &dir).unwrap());
        assert_eq!(std::fs::read(dir.join("seg")).unwrap(), b"waiting", "kept");
    }
}
