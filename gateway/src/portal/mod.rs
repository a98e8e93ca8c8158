//! The captive portal consumers meet: the access-code form, the success and status pages, the
//! operating systems' captive-portal probes, and the RFC 8908 captive-portal API.
//!
//! What it does not do: check codes, track sessions or touch the firewall. All of that is
//! behind [`Gate`], which the daemon implements; the portal only asks "redeem this code for
//! this IP", "what does this IP have left" and "which device (MAC) is at this IP".
//! Connections and code guessing are limited here, per device (all its addresses together):
//! by the pure connection count in `devices.rs` and the pure guess limiter in `guesses.rs`.
//!
//! # How clients get here
//! While a client is captive, nftables redirects its TCP port-80 traffic to *any* host to this
//! server, so requests arrive with the original `Host` header (`connectivitycheck.gstatic.com`,
//! `captive.apple.com`, `example.com`, …). The portal's own pages are served only on the
//! portal's own host (the host and port of [`PortalSettings::url`]); everything else is
//! answered by who is asking:
//!
//! | request                                   | captive client         | online client                |
//! |-------------------------------------------|------------------------|------------------------------|
//! | `GET /` (portal host)                     | 200 code form          | 200 status page              |
//! | `POST /login` (fields `code`, `email`, `password`, any host) | success page, or the form with the error (below) ||
//! | `GET /login`                              | 303 to `/`             | 303 to `/`                   |
//! | `GET /status` (portal host)               | 200 "not online" page  | 200 status page              |
//! | `GET /terms` (portal host, terms set)     | 200 terms of use       | 200 terms of use             |
//! | `GET /brand/logo` (portal host, logo set) | 200 the logo           | 200 the logo                 |
//! | `GET /captive-portal/api` (any host)      | `{"captive": true, …}` | `{"captive": false, …}`      |
//! | OS probe path (any host, see `probes.rs`) | 302 to the portal      | the OS's exact success reply |
//! | any other `GET`/`HEAD` (any host)         | 302 to the portal      | 200 "you are online" page    |
//! | any other method                          | 405 page with `Allow`  | 405 page with `Allow`        |
//!
//! A `Host` that does not name the portal gets the redirect even for `/` and `/status`: the form
//! must not appear under `http://example.com/`, where its address bar would lie. (A request
//! without `Host` counts as the portal's own.) The URL in the settings must therefore reach this
//! server with that same host and port, or captive clients loop between it and the redirect.
//!
//! Every reply carries `Cache-Control: no-store` (a cached redirect or probe reply would keep a
//! phone "captive" after login, or "online" after expiry), except the API's `private` and the
//! logo's hour.
//!
//! # Languages and the provider's look
//! Each page is in the language `?lang=` asks for (the portal's own pages; then remembered in a
//! `lang` cookie), else the cookie's, else the best of `Accept-Language`, else English; see
//! `i18n.rs`. The name, logo, colours and terms come from `[portal.brand]` ([`Look`]).
//!
//! # Code redemption
//! `POST /login` reads a form of at most 8 KiB (413 beyond), `application/x-www-form-urlencoded`
//! only (400 otherwise), with one `code` field of at most 64 characters and, optionally, one
//! `email` (at most 254) and one `password` (at most 256) (400 otherwise). A code that does
//! not parse gets [`BadCode`]'s explanation (400). Then the limiter is asked (429 with
//! `Retry-After`), then [`Gate::redeem`]. The redemption runs in its own task: a phone that
//! drops the connection mid-login does not cancel a half-applied login in the daemon.
//! Outcomes and their status codes: online 200; invalid, expired, used up or revoked 403;
//! unknown device 409; backend unreachable 503 with `Retry-After: 60`; internal error 500.
//! Each outcome is logged at info with the client's IP, at most the code's first two
//! characters and whether an account was given (never the email or the password).
//!
//! # Consumer accounts
//! Where the gateway's codes come from the backend ([`Gate::accounts`]), the form also
//! offers to sign in with a network account: an email and a password, both or neither (400
//! with one alone). The code is still required (usage is billed per code). The gate signs the
//! account in with the backend *before* it redeems the code, and keeps only the account's
//! id, which the usage reports then name, so the consumer's `bytesConsumed` moves. Outcomes:
//! a wrong email or password 403 (a failed guess for the limiter, as a wrong code is: the
//! portal must not be a way to try passwords); a provider's or admin's account 403; the
//! backend unreachable for the sign-in 503 with `Retry-After` (not let in with the code
//! alone, since the person asked for their account: they may retry, or leave the fields
//! empty); the code's session already counting for another account, or for none, 409. Where
//! codes are local, the fields are not shown, and a form that carries them anyway is refused
//! (400) rather than silently ignored.
//!
//! The portal is plain HTTP on the LAN (see below): the password crosses the LAN as typed,
//! readable by anyone who can read the LAN's traffic (an open Wi-Fi, a shared key). The form
//! says so; the gateway forwards it to the backend (over HTTPS where the backend URL is) and
//! neither logs nor stores it, nor the token the backend answers with.
//!
//! # RFC 8908 and RFC 8910
//! `GET /captive-portal/api` answers with `application/captive+json`. To announce it (DHCP
//! option 114, RFC 8910), add to dnsmasq's configuration, with the configured portal URL's
//! origin in place of `http://10.66.0.1:8080` ([`dnsmasq_captive_option`] prints the line):
//!
//! ```text
//! dhcp-option=114,"http://10.66.0.1:8080/captive-portal/api"
//! ```
//!
//! RFC 8908 requires the API to be reached over `https`; clients that enforce this (recent
//! Android and iOS) ignore a plain `http` URI, and the probes above remain what brings their
//! login window up. Serving the API over TLS needs a certificate the phones trust for a
//! hostname, which a LAN-only gateway does not have.

mod devices;
mod form;
mod guesses;
mod i18n;
pub(crate) mod limiter;
mod look;
mod pages;
mod probes;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{
    ACCEPT_LANGUAGE, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LANGUAGE, CONTENT_LENGTH,
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, LOCATION, REFERRER_POLICY, RETRY_AFTER,
    SET_COOKIE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edgeshare_shared::code::{self, AccessCode, BadCode};
use edgeshare_shared::secret::Secret;
use edgeshare_shared::serve::FirstRequest;
use edgeshare_shared::supervisor::{Spawner, stopped};
use serde::Serialize;
use tokio::sync::broadcast;

use self::devices::{Connections, Device, Full};
use self::form::{FormError, LoginForm};
use self::guesses::Guesses;
use self::i18n::{Msg, Tr};
use self::limiter::Wait;
use self::pages::{Field, LOGO_PATH, Online, Typed, View};
use crate::net::{Mac, Millis};
use crate::refusal::Refusal;

pub use self::devices::{MAX_ADDRESSES_PER_DEVICE, MAX_CONNECTIONS_PER_DEVICE};
pub use self::form::{MAX_BODY_BYTES, MAX_CODE_CHARS, MAX_EMAIL_CHARS, MAX_PASSWORD_CHARS};
pub use self::look::Look;
pub(crate) use self::pages::escape;

/// What the portal needs from the daemon. The daemon implements it (code check against the
/// backend or local store, session core, firewall).
pub trait Gate: Send + Sync + 'static {
    /// Binds `code` to the client at `ip` (whose MAC the daemon looks up) and lets it online;
    /// with an `account`, signs it in first, and its session counts for that account. Runs
    /// to completion even if the client hangs up: the portal spawns it.
    fn redeem(
        &self,
        ip: IpAddr,
        code: AccessCode,
        account: Option<Account>,
    ) -> impl Future<Output = Redeem> + Send;
    /// What the client at `ip` has left, if it is online.
    fn status(&self, ip: IpAddr) -> impl Future<Output = Option<ClientStatus>> + Send;
    /// The MAC of the device at `ip`, from the kernel's neighbour table: the portal counts
    /// connections and guesses per device, all its addresses together.
    fn mac(&self, ip: IpAddr) -> impl Future<Output = Option<Mac>> + Send;
    /// Whether consumers may sign in with a network account (codes come from the backend).
    fn accounts(&self) -> bool;
    /// Since when the code service has been unreachable, if it is: the form notes it.
    fn backend_down_since(&self) -> Option<Millis> {
        None
    }
}

/// A consumer's network account as typed on the form, both fields filled in. The gate
/// signs it in with the backend and keeps the account's id only; nothing logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub email: String,
    pub password: Secret,
}

/// The outcome of a code redemption: online with what the device has left, or why not. The
/// refusal is the one the code's check, the core or the daemon gave: the page is chosen
/// from it as it is ([`redeem_reply`]).
pub type Redeem = Result<ClientStatus, Refusal>;

/// A redemption's outcome as a log field.
fn label(outcome: &Redeem) -> &'static str {
    match outcome {
        Ok(_) => "online",
        Err(refusal) => refusal.label(),
    }
}

/// What an online client has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStatus {
    pub bytes_left: u64,
    pub seconds_left: u64,
    /// False when the time left is the session's limit only (the code does not expire).
    pub code_expires: bool,
    /// Another account's code, whose expiry is not told.
    pub other_account: bool,
}

/// How the portal is reached and how hard it limits code guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSettings {
    /// The page captive clients are sent to, e.g. `http://10.66.0.1:8080/`. Its host and port
    /// must be how clients reach this server (see the module docs).
    pub url: String,
    /// Failed attempts per device per window.
    pub per_device_attempts: u32,
    /// Failed attempts per window of all devices that keep guessing (see `guesses.rs`).
    pub global_attempts: u32,
    pub window: Duration,
    /// Languages, name, logo, colours and terms.
    pub look: Look,
}

impl PortalSettings {
    pub const DEFAULT_PER_DEVICE_ATTEMPTS: u32 = 5;
    pub const DEFAULT_GLOBAL_ATTEMPTS: u32 = 60;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

    /// Settings for a portal at `url` with the default limits.
    pub fn new(url: impl Into<String>) -> Self {
        PortalSettings {
            url: url.into(),
            per_device_attempts: Self::DEFAULT_PER_DEVICE_ATTEMPTS,
            global_attempts: Self::DEFAULT_GLOBAL_ATTEMPTS,
            window: Self::DEFAULT_WINDOW,
            look: Look::default(),
        }
    }
}

/// The RFC 8908 API's URL for a portal at `portal_url`.
pub fn api_url(portal_url: &str) -> Result<String, url::ParseError> {
    Ok(url::Url::parse(portal_url)?.join(API_PATH)?.into())
}

/// The dnsmasq line announcing the API by DHCP option 114 (RFC 8910).
pub fn dnsmasq_captive_option(portal_url: &str) -> Result<String, url::ParseError> {
    Ok(format!("dhcp-option=114,\"{}\"", api_url(portal_url)?))
}

const API_PATH: &str = "/captive-portal/api";
/// Pages load nothing but the portal's own logo and post only to themselves: a defence in
/// depth behind escaping.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The logo, if an SVG, is opened on its own as a document: no script of it may run.
const LOGO_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";
/// How long browsers may keep the logo (it changes only with a restart).
const LOGO_CACHE: &str = "max-age=3600";
/// The cookie remembering a language picked with `?lang=`, for a year.
const LANG_COOKIE_AGE: u32 = 365 * 24 * 3600;
const HTML: &str = "text/html; charset=utf-8";
/// How long to tell clients to wait when the code service is down ("try again in a minute").
const BACKEND_RETRY_SECONDS: u64 = 60;

/// The portal's routes. Handlers read the client's address from
/// `ConnectInfo<SocketAddr>`: serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`, as [`serve`] does.
pub fn router<G: Gate>(gate: Arc<G>, settings: PortalSettings) -> Router {
    app(gate, settings, None).0
}

/// The router, and the portal behind it (whose `logins` announce each device that logs in).
fn app<G: Gate>(
    gate: Arc<G>,
    settings: PortalSettings,
    tasks: Option<Spawner>,
) -> (Router, Arc<Portal<G>>) {
    let portal = Arc::new(Portal::new(gate, settings, tasks));
    let router = Router::new()
        .route("/", get(index::<G>))
        .route("/status", get(status::<G>))
        .route("/terms", get(terms::<G>))
        .route(LOGO_PATH, get(logo::<G>))
        .route("/login", get(login_form).post(login::<G>))
        .route(API_PATH, get(api::<G>))
        .fallback(elsewhere::<G>)
        .layer(axum::middleware::map_response_with_state(
            Arc::clone(&portal),
            finish::<G>,
        ))
        .with_state(Arc::clone(&portal));
    (router, portal)
}

/// Serves the portal on an already-bound listener until the stop of `tasks`, each connection
/// one of its tasks: at the stop no connection is accepted, one waiting for a slot is
/// closed, and each open one finishes the request it is answering. The client's IP is the
/// TCP peer's; its device, the MAC the gate finds for that IP ([`Gate::mac`]).
///
/// The portal faces every device on the LAN, so each connection is bounded: headers must
/// arrive within [`HEADER_TIMEOUT`], a whole request is answered within [`REQUEST_TIMEOUT`]
/// (408 otherwise), at most [`MAX_CONNECTIONS`] are open at once, and at most
/// [`MAX_CONNECTIONS_PER_DEVICE`] of one device, from at most [`MAX_ADDRESSES_PER_DEVICE`] of
/// its addresses (further ones are closed at once). A device trickling bytes cannot hold the
/// portal's sockets, however many addresses it takes: it holds its own share only. Past
/// [`MAX_CONNECTIONS`], a new connection waits up to [`SLOT_WAIT`] for one to end (a crowd
/// logging in at the same moment); at most [`MAX_WAITING`] wait, further ones are closed.
pub async fn serve<G: Gate>(
    listener: tokio::net::TcpListener,
    gate: Arc<G>,
    settings: PortalSettings,
    tasks: Spawner,
) -> std::io::Result<()> {
    let (app, portal) = app(gate, settings, Some(tasks.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Open and waiting together: a connection is counted from its accept, while its
    // device is looked up and while it waits for a slot, to its end.
    let admitted = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS + MAX_WAITING));
    let per_device = PerDevice::default();
    let mut stop = tasks.stopping();
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %err, "portal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return Ok(()),
        };
        let Ok(admission) = Arc::clone(&admitted).try_acquire_owned() else {
            if last_warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    client = %peer.ip(),
                    "the portal has {MAX_CONNECTIONS} connections open and {MAX_WAITING} waiting; closing new ones"
                );
                last_warned = Some(tokio::time::Instant::now());
            }
            continue;
        };
        let app = app.clone();
        let portal = Arc::clone(&portal);
        let slots = Arc::clone(&slots);
        let per_device = per_device.clone();
        let mut stop = tasks.stopping();
        tasks.spawn("portal connection", async move {
            let ip = client_ip(peer);
            let device = portal.device(ip).await;
            let own_slot = match per_device.take(device, ip) {
                Ok(own_slot) => own_slot,
                Err(Refused { full, first }) => {
                    let why = match full {
                        Full::Connections => "its portal connection limit",
                        Full::Addresses => "its limit of addresses with portal connections",
                    };
                    if first {
                        tracing::info!(client = %ip, %device, "device reached {why}; closing further connections");
                    } else {
                        tracing::debug!(client = %ip, %device, "device at {why}; closing");
                    }
                    return;
                }
            };
            let waited = tokio::select! {
                waited = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()) => waited,
                () = stopped(&mut stop) => return,
            };
            let slot = match waited {
                Ok(Ok(slot)) => slot,
                Ok(Err(_closed)) => return,
                Err(_) => {
                    tracing::debug!(client = %ip, %device, "no portal connection free within {SLOT_WAIT:?}; closing");
                    return;
                }
            };
            // Subscribed once served: logins while it waited are not its business (its
            // requests are answered as the device is by then).
            let logged_in = portal.logins.subscribe();
            serve_connection(stream, peer, device, app, portal, logged_in, stop).await;
            drop(slot);
            drop(own_slot);
            drop(admission);
        });
    }
}

/// One portal connection, until it ends; closed early (gracefully) once its device logs in
/// or the daemon stops.
async fn serve_connection<G: Gate>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    device: Device,
    app: Router,
    portal: Arc<Portal<G>>,
    mut logged_in: broadcast::Receiver<Device>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt as _;
    let replies = Arc::clone(&portal);
    let first = FirstRequest::default();
    let came = first.clone();
    let service = hyper::service::service_fn(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            came.came();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(device);
            let app = app.clone();
            let late = replies.timeout_reply(request.headers());
            async move {
                let response = match tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    app.oneshot(request.map(Body::new)),
                )
                .await
                {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => late,
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        },
    );
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let me = client_ip(peer);
    // Once this device logs in, its other connections here were opened while it was
    // captive (browsers open some ahead of use) and the kernel's redirect holds them to the
    // portal: they are closed, so the browser reaches the real sites on new ones. A reply
    // in progress (the success page) is finished first.
    let logs_in = async {
        loop {
            let close = match logged_in.recv().await {
                Ok(who) => who == device,
                // Logins were missed (a crowd logging in): close only if this device is
                // among them. Closing on a guess closed waiting phones' connections
                // before their request was read.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    portal.gate.status(me).await.is_some()
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            };
            if close {
                return;
            }
        }
    };
    if let Err(err) = edgeshare_shared::serve::drive(connection, &first, stop, logs_in).await {
        tracing::debug!(client = %peer.ip(), error = %err, "portal connection ended");
    }
}

/// Open portal connections per device, shared by the connections' tasks.
#[derive(Clone, Default)]
struct PerDevice(Arc<Mutex<PerDeviceState>>);

#[derive(Default)]
struct PerDeviceState {
    open: Connections,
    /// When each device refused lately was last logged: once per [`LOG_DEVICE_EVERY`].
    logged: std::collections::HashMap<Device, tokio::time::Instant>,
}

/// Why [`PerDevice::take`] refused, and whether it is worth a log line (a device's first
/// refusal in [`LOG_DEVICE_EVERY`]; a flood of refusals is not).
struct Refused {
    full: Full,
    first: bool,
}

/// One connection of a device; gives its place back when dropped.
struct DeviceSlot {
    owner: PerDevice,
    device: Device,
    ip: IpAddr,
}

impl PerDevice {
    fn state(&self) -> MutexGuard<'_, PerDeviceState> {
        // A panic elsewhere while holding it leaves plain counts behind: still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more connection of `device` from `ip`, unless it has its share.
    fn take(&self, device: Device, ip: IpAddr) -> Result<DeviceSlot, Refused> {
        let mut state = self.state();
        match state.open.take(device, ip) {
            Ok(()) => Ok(DeviceSlot {
                owner: self.clone(),
                device,
                ip,
            }),
            Err(full) => {
                let now = tokio::time::Instant::now();
                let recent = |at: &tokio::time::Instant| now.duration_since(*at) < LOG_DEVICE_EVERY;
                let first = !state.logged.get(&device).is_some_and(recent);
                if first {
                    // Bounded: devices logged within the period only.
                    if state.logged.len() >= MAX_CONNECTIONS + MAX_WAITING {
                        state.logged.retain(|_, at| recent(at));
                    }
                    state.logged.insert(device, now);
                }
                Err(Refused { full, first })
            }
        }
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut state = self.owner.state();
        state.open.give_back(self.device, self.ip);
    }
}

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take in all (a code check with the backend included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Portal connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections waiting for one of the [`MAX_CONNECTIONS`] (or for their device's MAC);
/// each is counted in its device's share while it waits, so no device fills the queue.
pub const MAX_WAITING: usize = 256;
/// How long a connection waits for a free one of the [`MAX_CONNECTIONS`] before it is
/// closed: as long as a request may take, so a crowd's connections are served in turn
/// (500 phones that each opened a connection, then sent their codes at the same moment,
/// were all online within 8 to 10.3 s, a debug build on a busy machine).
pub const SLOT_WAIT: Duration = REQUEST_TIMEOUT;
/// How long the device of a new connection may take to be looked up; past it, the
/// connection counts as a device whose MAC is unknown.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one warning per this long about closing connections for want of room.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// At most one line per this long about each device refused for its own limits.
const LOG_DEVICE_EVERY: Duration = Duration::from_secs(60);

struct Portal<G> {
    gate: Arc<G>,
    url: String,
    /// `url`'s origin (`http://10.66.0.1:8080`), for links on pages served under other hosts;
    /// empty when `url` has no host (then every host is the portal's).
    origin: String,
    look: Look,
    location: HeaderValue,
    /// Host and port of `url`; `None` if it has none, and then every host is ours.
    own: Option<(String, u16)>,
    limiter: Mutex<Guesses>,
    /// The limiter's clock: monotonic, because a Pi has no real-time clock and its wall clock
    /// jumps when NTP first syncs after boot.
    started: tokio::time::Instant,
    /// Each device that logs in, for [`serve`] to close its connections made while captive.
    logins: broadcast::Sender<Device>,
    /// Whether the form offers sign-in with a network account ([`Gate::accounts`]).
    accounts: bool,
    /// Where a redemption runs, apart from its connection: the daemon's supervisor when
    /// [`serve`] runs the portal (joined at the stop); the runtime for the router alone.
    tasks: Option<Spawner>,
}

impl<G: Gate> Portal<G> {
    fn new(gate: Arc<G>, settings: PortalSettings, tasks: Option<Spawner>) -> Self {
        let location = HeaderValue::from_str(&settings.url).unwrap_or_else(|_| {
            tracing::error!(url = %settings.url, "portal URL is not a valid header value; redirecting to /");
            HeaderValue::from_static("/")
        });
        let own = url::Url::parse(&settings.url)
            .ok()
            .as_ref()
            .and_then(authority);
        if own.is_none() {
            tracing::warn!(url = %settings.url, "portal URL has no host; serving the portal on every host");
        }
        let origin = match (&own, url::Url::parse(&settings.url)) {
            (Some(_), Ok(url)) => url.origin().ascii_serialization(),
            _ => String::new(),
        };
        Portal {
            accounts: gate.accounts(),
            gate,
            location,
            own,
            origin,
            look: settings.look,
            limiter: Mutex::new(Guesses::new(
                settings.per_device_attempts,
                settings.global_attempts,
                settings.window,
            )),
            url: settings.url,
            started: tokio::time::Instant::now(),
            logins: broadcast::channel(64).0,
            tasks,
        }
    }

    /// The device at `ip`: its MAC, or the bucket of addresses whose MAC is unknown.
    async fn device(&self, ip: IpAddr) -> Device {
        let mac = tokio::time::timeout(LOOKUP_TIMEOUT, self.gate.mac(ip))
            .await
            .ok()
            .flatten();
        Device::of(ip, mac)
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn limiter(&self) -> MutexGuard<'_, Guesses> {
        // The limiter's state is valid after any panic (each method leaves it consistent).
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the request's `Host` names the portal itself.
    fn is_own_host(&self, headers: &HeaderMap) -> bool {
        let (Some(own), Some(host)) = (&self.own, headers.get(HOST)) else {
            return true;
        };
        let parsed = host
            .to_str()
            .ok()
            .and_then(|host| url::Url::parse(&format!("http://{host}/")).ok());
        parsed.as_ref().and_then(authority).as_ref() == Some(own)
    }

    /// The language of a reply: `?lang=` (in `query`, the portal's own pages only), else the
    /// `lang` cookie, else `Accept-Language`, else English.
    fn choose(&self, headers: &HeaderMap, query: Option<&str>) -> Chosen {
        let asked = query.and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "lang")
                .map(|(_, value)| value.into_owned())
        });
        let accept = headers
            .get(ACCEPT_LANGUAGE)
            .and_then(|value| value.to_str().ok());
        let languages = &self.look.languages;
        let index = languages.choose(asked.as_deref(), lang_cookie(headers), accept);
        Chosen {
            index,
            from_query: asked.is_some_and(|tag| languages.find(&tag) == Some(index)),
        }
    }

    /// What pages are rendered with; `own_host`: whether the request names the portal's host.
    fn view(&self, chosen: Chosen, own_host: bool) -> View<'_> {
        View {
            tr: self.look.languages.tr(chosen.index),
            look: &self.look,
            base: if own_host { "" } else { &self.origin },
            accounts: self.accounts,
            backend_down_since: self.gate.backend_down_since(),
        }
    }

    /// The 408 for a request that took too long, in its language.
    fn timeout_reply(&self, headers: &HeaderMap) -> Response {
        let tr = self.look.languages.tr(self.choose(headers, None).index);
        let mut response = (
            StatusCode::REQUEST_TIMEOUT,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", tr.t(Msg::ErrorTimeout)),
        )
            .into_response();
        set_language(&mut response, tr);
        response
    }

    /// A page of the portal's own, in the chosen language; a language picked with `?lang=` is
    /// remembered in a cookie.
    fn own_reply(
        &self,
        status: StatusCode,
        chosen: Chosen,
        page: impl FnOnce(&View<'_>) -> String,
    ) -> Response {
        let view = self.view(chosen, true);
        let mut response = html(status, &view, page(&view));
        if chosen.from_query {
            let cookie = format!(
                "lang={}; Path=/; Max-Age={LANG_COOKIE_AGE}; SameSite=Lax; HttpOnly",
                view.tr.tag()
            );
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, cookie);
            }
        }
        response
    }

    fn redirect(&self, chosen: Chosen) -> Response {
        let view = self.view(chosen, false);
        let mut response = html(StatusCode::FOUND, &view, pages::redirect(&view, &self.url));
        response
            .headers_mut()
            .insert(LOCATION, self.location.clone());
        response
    }

    /// Any page that is not the portal's own: the redirect while captive, the probe's success
    /// reply or a small "you are online" page once online.
    ///
    /// Each of these replies closes its connection: it reached us through the port-80
    /// redirect, which the kernel decides once per connection. A browser that kept it open
    /// would go on seeing the portal instead of the site after logging in; a new connection
    /// made after login goes to the real site.
    async fn captive_or_online(&self, ip: IpAddr, path: &str, chosen: Chosen) -> Response {
        let mut response = self.foreign_reply(ip, path, chosen).await;
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        response
    }

    async fn foreign_reply(&self, ip: IpAddr, path: &str, chosen: Chosen) -> Response {
        let Some(status) = self.gate.status(ip).await else {
            return self.redirect(chosen);
        };
        match probes::find(path) {
            Some(probe) => {
                let mut response = (probe.status, probe.body).into_response();
                match probe.content_type {
                    Some(kind) => {
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
                    }
                    None => {
                        response.headers_mut().remove(CONTENT_TYPE);
                    }
                }
                response
            }
            None => {
                let view = self.view(chosen, false);
                html(
                    StatusCode::OK,
                    &view,
                    pages::online(&view, &status, Online::Status),
                )
            }
        }
    }
}

/// The language of one reply.
#[derive(Debug, Clone, Copy)]
struct Chosen {
    /// In the portal's [`i18n::Languages`].
    index: usize,
    /// Picked with `?lang=`: to be remembered.
    from_query: bool,
}

/// The value of the `lang` cookie, if sent.
fn lang_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, "lang")
}

/// The value of the cookie `wanted`, among all the request's cookies (the portal's language,
/// the dashboard's login).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, wanted: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == wanted).then_some(value.trim())
        })
}

/// `Content-Language`, and `Vary` for what chose it (a cache must not mix the languages).
fn set_language(response: &mut Response, tr: Tr<'_>) {
    let headers = response.headers_mut();
    // Tags are checked when catalogues are read, so this always succeeds.
    if let Ok(tag) = HeaderValue::from_str(tr.tag()) {
        headers.insert(CONTENT_LANGUAGE, tag);
    }
    headers.insert(VARY, HeaderValue::from_static("Accept-Language, Cookie"));
}

fn authority(url: &url::Url) -> Option<(String, u16)> {
    Some((
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// The client's address; an IPv4 client reaching a dual-stack socket shows as `::ffff:a.b.c.d`.
fn client_ip(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

fn html(status: StatusCode, view: &View<'_>, body: String) -> Response {
    let mut response = (
        status,
        [
            (CONTENT_TYPE, HTML),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response();
    set_language(&mut response, view.tr);
    response
}

fn retry_after(mut response: Response, seconds: u64) -> Response {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// At most the first two characters of a code, for logs.
fn redacted(code: &str) -> String {
    let mut shown: String = code.chars().take(2).collect();
    shown.push('…');
    shown
}

async fn index<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let prefilled = code_in_query(uri.query());
    own_page(&portal, peer, &headers, &uri, |view| {
        let typed = Typed {
            code: &prefilled,
            email: "",
        };
        pages::form(view, None, typed)
    })
    .await
}

async fn status<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    own_page(&portal, peer, &headers, &uri, pages::not_online).await
}

/// A page of the portal's own: the status page for a device that is online, `captive`'s page
/// for one that is not; on a foreign host, what any foreign page gets.
/// The code a printed voucher's QR code puts in the portal's address (`/?code=…`),
/// normalised; empty when there is none or it cannot be a code.
fn code_in_query(query: Option<&str>) -> String {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "code")
        .and_then(|(_, value)| AccessCode::parse(&value).ok())
        .map(|code| code.as_str().to_owned())
        .unwrap_or_default()
}

async fn own_page<G: Gate>(
    portal: &Portal<G>,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
    captive: impl FnOnce(&View<'_>) -> String,
) -> Response {
    let ip = client_ip(peer);
    if !portal.is_own_host(headers) {
        let chosen = portal.choose(headers, None);
        return portal.captive_or_online(ip, uri.path(), chosen).await;
    }
    let chosen = portal.choose(headers, uri.query());
    match portal.gate.status(ip).await {
        Some(status) => portal.own_reply(StatusCode::OK, chosen, |view| {
            pages::online(view, &status, Online::Status)
        }),
        None => portal.own_reply(StatusCode::OK, chosen, captive),
    }
}

/// The provider's terms of use, for captive and online devices alike; without terms, or on
/// a foreign host, what any foreign page gets.
async fn terms<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match &portal.look.terms {
        Some(text) if portal.is_own_host(&headers) => {
            let chosen = portal.choose(&headers, uri.query());
            portal.own_reply(StatusCode::OK, chosen, |view| pages::terms(view, text))
        }
        _ => {
            let chosen = portal.choose(&headers, None);
            portal
                .captive_or_online(client_ip(peer), uri.path(), chosen)
                .await
        }
    }
}

/// The provider's logo, on the portal's host; elsewhere, or without a logo, what any foreign
/// page gets.
async fn logo<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match &portal.look.logo {
        Some(logo) if portal.is_own_host(&headers) => (
            [
                (CONTENT_TYPE, logo.content_type),
                (CONTENT_SECURITY_POLICY, LOGO_CSP),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (CACHE_CONTROL, LOGO_CACHE),
            ],
            logo.bytes.clone(),
        )
            .into_response(),
        _ => {
            let chosen = portal.choose(&headers, None);
            portal
                .captive_or_online(client_ip(peer), uri.path(), chosen)
                .await
        }
    }
}

/// `GET /login` (a bookmark, a reload after the POST): back to the form.
async fn login_form() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response()
}

async fn login<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    // Found by `serve` for the connection; looked up here for a router served otherwise.
    device: Option<Extension<Device>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = client_ip(peer);
    let view = portal.view(portal.choose(&headers, None), portal.is_own_host(&headers));
    let form = match form::read_form(&headers, body).await {
        Ok(form) => form,
        Err(error) => {
            tracing::debug!(client = %ip, %error, "unusable login request");
            return form_error(&view, &error);
        }
    };
    let typed = Typed {
        code: &form.code,
        email: &form.email,
    };
    let code = match AccessCode::parse(&form.code) {
        Ok(code) => code,
        Err(bad) => {
            tracing::debug!(client = %ip, code = ?redacted(&form.code), "malformed code");
            let text = bad_code_text(view.tr, &bad);
            let page = pages::form(&view, Some((&text, Field::Code)), typed);
            return html(StatusCode::BAD_REQUEST, &view, page);
        }
    };
    let account = match account_of(&form, portal.accounts) {
        Ok(account) => account,
        Err(msg) => {
            tracing::debug!(client = %ip, problem = msg.key(), "unusable account fields");
            let page = pages::form(&view, Some((view.tr.t(msg), Field::Account)), typed);
            return html(StatusCode::BAD_REQUEST, &view, page);
        }
    };
    let device = match device {
        Some(Extension(device)) => device,
        None => portal.device(ip).await,
    };
    let attempt = match portal.limiter().begin(device, portal.now()) {
        Ok(attempt) => attempt,
        Err(wait) => {
            tracing::debug!(client = %ip, %device, wait = wait.seconds, global = wait.global, "code attempt rate-limited");
            let text = too_many_text(view.tr, wait);
            let page = pages::form(&view, Some((&text, Field::Code)), typed);
            return retry_after(
                html(StatusCode::TOO_MANY_REQUESTS, &view, page),
                wait.seconds,
            );
        }
    };
    let shown = redacted(code.as_str());
    let signed_in = account.is_some();
    let (done, redeemed) = tokio::sync::oneshot::channel();
    let task = {
        let portal = Arc::clone(&portal);
        async move {
            let outcome = portal.gate.redeem(ip, code, account).await;
            if outcome.is_err_and(Refusal::is_failed_guess) {
                portal.limiter().failed(attempt);
            } else {
                portal.limiter().refund(attempt);
            }
            let _ = done.send(outcome);
        }
    };
    match &portal.tasks {
        Some(tasks) => tasks.spawn("code redemption", task),
        None => drop(tokio::spawn(task)),
    }
    // Dropped unfinished: it panicked, or the daemon stopped before it could run.
    let outcome = redeemed.await.unwrap_or_else(|_| {
        tracing::error!(client = %ip, "code redemption task failed");
        Err(Refusal::Internal)
    });
    if outcome.is_ok() {
        // No receiver (tests serving the router alone) is fine.
        let _ = portal.logins.send(device);
    }
    tracing::info!(
        client = %ip,
        outcome = label(&outcome),
        code = %shown,
        account = signed_in,
        "code redemption"
    );
    let email = signed_in.then_some(form.email.trim());
    // Again: the redemption may just have found the code service unreachable (the note).
    let view = portal.view(portal.choose(&headers, None), portal.is_own_host(&headers));
    redeem_reply(&view, outcome, typed, email)
}

/// The account the form carries: `None` when its email and password are both empty. Without
/// accounts on this gateway, or with one field alone, the message to show.
fn account_of(form: &LoginForm, accounts: bool) -> Result<Option<Account>, Msg> {
    // A phone's keyboard may add a space after a suggested address; the backend compares
    // emails exactly. A password is taken as typed.
    let email = form.email.trim();
    let password = &form.password;
    if email.is_empty() && password.is_empty() {
        return Ok(None);
    }
    if !accounts {
        return Err(Msg::ErrorAccountsOff);
    }
    if email.is_empty() || password.is_empty() {
        return Err(Msg::ErrorAccountIncomplete);
    }
    Ok(Some(Account {
        email: email.to_owned(),
        password: password.clone(),
    }))
}

/// The page for a redemption's outcome; `email`: the account signed in with, if any.
fn redeem_reply(
    view: &View<'_>,
    outcome: Redeem,
    typed: Typed<'_>,
    email: Option<&str>,
) -> Response {
    let refusal = match outcome {
        Ok(status) => {
            let page = pages::online(view, &status, Online::JustNow(email));
            return html(StatusCode::OK, view, page);
        }
        Err(refusal) => refusal,
    };
    let (status, text, field) = match refusal {
        Refusal::Invalid => (StatusCode::FORBIDDEN, Msg::ErrorInvalid, Field::Code),
        Refusal::Expired => (StatusCode::FORBIDDEN, Msg::ErrorExpired, Field::Code),
        Refusal::UsedUp => (StatusCode::FORBIDDEN, Msg::ErrorUsedUp, Field::Code),
        Refusal::Revoked => (StatusCode::FORBIDDEN, Msg::ErrorRevoked, Field::Code),
        Refusal::NotOurs => (StatusCode::FORBIDDEN, Msg::ErrorNotOurs, Field::Code),
        Refusal::BackendUnreachable | Refusal::AccountUnreachable | Refusal::Unlisted => {
            let (msg, field) = match refusal {
                Refusal::AccountUnreachable => (Msg::ErrorAccountDown, Field::Account),
                Refusal::Unlisted => (Msg::ErrorUnlisted, Field::Code),
                _ => (Msg::ErrorBackendDown, Field::Code),
            };
            let page = pages::form(view, Some((view.tr.t(msg), field)), typed);
            return retry_after(
                html(StatusCode::SERVICE_UNAVAILABLE, view, page),
                BACKEND_RETRY_SECONDS,
            );
        }
        // The page asks the device to reconnect and try again: a held address is free
        // again once its holder has answered its probe or failed it.
        Refusal::UnknownDevice | Refusal::AddressHeld => {
            (StatusCode::CONFLICT, Msg::ErrorUnknownDevice, Field::Code)
        }
        Refusal::NotSaved => (
            StatusCode::SERVICE_UNAVAILABLE,
            Msg::ErrorNotSaved,
            Field::Code,
        ),
        Refusal::NotEnforced | Refusal::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Msg::ErrorInternal,
            Field::Code,
        ),
        Refusal::WrongAccount => (
            StatusCode::FORBIDDEN,
            Msg::ErrorWrongAccount,
            Field::Account,
        ),
        Refusal::NotConsumer => (StatusCode::FORBIDDEN, Msg::ErrorNotConsumer, Field::Account),
        Refusal::OtherAccount => (StatusCode::CONFLICT, Msg::ErrorOtherAccount, Field::Account),
    };
    html(
        status,
        view,
        pages::form(view, Some((view.tr.t(text), field)), typed),
    )
}

fn bad_code_text(tr: Tr<'_>, bad: &BadCode) -> String {
    match bad {
        BadCode::Length(got) => tr.fill(
            Msg::ErrorBadLength,
            &[
                ("expected", &code::LENGTH.to_string()),
                ("got", &got.to_string()),
            ],
        ),
        BadCode::Character(c) => tr.fill(Msg::ErrorBadCharacter, &[("char", &c.to_string())]),
    }
}

fn too_many_text(tr: Tr<'_>, wait: Wait) -> String {
    let msg = if wait.global {
        Msg::ErrorTooManyGlobal
    } else {
        Msg::ErrorTooManyDevice
    };
    tr.fill(msg, &[("seconds", &tr.integer(wait.seconds))])
}

fn form_error(view: &View<'_>, error: &FormError) -> Response {
    let (status, text, field) = match error {
        FormError::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Msg::ErrorTooLarge,
            Field::Code,
        ),
        FormError::CodeTooLong(_) => (StatusCode::BAD_REQUEST, Msg::ErrorTooLong, Field::Code),
        FormError::EmailTooLong(_) | FormError::PasswordTooLong(_) => (
            StatusCode::BAD_REQUEST,
            Msg::ErrorAccountTooLong,
            Field::Account,
        ),
        FormError::NotAForm(_) | FormError::Malformed | FormError::Unreadable(_) => {
            (StatusCode::BAD_REQUEST, Msg::ErrorNotAForm, Field::Code)
        }
    };
    // Nothing of what was sent is echoed: it was not a sensible code form.
    let page = pages::form(view, Some((view.tr.t(text), field)), Typed::default());
    html(status, view, page)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct CaptiveApi<'a> {
    captive: bool,
    user_portal_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_extend_session: Option<bool>,
}

/// RFC 8908's API. `private`, not `no-store`: the RFC asks for a cacheable-by-the-client reply.
async fn api<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let status = portal.gate.status(client_ip(peer)).await;
    let reply = CaptiveApi {
        captive: status.is_none(),
        user_portal_url: &portal.url,
        seconds_remaining: status.map(|s| s.seconds_left),
        bytes_remaining: status.map(|s| s.bytes_left),
        can_extend_session: status.map(|_| false),
    };
    match serde_json::to_vec(&reply) {
        Ok(json) => (
            [
                (CONTENT_TYPE, "application/captive+json"),
                (CACHE_CONTROL, "private"),
            ],
            json,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the captive-portal API reply");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Every path that is not the portal's own, on any host.
async fn elsewhere<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let chosen = portal.choose(&headers, None);
    if method != Method::GET && method != Method::HEAD {
        let mut response = method_not_allowed(&portal.view(chosen, portal.is_own_host(&headers)));
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET,HEAD"));
        return response;
    }
    portal
        .captive_or_online(client_ip(peer), uri.path(), chosen)
        .await
}

fn method_not_allowed(view: &View<'_>) -> Response {
    let page = pages::message(
        view,
        view.tr.t(Msg::NotAllowedTitle),
        view.tr.t(Msg::NotAllowedText),
    );
    html(StatusCode::METHOD_NOT_ALLOWED, view, page)
}

/// Last touches on every reply: a page for axum's bare 405s (which keep their `Allow`), and
/// `Cache-Control: no-store` wherever a handler did not choose otherwise.
async fn finish<G: Gate>(
    State(portal): State<Arc<Portal<G>>>,
    headers: HeaderMap,
    response: Response,
) -> Response {
    let mut response = if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(CONTENT_TYPE)
    {
        let (mut parts, _) = response.into_parts();
        let view = portal.view(portal.choose(&headers, None), portal.is_own_host(&headers));
        let page = method_not_allowed(&view);
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.extend(page.headers().clone());
        Response::from_parts(parts, page.into_body())
    } else {
        response
    };
    response
        .headers_mut()
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_and_dnsmasq_line_follow_the_portal_url() {
        assert_eq!(
            dnsmasq_captive_option("http://10.66.0.1:8080/").unwrap(),
            "dhcp-option=114,\"http://10.66.0.1:8080/captive-portal/api\""
        );
        assert_eq!(
            api_url("http://portal.lan/welcome/").unwrap(),
            "http://portal.lan/captive-portal/api"
        );
        assert!(api_url("not a url").is_err());
    }

    #[test]
    fn a_vouchers_link_fills_the_code_in() {
        assert_eq!(code_in_query(Some("code=abcd-2345")), "ABCD2345");
        assert_eq!(code_in_query(Some("lang=fr&code=ABCD2345")), "ABCD2345");
        // Not a code, or markup: nothing filled in.
        assert_eq!(code_in_query(Some("code=%3Cscript%3E")), "");
        assert_eq!(code_in_query(Some("code=ABC")), "");
        assert_eq!(code_in_query(None), "");
    }

    #[test]
    fn codes_in_logs_are_cut_to_two_characters() {
        assert_eq!(redacted("ABCD2345"), "AB…");
        assert_eq!(redacted("é"), "é…");
        assert_eq!(redacted(""), "…");
    }

    #[test]
    fn only_wrong_codes_count_as_guesses() {
        let status = ClientStatus {
            bytes_left: 1,
            seconds_left: 1,
            code_expires: true,
            other_account: false,
        };
        for (outcome, counts) in [
            (Ok(status), false),
            (Err(Refusal::Invalid), true),
            (Err(Refusal::Expired), true),
            (Err(Refusal::UsedUp), true),
            (Err(Refusal::Revoked), true),
            (Err(Refusal::NotOurs), true),
            (Err(Refusal::Unlisted), true),
            (Err(Refusal::BackendUnreachable), false),
            (Err(Refusal::UnknownDevice), false),
            (Err(Refusal::AddressHeld), false),
            (Err(Refusal::NotSaved), false),
            (Err(Refusal::NotEnforced), false),
            (Err(Refusal::Internal), false),
            (Err(Refusal::WrongAccount), true),
            (Err(Refusal::NotConsumer), false),
            (Err(Refusal::AccountUnreachable), false),
            (Err(Refusal::OtherAccount), false),
        ] {
            let outcome: Redeem = outcome;
            assert_eq!(
                outcome.is_err_and(Refusal::is_failed_guess),
                counts,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn account_fields_are_both_or_neither_and_only_where_accounts_are() {
        let form = |email: &str, password: &str| LoginForm {
            code: "ABCD2345".to_owned(),
            email: email.to_owned(),
            password: Secret::new(password),
        };
        assert_eq!(account_of(&form("", ""), true), Ok(None));
        assert_eq!(account_of(&form("  ", ""), false), Ok(None));
        assert_eq!(
            account_of(&form(" a@example.com ", " pass word "), true),
            Ok(Some(Account {
                email: "a@example.com".to_owned(),
                password: Secret::new(" pass word "),
            }))
        );
        assert_eq!(
            account_of(&form("a@example.com", ""), true),
            Err(Msg::ErrorAccountIncomplete)
        );
        assert_eq!(
            account_of(&form("", "secret"), true),
            Err(Msg::ErrorAccountIncomplete)
        );
        assert_eq!(
            account_of(&form("a@example.com", "secret"), false),
            Err(Msg::ErrorAccountsOff)
        );
    }

    #[test]
    fn wait_messages_name_the_seconds() {
        let languages = i18n::Languages::default();
        let one = Wait {
            seconds: 1,
            global: false,
        };
        assert!(too_many_text(languages.tr(0), one).contains("Wait 1 s,"));
        let many = Wait {
            seconds: 1042,
            global: true,
        };
        assert!(too_many_text(languages.tr(0), many).contains("Wait 1,042 s,"));
        let fr = languages.tr(languages.find("fr").unwrap());
        assert!(too_many_text(fr, many).contains("Attendez 1\u{202f}042 s,"));
    }

    #[test]
    fn bad_codes_are_explained_with_bad_code_text() {
        let languages = i18n::Languages::default();
        let bad = AccessCode::parse("ABC").unwrap_err();
        assert_eq!(
            bad_code_text(languages.tr(0), &bad),
            "That does not look like an access code: a code has 8 characters; this one has 3."
        );
        let es = languages.tr(languages.find("es").unwrap());
        assert_eq!(
            bad_code_text(es, &bad),
            "Eso no parece un código de acceso: un código tiene 8 caracteres y este tiene 3."
        );
        let bad = AccessCode::parse("ABCD234<").unwrap_err();
        assert!(bad_code_text(es, &bad).contains("«<»"));
    }

    #[test]
    fn the_lang_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(lang_cookie(&headers), None);
        headers.append(COOKIE, HeaderValue::from_static("a=1; lang = fr ;b=2"));
        assert_eq!(lang_cookie(&headers), Some("fr"));
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("xlang=es"));
        headers.append(COOKIE, HeaderValue::from_static("lang=es"));
        assert_eq!(lang_cookie(&headers), Some("es"));
    }
}
