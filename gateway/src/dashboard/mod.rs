//! The provider's dashboard: a web page, for the provider only, with the devices online and
//! their live rates, the codes (make, revoke, print), usage over the day and the week, the
//! account's earnings and the gateway's health.
//!
//! # Who can reach it
//! It listens on `dashboard.listen` (loopback by default: on the Pi itself, or through an SSH
//! tunnel; the WAN side's address if the provider wants it on their home network), never on
//! the LAN consumers join: the daemon refuses to start it on a LAN address, the firewall's
//! input chain drops LAN traffic to any port but the portal's, and a connection from an
//! address on the LAN's networks is answered 403 all the same. It is off until
//! `dashboard.password` is set (`EDGESHARE_DASHBOARD__PASSWORD` in gateway.env).
//!
//! # Logins and forms
//! `POST /login` with the password opens a login: a random token in an `HttpOnly`,
//! `SameSite=Strict` cookie (see `auth.rs`; wrong passwords, and forms, are rate-limited
//! per address and overall, 429 with `Retry-After`). Every form posts the login's CSRF
//! token; a post without it is refused (403), as is one whose `Origin` is another site's.
//! Replies carry a strict Content-Security-Policy (scripts and everything else from this
//! server only, no framing) and `Cache-Control: no-store`.
//!
//! | request                          | logged in                       | not logged in      |
//! |----------------------------------|---------------------------------|--------------------|
//! | `GET /`                          | the overview                    | 303 to `/login`    |
//! | `GET /login`, `POST /login`      | the form; 303 to `/` on success | same               |
//! | `GET /live.json`                 | [`view::Live`] as JSON          | 401                |
//! | `GET /live.js`                   | the live refresh script         | same               |
//! | `POST /codes` (mb, hours, never, count) | makes codes, 303 to `/?made=…` | 401          |
//! | `POST /revoke` (code), `POST /kick` (mac) | 303 to `/?…`           | 401                |
//! | `GET /vouchers?code=…&code=…`    | printable vouchers of those codes | 303 to `/login`  |
//! | `POST /logout`                   | 303 to `/login`                 | 303 to `/login`    |
//!
//! A form that is wrong (no number where one belongs, too many codes) gets the overview with
//! the error and 400; the daemon carries on.

mod auth;
pub mod chart;
mod pages;
pub mod view;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::secret::Secret;
use edgeshare_shared::supervisor::Spawner;
use time::OffsetDateTime;

use self::auth::{Auth, Refused};
use self::pages::Notice;
use self::view::{Agent, Earnings, Live, Overview, Usage};
use crate::code_book::{CodeRow, Order};
use crate::net::{Mac, Millis, Network};
use crate::portal::limiter::Wait;
use crate::vouchers::{self, Sheet};

/// The login cookie's name.
const COOKIE: &str = "edgeshare_dashboard";
/// The largest request body accepted, 413 beyond (before it is read): a code order is a few
/// dozen bytes.
const MAX_FORM_BYTES: usize = 4096;
/// The most codes one voucher sheet prints.
const MAX_VOUCHERS: usize = 200;
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const LIVE_JS: &str = include_str!("live.js");

/// What the dashboard asks the gateway. The daemon implements it; tests use a fake.
pub trait Source: Send + Sync + 'static {
    /// The devices, sessions and health now; `None` if the daemon is stopping.
    fn live(&self) -> impl Future<Output = Option<Live>> + Send;
    fn codes(&self) -> impl Future<Output = Result<Vec<CodeRow>, String>> + Send;
    fn create_codes(
        &self,
        order: Order,
    ) -> impl Future<Output = Result<Vec<CodeRow>, String>> + Send;
    /// Revokes `code` and cuts its devices off; the reply says what happened.
    fn revoke(&self, code: AccessCode) -> impl Future<Output = Result<String, String>> + Send;
    fn kick(&self, mac: Mac) -> impl Future<Output = Result<String, String>> + Send;
    /// Usage per hour over the last day and per day over the last week.
    fn usage(&self, now: Millis) -> impl Future<Output = Result<Usage, String>> + Send;
    /// `None` with local codes.
    fn earnings(&self) -> impl Future<Output = Option<Result<Earnings, String>>> + Send;
    fn agent(&self) -> impl Future<Output = Agent> + Send;
    /// Whether codes come from the backend (they may then never expire).
    fn backend(&self) -> bool;
    /// Checks an order before it is sent (the same rules as `codes create`).
    fn check(&self, order: &Order) -> Result<(), String>;
}

/// The dashboard's fixed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A `Secret`: its `Debug` does not show it.
    pub password: Secret,
    /// The provider's name on the page and the vouchers.
    pub provider: String,
    /// For the vouchers.
    pub ssid: Option<String>,
    pub portal_url: String,
    /// Peers on these networks (the LAN's) are refused.
    pub lan: Vec<Network>,
}

struct Dashboard<S> {
    source: S,
    settings: Settings,
    auth: Mutex<Auth>,
}

impl<S> Dashboard<S> {
    fn auth(&self) -> MutexGuard<'_, Auth> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Shared<S> = State<Arc<Dashboard<S>>>;
type Peer = ConnectInfo<SocketAddr>;

/// The dashboard's routes; each request needs its peer's `ConnectInfo<SocketAddr>`, as
/// [`serve`] gives it.
pub fn router<S: Source>(source: S, settings: Settings) -> Router {
    let dashboard = Arc::new(Dashboard {
        auth: Mutex::new(Auth::new(settings.password.expose())),
        source,
        settings,
    });
    Router::new()
        .route("/", get(overview::<S>))
        .route("/login", get(login_page::<S>).post(log_in::<S>))
        .route("/logout", post(log_out::<S>))
        .route("/live.json", get(live::<S>))
        .route("/live.js", get(live_js))
        .route("/codes", post(create_codes::<S>))
        .route("/revoke", post(revoke::<S>))
        .route("/kick", post(kick::<S>))
        .route("/vouchers", get(print_vouchers::<S>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&dashboard),
            guard::<S>,
        ))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` until the stop of `tasks`, each connection one of its
/// tasks.
pub async fn serve<S: Source>(
    listener: tokio::net::TcpListener,
    source: S,
    settings: Settings,
    tasks: Spawner,
) {
    let app = router(source, settings);
    edgeshare_shared::serve::serve(listener, app, tasks, "dashboard connection").await;
}

/// Before every request: peers on the LAN are refused, and so are posts from other sites;
/// after it, the security headers.
async fn guard<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = canonical(peer.ip());
    let mut response = if dashboard.settings.lan.iter().any(|net| net.contains(ip)) {
        tracing::warn!(%ip, "dashboard: refused a connection from the LAN");
        (
            StatusCode::FORBIDDEN,
            "The dashboard is not served to the LAN.\n",
        )
            .into_response()
    } else if request.method() == axum::http::Method::POST && !same_origin(request.headers()) {
        (
            StatusCode::FORBIDDEN,
            "This form was sent from another site.\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it Chromium sends `Origin: null` with the dashboard's own
    // forms, which then cannot be told from a sandboxed attacker's.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A post without `Origin` (older browsers, curl) is judged by its CSRF token alone; one
/// with an `Origin` must come from the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .map(|u| match u.port() {
            Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        });
    matches!((host, origin_host), (Some(host), Some(origin)) if host.eq_ignore_ascii_case(&origin))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The login token in the request's cookie.
fn token(headers: &HeaderMap) -> Option<String> {
    crate::portal::cookie(headers, COOKIE).map(str::to_owned)
}

/// The login's token and CSRF token, if the request is logged in.
fn logged_in<S>(dashboard: &Dashboard<S>, headers: &HeaderMap) -> Option<(String, String)> {
    let token = token(headers)?;
    let csrf = dashboard.auth().csrf(&token, Millis::now())?;
    Some((token, csrf))
}

/// Why a form was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Too many forms from this address lately.
    TooMany(Wait),
    NotLoggedIn,
    /// No CSRF token, another login's, or an ended login's.
    BadToken,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::TooMany(wait) => {
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Too many forms: try again in {} seconds.\n", wait.seconds),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds));
                return response;
            }
            Refusal::NotLoggedIn => (StatusCode::UNAUTHORIZED, "Log in first.\n"),
            Refusal::BadToken => (
                StatusCode::FORBIDDEN,
                "This form is stale or was not sent from the dashboard: reload the page and try again.\n",
            ),
        }
        .into_response()
    }
}

/// The fields of a url-encoded form (its size is capped by the router's body limit).
fn form(body: &Bytes) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The form's fields if it comes from a login with the right CSRF token, and `peer` has not
/// sent too many lately.
fn checked_form<S>(
    dashboard: &Dashboard<S>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Vec<(String, String)>, Refusal> {
    dashboard
        .auth()
        .form(canonical(peer.ip()), Millis::now())
        .map_err(Refusal::TooMany)?;
    let fields = form(body);
    let token = token(headers).ok_or(Refusal::NotLoggedIn)?;
    let csrf = field(&fields, "csrf").unwrap_or_default();
    if !dashboard.auth().check_form(&token, csrf, Millis::now()) {
        return Err(Refusal::BadToken);
    }
    Ok(fields)
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    crate::codes::os_random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn login_page<S: Source>(State(dashboard): Shared<S>) -> Response {
    html(
        StatusCode::OK,
        pages::login(&dashboard.settings.provider, None),
    )
}

async fn log_in<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let password = field(&fields, "password").unwrap_or_default();
    let (token, csrf) = match (random_token(), random_token()) {
        (Ok(token), Ok(csrf)) => (token, csrf),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(error = %err, "dashboard: no random numbers from the OS");
            return (StatusCode::INTERNAL_SERVER_ERROR, "No random numbers.\n").into_response();
        }
    };
    let ip = canonical(peer.ip());
    let outcome = dashboard
        .auth()
        .log_in(ip, password, Millis::now(), token.clone(), csrf);
    let provider = &dashboard.settings.provider;
    match outcome {
        Ok(()) => {
            tracing::info!(%ip, "dashboard: provider logged in");
            let mut response = see_other("./");
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(Refused::WrongPassword) => {
            tracing::warn!(%ip, "dashboard: wrong password");
            html(
                StatusCode::UNAUTHORIZED,
                pages::login(provider, Some("Wrong password.")),
            )
        }
        Err(Refused::TooMany(wait)) => {
            tracing::warn!(%ip, global = wait.global, "dashboard: too many wrong passwords; held back");
            let mut response = html(
                StatusCode::TOO_MANY_REQUESTS,
                pages::login(
                    provider,
                    Some(&format!(
                        "Too many wrong passwords: try again in {} seconds.",
                        wait.seconds
                    )),
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds));
            response
        }
    }
}

async fn log_out<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = checked_form(&dashboard, peer, &headers, &body) {
        return refusal.into_response();
    }
    if let Some(token) = token(&headers) {
        dashboard.auth().log_out(&token);
    }
    let mut response = see_other("login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "edgeshare_dashboard=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

/// The overview with `notice` above it.
async fn render<S: Source>(
    dashboard: &Dashboard<S>,
    csrf: &str,
    status: StatusCode,
    notice: Notice,
) -> Response {
    let source = &dashboard.source;
    let now = Millis::now();
    let (live, codes, usage, earnings, agent) = tokio::join!(
        source.live(),
        source.codes(),
        source.usage(now),
        source.earnings(),
        source.agent()
    );
    let overview = Overview {
        live,
        codes,
        usage,
        earnings,
        agent,
    };
    html(
        status,
        pages::overview(
            &dashboard.settings.provider,
            &overview,
            csrf,
            source.backend(),
            &notice,
            OffsetDateTime::now_utc(),
        ),
    )
}

#[derive(Debug, serde::Deserialize)]
struct Outcome {
    made: Option<String>,
    revoked: Option<String>,
    kicked: Option<String>,
}

impl Outcome {
    /// The notice for an outcome named in the query: only values that parse (codes, a MAC)
    /// are shown, so the query cannot put text of its own on the page.
    fn notice(&self) -> Notice {
        if let Some(made) = &self.made {
            let codes: Vec<AccessCode> = made
                .split(',')
                .filter_map(|c| AccessCode::parse(c).ok())
                .take(MAX_VOUCHERS)
                .collect();
            if !codes.is_empty() {
                let list: Vec<&str> = codes.iter().map(AccessCode::as_str).collect();
                let query: Vec<String> = list.iter().map(|c| format!("code={c}")).collect();
                return Notice::Done(format!(
                    "Made {} code(s): <code>{}</code> · <a href=\"vouchers?{}\" target=\"_blank\">print them</a>",
                    codes.len(),
                    list.join("</code> <code>"),
                    query.join("&amp;")
                ));
            }
        }
        if let Some(code) = self
            .revoked
            .as_deref()
            .and_then(|c| AccessCode::parse(c).ok())
        {
            return Notice::Done(format!("Code <code>{}</code> revoked.", code.as_str()));
        }
        if let Some(mac) = self.kicked.as_deref().and_then(|m| m.parse::<Mac>().ok()) {
            return Notice::Done(format!("Device {mac} logged out."));
        }
        Notice::None
    }
}

async fn overview<S: Source>(
    State(dashboard): Shared<S>,
    headers: HeaderMap,
    Query(outcome): Query<Outcome>,
) -> Response {
    let Some((_, csrf)) = logged_in(&dashboard, &headers) else {
        return see_other("login");
    };
    render(&dashboard, &csrf, StatusCode::OK, outcome.notice()).await
}

async fn live<S: Source>(State(dashboard): Shared<S>, headers: HeaderMap) -> Response {
    if logged_in(&dashboard, &headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "Log in first.\n").into_response();
    }
    match dashboard.source.live().await {
        Some(live) => axum::Json(live).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway is stopping.\n",
        )
            .into_response(),
    }
}

async fn live_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
        .into_response()
}

/// Reads a code order from the form's fields; the message names the field.
fn order(fields: &[(String, String)]) -> Result<Order, String> {
    let number = |name: &str| -> Result<f64, String> {
        field(fields, name)
            .unwrap_or_default()
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{name}: give a number"))
    };
    let never = field(fields, "never").is_some();
    let count = number("count")?;
    if count.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&count) {
        return Err("count: give a whole number".to_owned());
    }
    Ok(Order {
        mb: number("mb")?,
        hours: if never { None } else { Some(number("hours")?) },
        count: count as u32,
    })
}

/// What a form asks the dashboard to do.
enum Action {
    Create(Order),
    Revoke(AccessCode),
    Kick(Mac),
}

/// Why a form did nothing: its status and the text shown above the overview.
type Failure = (StatusCode, String);

/// A form's handling: the login, its CSRF token and the rate limit checked, the fields
/// `read` into an action, the action done; then a redirect to the overview saying what was
/// done, or the overview with what went wrong.
async fn act<S: Source>(
    dashboard: &Dashboard<S>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
    read: impl FnOnce(&[(String, String)]) -> Result<Action, Failure>,
) -> Response {
    let fields = match checked_form(dashboard, peer, headers, body) {
        Ok(fields) => fields,
        Err(refusal) => return refusal.into_response(),
    };
    let csrf = field(&fields, "csrf").unwrap_or_default().to_owned();
    let outcome = match read(&fields) {
        Ok(action) => perform(&dashboard.source, action).await,
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(location) => see_other(&location),
        Err((status, text)) => render(dashboard, &csrf, status, Notice::Failed(text)).await,
    }
}

/// Does `action`; where the overview says so.
async fn perform<S: Source>(source: &S, action: Action) -> Result<String, Failure> {
    match action {
        Action::Create(order) => {
            let made = source
                .create_codes(order)
                .await
                .map_err(|err| (StatusCode::BAD_GATEWAY, format!("No codes made: {err}")))?;
            tracing::info!(count = made.len(), mb = order.mb, "dashboard: codes made");
            let list: Vec<&str> = made.iter().map(|row| row.code.as_str()).collect();
            Ok(format!("./?made={}", list.join(",")))
        }
        Action::Revoke(code) => {
            source
                .revoke(code.clone())
                .await
                .map_err(|err| (StatusCode::BAD_GATEWAY, format!("Not revoked: {err}")))?;
            Ok(format!("./?revoked={}", code.as_str()))
        }
        Action::Kick(mac) => {
            source
                .kick(mac)
                .await
                .map_err(|err| (StatusCode::NOT_FOUND, format!("Not logged out: {err}")))?;
            Ok(format!("./?kicked={mac}"))
        }
    }
}

async fn create_codes<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&dashboard, peer, &headers, &body, |fields| {
        order(fields)
            .and_then(|order| {
                dashboard.source.check(&order)?;
                Ok(Action::Create(order))
            })
            .map_err(|err| (StatusCode::BAD_REQUEST, format!("No codes made: {err}")))
    })
    .await
}

async fn revoke<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&dashboard, peer, &headers, &body, |fields| {
        AccessCode::parse(field(fields, "code").unwrap_or_default())
            .map(Action::Revoke)
            .map_err(|err| (StatusCode::BAD_REQUEST, format!("Not revoked: {err}")))
    })
    .await
}

async fn kick<S: Source>(
    State(dashboard): Shared<S>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    act(&dashboard, peer, &headers, &body, |fields| {
        field(fields, "mac")
            .unwrap_or_default()
            .parse::<Mac>()
            .map(Action::Kick)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "Not logged out: that is not a MAC address.".to_owned(),
                )
            })
    })
    .await
}

async fn print_vouchers<S: Source>(
    State(dashboard): Shared<S>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if logged_in(&dashboard, &headers).is_none() {
        return see_other("login");
    }
    let wanted: Vec<AccessCode> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "code")
        .filter_map(|(_, value)| AccessCode::parse(&value).ok())
        .take(MAX_VOUCHERS)
        .collect();
    let codes = match dashboard.source.codes().await {
        Ok(codes) => codes,
        Err(err) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("The codes could not be listed: {err}\n"),
            )
                .into_response();
        }
    };
    let vouchers: Vec<_> = codes
        .iter()
        .filter(|row| wanted.contains(&row.code))
        .map(CodeRow::voucher)
        .collect();
    if vouchers.is_empty() {
        return (StatusCode::NOT_FOUND, "None of these codes is yours.\n").into_response();
    }
    let sheet = Sheet {
        provider: Some(dashboard.settings.provider.clone()),
        ssid: dashboard.settings.ssid.clone(),
        portal_url: dashboard.settings.portal_url.clone(),
    };
    match vouchers::sheet(&sheet, &vouchers) {
        Ok(page) => html(StatusCode::OK, page),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The QR codes could not be made: {err}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn orders_are_read_from_the_form_with_the_field_named() {
        let ok = order(&fields(&[("mb", "500"), ("hours", "24"), ("count", "3")])).unwrap();
        assert_eq!(ok.mb, 500.0);
        assert_eq!(ok.hours, Some(24.0));
        assert_eq!(ok.count, 3);
        let never = order(&fields(&[("mb", "1"), ("never", "1"), ("count", "1")])).unwrap();
        assert_eq!(never.hours, None);
        assert!(
            order(&fields(&[("mb", "x"), ("hours", "1"), ("count", "1")]))
                .unwrap_err()
                .starts_with("mb:")
        );
        assert!(
            order(&fields(&[("mb", "1"), ("hours", "1"), ("count", "1.5")]))
                .unwrap_err()
                .starts_with("count:")
        );
        assert!(
            order(&fields(&[("mb", "1"), ("count", "1")]))
                .unwrap_err()
                .starts_with("hours:")
        );
    }

    #[test]
    fn notices_show_only_what_parses() {
        let outcome = |made: &str| Outcome {
            made: Some(made.to_owned()),
            revoked: None,
            kicked: None,
        };
        assert_eq!(outcome("<script>").notice(), Notice::None);
        match outcome("ABCD2345,<b>,EFGH6789").notice() {
            Notice::Done(text) => {
                assert!(text.contains("ABCD2345") && text.contains("EFGH6789"));
                assert!(!text.contains("<b>"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn posts_from_another_origin_are_told_apart() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8090"));
            if let Some(origin) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            }
            h
        };
        assert!(same_origin(&headers(None)));
        assert!(same_origin(&headers(Some("http://127.0.0.1:8090"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:9999"))));
        assert!(!same_origin(&headers(Some("null"))));
    }

    #[test]
    fn the_login_token_is_found_among_other_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; edgeshare_dashboard=abc; b=2"),
        );
        assert_eq!(token(&h).as_deref(), Some("abc"));
        assert_eq!(token(&HeaderMap::new()), None);
    }
}
