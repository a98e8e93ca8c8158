//! The producer WebSocket (contract 2) as a link that heals itself: it connects with a fresh
//! access token in the URL, sends what the outbox holds (asking its owner through an
//! [`OutboxHandle`]), in order, and counts a message delivered only once the server
//! confirmed it ([`window`]); it notices a dead peer (no close frame, packets silently
//! dropped) within `stream.dead_after`, and reconnects with jittered exponential backoff.
//! Unconfirmed messages are sent again on the next connection.

pub mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgeshare_shared::backend::depin::{Framing, ServerMessage, producer_url, redacted};
use edgeshare_shared::retry::Backoff;
use edgeshare_shared::supervisor::stopped;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::auth::StreamAuth;
use crate::metrics::Metrics;
use crate::outbox::{OutboxError, OutboxHandle};
use window::{Liveness, Reconnect, Reply, Window};

/// What the link needs to know.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub ws_url: Url,
    pub framing: Framing,
    pub dead_after: Duration,
    pub max_in_flight: usize,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot get a stream token: {0}")]
    Auth(#[source] edgeshare_shared::backend::BackendError),
    #[error("connecting to {url}: the server refused the access token ({status}: {body})")]
    TokenRefused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tungstenite::Error,
    },
    #[error("connecting to {url}: no answer within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("the stream went silent for {0:?} (no pong, no message): the link is dead")]
    Dead(Duration),
    #[error("the stream broke: {0}")]
    Broken(#[source] tungstenite::Error),
    #[error("the server closed the stream{0}")]
    Closed(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

enum End {
    Shutdown,
    Lost(LinkError),
}

/// The link's task. Runs until `shutdown` turns true; never gives up before.
#[derive(Debug)]
pub struct Link {
    pub settings: LinkSettings,
    pub auth: Arc<StreamAuth>,
    pub outbox: OutboxHandle,
    /// Notified when a message is queued.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Link {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut reconnect = Reconnect::new(self.settings.backoff);
        let mut ever_connected = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let connected = tokio::select! {
                () = stopped(&mut shutdown) => return,
                result = self.connect() => result,
            };
            let error = match connected {
                Ok(ws) => {
                    Metrics::add(&self.metrics.connects, 1);
                    if ever_connected {
                        Metrics::add(&self.metrics.reconnects, 1);
                    }
                    ever_connected = true;
                    self.metrics.connected.store(true, Ordering::Relaxed);
                    tracing::info!(url = %redacted(&self.settings.ws_url), "stream connected");
                    let started = Instant::now();
                    let confirmed = self.metrics.messages_confirmed.load(Ordering::Relaxed);
                    let end = self.session(ws, &mut shutdown).await;
                    self.metrics.connected.store(false, Ordering::Relaxed);
                    if let Err(err) = self.outbox.set_online(false).await {
                        tracing::error!(error = %err, "cannot move waiting messages to the spool");
                    }
                    let progressed =
                        self.metrics.messages_confirmed.load(Ordering::Relaxed) != confirmed;
                    reconnect.ended(progressed, started.elapsed(), self.settings.dead_after);
                    match end {
                        End::Shutdown => return,
                        End::Lost(err) => err,
                    }
                }
                Err(err) => err,
            };
            if matches!(error, LinkError::Dead(_)) {
                Metrics::add(&self.metrics.dead_links, 1);
            }
            if let LinkError::TokenRefused { .. } = error {
                self.auth.access_refused().await;
            }
            let delay = reconnect.next_delay(fastrand::f64());
            tracing::warn!(error = %error, retry_in = ?delay, "stream down; reconnecting");
            self.metrics.set_last_error(&error.to_string());
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Ws, LinkError> {
        let tokens = self.auth.fresh().await.map_err(LinkError::Auth)?;
        let url = producer_url(&self.settings.ws_url, &tokens.access);
        let shown = redacted(&url);
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|source| LinkError::Connect {
                url: shown.clone(),
                source,
            })?;
        let connector = tokio_tungstenite::Connector::Rustls(self.settings.tls.clone());
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Err(_) => Err(LinkError::ConnectTimeout {
                url: shown,
                timeout: self.settings.connect_timeout,
            }),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(response)))
                if matches!(response.status().as_u16(), 401 | 403) =>
            {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).chars().take(200).collect())
                    .unwrap_or_default();
                Err(LinkError::TokenRefused {
                    url: shown,
                    status: response.status().as_u16(),
                    body,
                })
            }
            Ok(Err(source)) => Err(LinkError::Connect { url: shown, source }),
        }
    }

    /// One connection, until it is lost or the daemon stops.
    async fn session(&self, ws: Ws, shutdown: &mut watch::Receiver<bool>) -> End {
        let (mut sink, mut stream) = ws.split();
        let online = match self.outbox.rewind().await {
            Ok(()) => self.outbox.set_online(true).await,
            Err(err) => Err(err),
        };
        if let Err(err) = online {
            return End::Lost(err.into());
        }
        let framing = self.settings.framing;
        let mut window = Window::new(framing, self.settings.max_in_flight);
        let mut live = Liveness::new(self.settings.dead_after, Instant::now());
        loop {
            // Send what may be sent, then a ping if one is needed.
            let mut out = Vec::new();
            if window.room() > 0 {
                let batch = match self.outbox.next_batch(window.room()).await {
                    Ok(batch) => batch,
                    Err(err) => return End::Lost(err.into()),
                };
                for entry in batch {
                    out.push(Message::Text(framing.encode(&entry.reading).into()));
                    window.sent(entry.seq);
                }
            }
            let now = Instant::now();
            if window.wants_ping() || live.ping_due(now) {
                out.push(Message::Ping(window.ping().to_vec().into()));
                live.pinged(now);
            }
            if !out.is_empty() {
                let count = out.iter().filter(|m| m.is_text()).count() as u64;
                let mut items = futures_util::stream::iter(out.into_iter().map(Ok));
                // A blackholed peer stops taking bytes once the socket buffer is full: a
                // write may block only until the peer counts as dead.
                let limit = live.time_left(now);
                match tokio::time::timeout(limit, sink.send_all(&mut items)).await {
                    Err(_) => return End::Lost(LinkError::Dead(self.settings.dead_after)),
                    Ok(Err(err)) => return End::Lost(LinkError::Broken(err)),
                    Ok(Ok(())) => Metrics::add(&self.metrics.messages_sent, count),
                }
            }
            let can_send = window.room() > 0
                && match self.outbox.has_unsent().await {
                    Ok(unsent) => unsent,
                    Err(err) => return End::Lost(err.into()),
                };
            let check = tokio::time::Instant::from_std(live.next_check());
            tokio::select! {
                () = stopped(shutdown) => {
                    // Best effort: tell the server we are going; unconfirmed messages stay
                    // in the spool for the next start.
                    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
                    return End::Shutdown;
                }
                () = self.wake.notified(), if !can_send => {}
                () = std::future::ready(()), if can_send => {}
                () = tokio::time::sleep_until(check) => {
                    if live.is_dead(Instant::now()) {
                        return End::Lost(LinkError::Dead(self.settings.dead_after));
                    }
                }
                message = stream.next() => {
                    live.received(Instant::now());
                    let reply = match message {
                        None => return End::Lost(LinkError::Closed(String::new())),
                        Some(Err(err)) => return End::Lost(LinkError::Broken(err)),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame
                                .map(|f| format!(" ({}: {})", f.code, f.reason))
                                .unwrap_or_default();
                            return End::Lost(LinkError::Closed(why));
                        }
                        Some(Ok(Message::Pong(payload))) => window.on_pong(&payload),
                        Some(Ok(Message::Text(text))) => {
                            window.on_message(ServerMessage::parse(text.as_str()))
                        }
                        Some(Ok(_)) => Reply::Nothing,
                    };
                    if let Err(err) = self.apply(reply).await {
                        return End::Lost(err);
                    }
                }
            }
        }
    }

    async fn apply(&self, reply: Reply) -> Result<(), LinkError> {
        let confirmed = match reply {
            Reply::Nothing => return Ok(()),
            Reply::Confirmed(seq) => seq,
            Reply::Refused { seq, error } => {
                Metrics::add(&self.metrics.messages_refused, 1);
                tracing::warn!(seq, error = %error, "the server refused a message; it is not sent again");
                self.metrics
                    .set_last_error(&format!("the server refused a message: {error}"));
                seq
            }
            Reply::Error(error) => {
                Metrics::add(&self.metrics.messages_refused, 1);
                tracing::warn!(error = %error, "the server reported an error on the stream");
                self.metrics
                    .set_last_error(&format!("the server reported an error: {error}"));
                return Ok(());
            }
        };
        let (newly, stats) = self.outbox.confirm_through(confirmed).await?;
        Metrics::add(&self.metrics.messages_confirmed, newly);
        self.metrics.set_outbox(stats);
        Ok(())
    }
}
