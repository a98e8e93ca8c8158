//! A stand-in for the three central backends that edgeshare talks to, for tests and the local
//! demo only. It is never packaged.
//!
//! One listener serves all three wire contracts of `shared/contracts/backend-api.md`, told apart
//! by path:
//! - the crowdsourced-internet backend (seed 000) under `/api/...`,
//! - the DePin auth service and producer WebSocket (seed 002) at `/login`, `/refresh`,
//!   `/register` (also under `/depin/api/auth/...`, because `/api/auth/login` belongs to
//!   contract 1) and `/producer`,
//! - the connection-telemetry backend (seed 001) at `/auth/...` and `/api/connections`,
//!   `/api/metrics`.
//!
//! It reproduces the backends' weak spots on purpose (lost updates, no idempotency, string
//! concatenation of `bytesShared`, ...) so that the real clients can be tested against them, and
//! adds test controls: recorded requests, injected faults ([`Fault`]), refused connections,
//! revoked tokens and dropped WebSockets, both as a Rust API ([`Standin`]) and over HTTP under
//! `/__standin/`.
//!
//! A DePin client pointed at the stand-in uses auth paths `/login`, `/refresh`, `/register` (or
//! `/depin/api/auth/...`) and `ws://HOST:PORT/producer`: the real service has them on other
//! ports, so the client's paths and URLs must be configurable.
//!
//! The HTTP controls (never recorded, never faulted):
//! - `GET /__standin/received`, `GET /__standin/ws-messages`: what was received, oldest first.
//! - `GET|POST|DELETE /__standin/faults`; POST takes `{"path_prefix": "/api/gateway", "kind":
//!   "status500" | "delay_before" | "delay_after" | "apply_then_drop" | "crash_between_saves",
//!   "delay_ms": 3000, "times": 1}` (`path_prefix` defaults to every path, `times` to until
//!   cleared; `crash_between_saves` only ever matches `POST /api/gateway/report-usage`, see
//!   [`FaultKind::CrashBetweenSaves`]).
//! - `POST /__standin/expire-tokens`, `POST /__standin/drop-websockets`.
//! - `POST /__standin/refuse-connections {"for_ms": 2000}`: answers, then refuses connections
//!   for that long (over HTTP nobody could ask to accept again).
//! - `GET /__standin/codes`, `/codes/{code}`, `/users/{email}`, `/connections/{tenant}`,
//!   `/snapshots/{tenant}`, `/state` (everything at once). A user shows what the per-account
//!   credit race overwrote: `lostPoints`, `lostBytesShared`, `lostBytesConsumed`.
//! - `DELETE /__standin/users/{email}` (contract 1, exact email): deletes the user; its tokens
//!   then answer 401 `Invalid user`.
//!
//! It does not persist anything (all state is in memory), does not hash passwords, and does not
//! depend on `edgeshare-shared`: its wire types are written independently from the contract, so
//! that the shared client is tested against a second reading of it.
#![forbid(unsafe_code)]

mod control;
mod crowd;
mod depin;
mod faults;
mod jwt;
mod telemetry;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

pub use crowd::{CodeState, UserState};
pub use depin::{ReceivedWsMessage, WsFraming};
pub use faults::{Fault, FaultKind};

/// Alphabet of access codes: `A-Z` without `I` and `O`, and `2-9` (contract 1).
pub const CODE_ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Length of an access code.
pub const CODE_LEN: usize = 8;

/// Paths of the PEM files for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How the stand-in behaves. [`Default`] gives the values of the real services.
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// Codes to seed for the provider (8 characters of [`CODE_ALPHABET`]); empty means three
    /// random ones. Each seed code is 500 MB, valid 24 h (codes made over the API without
    /// `expireHours` never expire).
    pub seed_codes: Vec<String>,
    /// Time between reading `remainingMB` and writing it back in report-usage: two reports on
    /// one code within this window lose an update, as the real read-modify-write does.
    pub report_race_window: Duration,
    /// Time between reading the code owner's user record (`points`, `bytesShared`) and the
    /// consumer's (`bytesConsumed`) and saving them in report-usage's second save: two reports
    /// crediting one account within this window lose an update (for different codes too), as
    /// the real per-account read-modify-write does.
    pub credit_race_window: Duration,
    /// How long a code past its `expireAt` answers 400 `Code expired` before it is deleted
    /// (404), like the real database's TTL index.
    pub expired_code_ttl: Duration,
    /// Contract 1 login token lifetime (7 days).
    pub login_token_ttl: Duration,
    /// Contract 2 access token lifetime (1 hour).
    pub access_token_ttl: Duration,
    /// Contract 2 refresh token lifetime (7 days).
    pub refresh_token_ttl: Duration,
    /// Contract 3 user (sign-in) token lifetime (1 day).
    pub signin_token_ttl: Duration,
    /// Contract 3 client token lifetime (12 hours).
    pub client_token_ttl: Duration,
    /// HS256 secret of every token issued.
    pub jwt_secret: String,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsFiles>,
}

impl Default for StandinConfig {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            seed_codes: Vec::new(),
            report_race_window: Duration::from_millis(5),
            credit_race_window: Duration::from_millis(5),
            expired_code_ttl: Duration::from_secs(60),
            login_token_ttl: Duration::from_secs(7 * 24 * HOUR),
            access_token_ttl: Duration::from_secs(HOUR),
            refresh_token_ttl: Duration::from_secs(7 * 24 * HOUR),
            signin_token_ttl: Duration::from_secs(24 * HOUR),
            client_token_ttl: Duration::from_secs(12 * HOUR),
            jwt_secret: "edgeshare-standin-secret".to_owned(),
            tls: None,
        }
    }
}

/// One HTTP request as the stand-in received it (control requests under `/__standin/` are not
/// recorded).
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Header names are lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; a body that is not JSON is a JSON string of its text (lossy
    /// UTF-8); an empty body is `null`.
    pub body: Value,
    /// The status answered; `None` while the request is in progress or when no reply was sent
    /// ([`FaultKind::ApplyThenDrop`], [`FaultKind::CrashBetweenSaves`], a dropped connection).
    pub status: Option<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl ReceivedRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) config: StandinConfig,
    pub(crate) jwt: jwt::Jwt,
    pub(crate) crowd: Mutex<crowd::Db>,
    pub(crate) depin: Mutex<depin::Db>,
    pub(crate) telemetry: Mutex<telemetry::Db>,
    pub(crate) faults: Mutex<Vec<Fault>>,
    pub(crate) received: Mutex<Vec<ReceivedRequest>>,
    pub(crate) ws_messages: Mutex<Vec<ReceivedWsMessage>>,
    /// Bumped to make every open producer socket drop its connection.
    pub(crate) ws_drop: watch::Sender<u64>,
    pub(crate) ws_open: AtomicUsize,
    /// To the accept loop.
    pub(crate) commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn drop_websockets(&self) {
        self.ws_drop.send_modify(|generation| *generation += 1);
    }
}

/// Locks a mutex, ignoring poisoning: a panicked handler must not take the stand-in down, and
/// every critical section leaves the state consistent before it can panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn ms_to_datetime(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats like JavaScript's `Date.prototype.toISOString()`: `2026-11-22T12:00:00.000Z`.
pub(crate) fn iso_ms(ms: i64) -> String {
    let t = ms_to_datetime(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A JSON number as JavaScript would print it: integral values without a fraction.
pub(crate) fn js_num(x: f64) -> Value {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    if x.is_finite() && x.fract() == 0.0 && x.abs() <= MAX_SAFE {
        // Exact: integral and within the safe range.
        #[allow(clippy::cast_possible_truncation)]
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// A random lower-case hex string, for ids shaped like MongoDB ObjectIds or UUIDs.
pub(crate) fn hex_id(len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len)
        .map(|_| char::from(HEX[fastrand::usize(..HEX.len())]))
        .collect()
}

/// An error reply in the shape all three backends use: `{"error": "<text>"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub(crate) fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden")
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// A JSON request body read the way Express's `express.json()` reads it: a request that is not
/// `application/json` (or `+json`) or has an empty body gives `{}`, so the handler answers
/// "missing fields"; malformed JSON is a 400 and an oversized body a 413, both in the
/// `{"error"}` shape (axum's own rejections are plain text). A top-level value that is not an
/// object also gives `{}`.
pub(crate) struct JsonBody(pub(crate) Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|essence| {
                let essence = essence.trim().to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request entity too large")
            } else {
                ApiError::new(rejection.status(), rejection.body_text())
            }
        })?;
        if !is_json || bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Ok(Self(Map::new())),
            Err(e) => Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
        }
    }
}

/// A non-empty string field (JavaScript treats `""` as missing).
pub(crate) fn str_field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn build_router(shared: Arc<Shared>) -> Router {
    let backends = Router::new()
        .merge(crowd::routes())
        .merge(depin::routes())
        .merge(telemetry::routes())
        .fallback(|| async { ApiError::not_found("Not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        // Express's body parser limit as the telemetry backend sets it: 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(2 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            faults::record_and_inject,
        ));
    // Merged after the layers so that control requests are neither recorded nor faulted.
    backends.merge(control::routes()).with_state(shared)
}

/// Marks a request with its connection so that [`FaultKind::ApplyThenDrop`] can close it.
#[derive(Clone)]
pub(crate) struct ConnKill(pub(crate) Arc<Notify>);

pub(crate) enum Command {
    Refuse(oneshot::Sender<()>),
    Accept(oneshot::Sender<std::io::Result<()>>),
    Shutdown(oneshot::Sender<()>),
}

/// A running stand-in. Dropping it stops it (abruptly); [`Standin::shutdown`] waits for that.
#[derive(Debug)]
pub struct Standin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    https: bool,
    task: Option<JoinHandle<()>>,
}

/// Starts the stand-in on an already-bound listener (bind port 0 in tests). To use
/// [`Standin::accept_connections`] after [`Standin::refuse_connections`], bind it with
/// [`TcpListener::bind`], which sets `SO_REUSEADDR`: the port is bound again.
pub async fn start(listener: TcpListener, config: StandinConfig) -> anyhow::Result<Standin> {
    let tls = match &config.tls {
        Some(files) => Some(load_tls(files)?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let crowd = crowd::Db::seeded(&config.seed_codes, now_ms())?;
    let (ws_drop, _) = watch::channel(0);
    let (commands, rx) = mpsc::channel(4);
    let shared = Arc::new(Shared {
        jwt: jwt::Jwt::new(&config.jwt_secret),
        crowd: Mutex::new(crowd),
        depin: Mutex::new(depin::Db::seeded()),
        telemetry: Mutex::new(telemetry::Db::seeded()),
        faults: Mutex::new(Vec::new()),
        received: Mutex::new(Vec::new()),
        ws_messages: Mutex::new(Vec::new()),
        ws_drop,
        ws_open: AtomicUsize::new(0),
        commands,
        config,
    });
    let router = build_router(shared.clone());
    let task = tokio::spawn(accept_loop(
        listener,
        addr,
        tls.clone(),
        router,
        shared.clone(),
        rx,
    ));
    tracing::info!(%addr, https = tls.is_some(), "stand-in started");
    Ok(Standin {
        shared,
        addr,
        https: tls.is_some(),
        task: Some(task),
    })
}

fn load_tls(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    // rustls' own PEM parser (the rustls-pemfile crate is archived).
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("opening {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("loading the TLS certificate and key")?;
    // Only HTTP/1.1 is served (the WebSocket upgrade needs it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_opt(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

enum Event {
    Command(Option<Command>),
    Accepted(std::io::Result<(TcpStream, SocketAddr)>),
    Reaped,
}

/// Owns the listening socket, so that it can be closed (refused connections) and bound again,
/// and every connection task, so that those can be cut at once.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        let event = tokio::select! {
            cmd = commands.recv() => Event::Command(cmd),
            res = accept_opt(&listener) => Event::Accepted(res),
            Some(_) = conns.join_next(), if !conns.is_empty() => Event::Reaped,
        };
        match event {
            Event::Reaped => {}
            Event::Accepted(Ok((stream, peer))) => {
                tracing::debug!(%peer, "accepted");
                conns.spawn(serve_conn(stream, tls.clone(), router.clone()));
            }
            Event::Accepted(Err(e)) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Event::Command(Some(Command::Refuse(ack))) => {
                // A backend that is down: nothing listens and nothing stays connected.
                listener = None;
                conns.abort_all();
                shared.drop_websockets();
                tracing::info!(%addr, "refusing connections");
                let _ = ack.send(());
            }
            Event::Command(Some(Command::Accept(ack))) => {
                let res = match listener {
                    Some(_) => Ok(()),
                    None => TcpListener::bind(addr).await.map(|l| {
                        listener = Some(l);
                    }),
                };
                tracing::info!(%addr, ok = res.is_ok(), "accepting connections again");
                let _ = ack.send(res);
            }
            Event::Command(Some(Command::Shutdown(ack))) => {
                drop(listener.take());
                conns.abort_all();
                shared.drop_websockets();
                while conns.join_next().await.is_some() {}
                let _ = ack.send(());
                return;
            }
            // Cannot happen while `shared` (which holds a sender) lives; stop all the same.
            Event::Command(None) => {
                shared.drop_websockets();
                return;
            }
        }
    }
}

async fn serve_conn(stream: TcpStream, tls: Option<TlsAcceptor>, router: Router) {
    match tls {
        None => serve_io(TokioIo::new(stream), router).await,
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_io(TokioIo::new(tls_stream), router).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_io<I>(io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let marker = ConnKill(kill.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(marker.clone());
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket without a reply.
        () = kill.notified() => tracing::debug!("connection dropped by a fault"),
    }
}

impl Standin {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://`); an unspecified listen address is shown as
    /// loopback.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.received).clone()
    }

    /// Every producer WebSocket message received so far, oldest first.
    pub fn ws_messages(&self) -> Vec<ReceivedWsMessage> {
        lock(&self.shared.ws_messages).clone()
    }

    /// Adds a fault; faults are tried in the order added, and the first that matches a request's
    /// path applies.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// From now on, every token issued before this call is rejected with 401 `Token expired`,
    /// on all three contracts (refresh tokens too).
    pub fn expire_tokens(&self) {
        self.shared.jwt.expire_all();
    }

    /// Closes every open producer WebSocket at the TCP level, without a Close frame.
    pub fn drop_websockets(&self) {
        self.shared.drop_websockets();
    }

    /// Number of producer WebSockets open now.
    pub fn open_websockets(&self) -> usize {
        self.shared
            .ws_open
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the listening socket, so that new connects get `ECONNREFUSED`, and cuts every open
    /// connection (WebSockets included), as a backend that went down would.
    pub async fn refuse_connections(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Refuse(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Listens again on the same address after [`Standin::refuse_connections`].
    pub async fn accept_connections(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Accept(tx))
            .await
            .map_err(|_| anyhow::anyhow!("the stand-in has stopped"))?;
        rx.await
            .context("the stand-in has stopped")?
            .with_context(|| format!("binding {} again", self.addr))
    }

    /// A contract 1 access code, if it exists (a code deleted after its expiry does not).
    pub fn code(&self, code: &str) -> Option<CodeState> {
        let ttl = self.shared.config.expired_code_ttl;
        lock(&self.shared.crowd).code_state(code, now_ms(), ttl)
    }

    /// Every contract 1 access code, newest first.
    pub fn codes(&self) -> Vec<CodeState> {
        let ttl = self.shared.config.expired_code_ttl;
        lock(&self.shared.crowd).code_states(now_ms(), ttl)
    }

    /// A contract 1 user, by email (compared exactly, as the real service does).
    pub fn user(&self, email: &str) -> Option<UserState> {
        lock(&self.shared.crowd).user_state(email)
    }

    /// Deletes a contract 1 user (by exact email); its tokens then answer 401 `Invalid user`.
    /// Returns whether there was one.
    pub fn delete_user(&self, email: &str) -> bool {
        lock(&self.shared.crowd).delete_user(email)
    }

    /// Registers a contract 1 user (`role`: provider, consumer or admin), as `POST
    /// /api/auth/register` would; `None` if the email is taken.
    pub fn register(
        &self,
        name: &str,
        email: &str,
        password: &str,
        role: &str,
    ) -> Option<UserState> {
        lock(&self.shared.crowd).register(name, email, password, role)
    }

    /// Every contract 1 user.
    pub fn users(&self) -> Vec<UserState> {
        lock(&self.shared.crowd).user_states()
    }

    /// The contract 3 connections of a tenant, as last upserted (first-seen order).
    pub fn connections(&self, tenant: &str) -> Vec<Value> {
        lock(&self.shared.telemetry).connections(tenant)
    }

    /// The contract 3 metric snapshots of a tenant, in arrival order.
    pub fn snapshots(&self, tenant: &str) -> Vec<Value> {
        lock(&self.shared.telemetry).snapshots(tenant)
    }

    /// The codes seeded at start.
    pub fn seed_codes(&self) -> Vec<String> {
        lock(&self.shared.crowd).seed_codes.clone()
    }

    /// Stops listening, cuts every connection and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the loop drops its JoinSet, which aborts every connection task.
            task.abort();
            self.shared.drop_websockets();
        }
    }
}
