//! The portal over real HTTP on loopback: a fake [`Gate`] (a map of online clients and a
//! scripted redemption result), the real server from `serve` on 127.0.0.1:0, reqwest with
//! redirects off so the 302s are visible, and raw TCP where reqwest cannot be rude enough.
//!
//! Set `PORTAL_PAGES_DIR` to keep a form, an error and a success page as HTML files (and
//! the form with the account part, closed and with a wrong password).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeshare_gateway::net::Mac;
use edgeshare_gateway::portal::{self, Account, ClientStatus, Gate, PortalSettings, Redeem};
use edgeshare_gateway::refusal::Refusal;
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::secret::Secret;
use edgeshare_shared::supervisor::{Stopped, Supervisor};
use reqwest::StatusCode;
use reqwest::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LANGUAGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION,
    RETRY_AFTER, SET_COOKIE, VARY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORM: &str = "application/x-www-form-urlencoded";
const APPLE_SUCCESS: &str = "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>";
const FIREFOX_CANONICAL: &str =
    r#"<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>"#;
const STATUS: ClientStatus = ClientStatus {
    bytes_left: 512 * 1_048_576 + 300_000,
    seconds_left: 4_320,
    code_expires: true,
    other_account: false,
};

/// The daemon as the portal sees it: who is online, and what the next redemption returns.
struct FakeGate {
    online: Mutex<HashMap<IpAddr, ClientStatus>>,
    next: Mutex<Redeem>,
    /// How long a redemption takes.
    delay: Mutex<Duration>,
    redeemed: Mutex<Vec<(IpAddr, String)>>,
    /// The account that came with each redemption.
    accounts_given: Mutex<Vec<Option<Account>>>,
    /// Whether it offers sign-in with a network account (backend codes).
    accounts: bool,
    /// Addresses that belong to one device: their MAC.
    devices: Mutex<HashMap<IpAddr, Mac>>,
}

impl FakeGate {
    fn new() -> Self {
        FakeGate {
            online: Mutex::new(HashMap::new()),
            next: Mutex::new(Err(Refusal::Invalid)),
            delay: Mutex::new(Duration::ZERO),
            redeemed: Mutex::new(Vec::new()),
            accounts_given: Mutex::new(Vec::new()),
            accounts: false,
            devices: Mutex::new(HashMap::new()),
        }
    }

    fn script(&self, outcome: Redeem) {
        *self.next.lock().unwrap() = outcome;
    }

    fn set_online(&self, ip: IpAddr, status: Option<ClientStatus>) {
        let mut online = self.online.lock().unwrap();
        match status {
            Some(status) => online.insert(ip, status),
            None => online.remove(&ip),
        };
    }
}

impl Gate for FakeGate {
    async fn redeem(&self, ip: IpAddr, code: AccessCode, account: Option<Account>) -> Redeem {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.accounts_given.lock().unwrap().push(account);
        self.redeemed
            .lock()
            .unwrap()
            .push((ip, code.as_str().to_owned()));
        let outcome = *self.next.lock().unwrap();
        if let Ok(status) = outcome {
            self.set_online(ip, Some(status));
        }
        outcome
    }

    async fn status(&self, ip: IpAddr) -> Option<ClientStatus> {
        self.online.lock().unwrap().get(&ip).copied()
    }

    /// Each loopback address is a device of its own, unless `devices` names its MAC.
    async fn mac(&self, ip: IpAddr) -> Option<Mac> {
        if let Some(mac) = self.devices.lock().unwrap().get(&ip) {
            return Some(*mac);
        }
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                Some(Mac([2, 0, a, b, c, d]))
            }
            IpAddr::V6(_) => None,
        }
    }

    fn accounts(&self) -> bool {
        self.accounts
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Running {
    addr: SocketAddr,
    url: String,
    gate: Arc<FakeGate>,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The portal under a supervisor, as the daemon runs it: how the stop went, and what
    /// `serve` returned (an error if it never returned).
    server: tokio::task::JoinHandle<(
        Stopped,
        Result<std::io::Result<()>, tokio::sync::oneshot::error::RecvError>,
    )>,
}

/// The supervisor's wait for the portal's connections at the stop, in these tests.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// A client whose connections come from `source` (any 127.0.0.0/8 address is loopback).
fn client_from(source: IpAddr) -> reqwest::Client {
    // reqwest is built without a default rustls provider; the project's own TLS config brings
    // ring, so no process-wide provider is needed even for plain HTTP.
    reqwest::Client::builder()
        .tls_backend_preconfigured(edgeshare_shared::tls::client_config(None).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn start(tune: impl FnOnce(&mut PortalSettings)) -> Running {
    start_with(FakeGate::new(), tune).await
}

/// A portal whose gate offers sign-in with a network account, as with backend codes.
async fn start_with_accounts(tune: impl FnOnce(&mut PortalSettings)) -> Running {
    let gate = FakeGate {
        accounts: true,
        ..FakeGate::new()
    };
    start_with(gate, tune).await
}

async fn start_with(gate: FakeGate, tune: impl FnOnce(&mut PortalSettings)) -> Running {
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/");
    let mut settings = PortalSettings::new(url.clone());
    tune(&mut settings);
    let gate = Arc::new(gate);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut supervisor = Supervisor::new(STOP_WITHIN);
    let (serving, tasks) = (Arc::clone(&gate), supervisor.spawner());
    let (served, result) = tokio::sync::oneshot::channel();
    supervisor.spawn_essential("portal", async move {
        let _ = served.send(portal::serve(listener, serving, settings, tasks).await);
        Ok(())
    });
    let server = tokio::spawn(async move {
        let stopped = supervisor
            .run_until(async {
                let _ = stopped.await;
            })
            .await;
        (stopped, result.await)
    });
    Running {
        addr,
        url,
        gate,
        http: client_from(LOCALHOST),
        stop: Some(stop),
        server,
    }
}

impl Running {
    fn at(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> Reply {
        Reply::from(self.http.get(self.at(path)).send().await.unwrap()).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.get(self.at(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    async fn get_in(&self, path: &str, language: &str) -> Reply {
        self.get_with(path, &[("accept-language", language)]).await
    }

    async fn get_as_host(&self, host: &str, path: &str) -> Reply {
        let request = self.http.get(self.at(path)).header(HOST, host);
        Reply::from(request.send().await.unwrap()).await
    }

    async fn post_code(&self, http: &reqwest::Client, code: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("code", code)
            .finish();
        self.post(http, FORM, body).await
    }

    /// The form with a code and a network account's email and password.
    async fn post_account(&self, code: &str, email: &str, password: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("code", code)
            .append_pair("email", email)
            .append_pair("password", password)
            .finish();
        self.post(&self.http, FORM, body).await
    }

    async fn post(&self, http: &reqwest::Client, content_type: &str, body: String) -> Reply {
        let request = http
            .post(self.at("/login"))
            .header(CONTENT_TYPE, content_type)
            .body(body);
        Reply::from(request.send().await.unwrap()).await
    }

    async fn stop(self) {
        self.stop_and_join().await;
    }

    /// Stops the portal; how the stop of its tasks went.
    async fn stop_and_join(mut self) -> Stopped {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stops after the shutdown signal");
        let (stopped, served) = result.unwrap();
        served.expect("serve returned by itself").unwrap();
        assert_eq!(stopped.failed, None);
        stopped
    }

    /// Android's connectivity probe, as the client on loopback.
    async fn android_probe(&self) -> Reply {
        self.get_as_host("connectivitycheck.gstatic.com", "/generate_204")
            .await
    }

    /// The client is online: the probe says so.
    async fn assert_online(&self) {
        assert_eq!(self.android_probe().await.status, StatusCode::NO_CONTENT);
    }

    /// A login with code ABCD2345 written on a raw connection, the reply left unread.
    async fn raw_login(&self) -> TcpStream {
        let body = "code=ABCD2345";
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// The server still answers a normal request.
    async fn assert_alive(&self) {
        let reply = self.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
}

/// A provider's language file `name` in `dir`.
fn write_locale(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The connection reads its end at once: nothing is left serving it.
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(200), stream.read_to_end(&mut rest));
    assert!(read.await.is_ok(), "closed by the time the stop returned");
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Self {
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    fn header(&self, name: reqwest::header::HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn assert_redirect_to(&self, url: &str) {
        assert_eq!(self.status, StatusCode::FOUND, "{}", self.body);
        assert_eq!(self.header(LOCATION), Some(url));
        assert_eq!(self.header(CACHE_CONTROL), Some("no-store"));
    }

    fn assert_page(&self, status: StatusCode, text: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("text/html; charset=utf-8"));
        assert_eq!(self.header(CACHE_CONTROL), Some("no-store"));
        assert!(self.body.contains(text), "{text:?} not in {}", self.body);
    }

    /// The error is in the alert, announced to screen readers.
    fn assert_alert(&self, status: StatusCode, text: &str) {
        self.assert_page(status, "role=\"alert\"");
        let alert = self.body.split("role=\"alert\"").nth(1).unwrap();
        let alert = alert.split("</div>").next().unwrap();
        assert!(alert.contains(text), "{text:?} not in the alert {alert}");
    }
}

/// (path, host, status once online, content type, body once online)
const PROBES: &[(&str, &str, u16, Option<&str>, &str)] = &[
    (
        "/generate_204",
        "connectivitycheck.gstatic.com",
        204,
        None,
        "",
    ),
    ("/gen_204", "clients3.google.com", 204, None, ""),
    (
        "/hotspot-detect.html",
        "captive.apple.com",
        200,
        Some("text/html"),
        APPLE_SUCCESS,
    ),
    (
        "/library/test/success.html",
        "www.apple.com",
        200,
        Some("text/html"),
        APPLE_SUCCESS,
    ),
    (
        "/connecttest.txt",
        "www.msftconnecttest.com",
        200,
        Some("text/plain"),
        "Microsoft Connect Test",
    ),
    (
        "/ncsi.txt",
        "www.msftncsi.com",
        200,
        Some("text/plain"),
        "Microsoft NCSI",
    ),
    (
        "/canonical.html",
        "detectportal.firefox.com",
        200,
        Some("text/html"),
        FIREFOX_CANONICAL,
    ),
    (
        "/success.txt?ipv4",
        "detectportal.firefox.com",
        200,
        Some("text/plain"),
        "success\n",
    ),
];

#[tokio::test]
async fn probes_redirect_while_captive_and_succeed_once_online() {
    let portal = start(|_| {}).await;
    let own_host = portal.addr.to_string();
    for (path, host, _, _, _) in PROBES {
        for host in [*host, own_host.as_str()] {
            portal
                .get_as_host(host, path)
                .await
                .assert_redirect_to(&portal.url);
        }
    }
    portal.gate.set_online(LOCALHOST, Some(STATUS));
    for (path, host, status, content_type, body) in PROBES {
        for host in [*host, own_host.as_str()] {
            let reply = portal.get_as_host(host, path).await;
            assert_eq!(reply.status.as_u16(), *status, "{host}{path}");
            assert_eq!(reply.header(CONTENT_TYPE), *content_type, "{host}{path}");
            assert_eq!(reply.body, *body, "{host}{path}");
            assert_eq!(reply.header(LOCATION), None);
        }
    }
    // And back: a client cut off is captive again at once.
    portal.gate.set_online(LOCALHOST, None);
    portal.android_probe().await.assert_redirect_to(&portal.url);
    portal.stop().await;
}

#[tokio::test]
async fn any_host_and_path_redirects_while_captive() {
    let portal = start(|_| {}).await;
    let own = portal.addr.to_string();
    for (host, path) in [
        ("example.com", "/"),
        ("example.com", "/status"),
        ("example.com", "/some/page.html?q=1&r=<x>"),
        ("neverssl.com", "/online"),
        ("10.66.0.1", "/"),
        (own.as_str(), "/favicon.ico"),
        (own.as_str(), "/captive-portal"),
    ] {
        let reply = portal.get_as_host(host, path).await;
        reply.assert_redirect_to(&portal.url);
        // Clients that do not follow redirects get a link.
        assert!(reply.body.contains(&format!("href=\"{}\"", portal.url)));
    }
    let head = portal
        .http
        .head(portal.at("/anything"))
        .header(HOST, "example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::FOUND);
    assert_eq!(head.headers()[LOCATION], portal.url.as_str());

    // Online: a small page, not a redirect back to the portal (which would loop).
    portal.gate.set_online(LOCALHOST, Some(STATUS));
    for (host, path) in [("example.com", "/"), ("example.com", "/a/b")] {
        portal
            .get_as_host(host, path)
            .await
            .assert_page(StatusCode::OK, "You are online");
    }
    portal.stop().await;
}

#[tokio::test]
async fn the_form_and_the_status_page() {
    let portal = start(|_| {}).await;
    let form = portal.get("/").await;
    form.assert_page(StatusCode::OK, "<form method=\"post\" action=\"/login\">");
    for needle in [
        "<html lang=\"en\">",
        "<label for=\"code\">",
        "inputmode=\"text\"",
        "autocapitalize=\"characters\"",
        "autocomplete=\"one-time-code\"",
    ] {
        assert!(form.body.contains(needle), "{needle}");
    }
    assert!(!form.body.contains("role=\"alert\""));
    assert!(form.header(CONTENT_SECURITY_POLICY).is_some());

    portal
        .get("/status")
        .await
        .assert_page(StatusCode::OK, "You are not online yet");
    assert!(portal.get("/status").await.body.contains("href=\"/\""));

    let reply = portal.get("/login").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header(LOCATION), Some("/"));

    portal.gate.set_online(LOCALHOST, Some(STATUS));
    for path in ["/", "/status"] {
        let reply = portal.get(path).await;
        reply.assert_page(StatusCode::OK, "<dd>512 MB</dd>");
        assert!(reply.body.contains("<dd>1 h 12 min</dd>"));
    }
    portal.stop().await;
}

#[tokio::test]
async fn each_redemption_outcome_has_its_page() {
    let portal = start(|_| {}).await;
    let pages = std::env::var_os("PORTAL_PAGES_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &pages {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("form.html"), portal.get("/").await.body).unwrap();
    }
    // (outcome, status, text in the alert, Retry-After)
    let cases = [
        (
            Err(Refusal::Invalid),
            StatusCode::FORBIDDEN,
            "That code is not valid",
            None,
        ),
        (
            Err(Refusal::Expired),
            StatusCode::FORBIDDEN,
            "has expired",
            None,
        ),
        (
            Err(Refusal::UsedUp),
            StatusCode::FORBIDDEN,
            "data is used up",
            None,
        ),
        (
            Err(Refusal::Revoked),
            StatusCode::FORBIDDEN,
            "cancelled by the Wi-Fi provider",
            None,
        ),
        (
            Err(Refusal::BackendUnreachable),
            StatusCode::SERVICE_UNAVAILABLE,
            "Can't check codes right now — the provider's connection to the code service is \
             down; try again in a minute",
            Some("60"),
        ),
        (
            Err(Refusal::UnknownDevice),
            StatusCode::CONFLICT,
            "Reconnect to the Wi-Fi and try again",
            None,
        ),
        (
            Err(Refusal::Internal),
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            None,
        ),
    ];
    for (outcome, status, text, retry) in cases {
        portal.gate.script(outcome);
        let reply = portal.post_code(&portal.http, "abcd-2345").await;
        // The alert text is HTML-escaped ("can&#39;t"); compare with the escaped form.
        reply.assert_alert(status, &text.replace('\'', "&#39;"));
        assert_eq!(reply.header(RETRY_AFTER), retry, "{outcome:?}");
        // What was typed comes back, for fixing a typo.
        assert!(reply.body.contains("value=\"abcd-2345\""), "{outcome:?}");
        assert!(reply.body.contains("aria-invalid=\"true\""));
        if let (Some(dir), Err(Refusal::Invalid)) = (&pages, outcome) {
            std::fs::write(dir.join("error.html"), &reply.body).unwrap();
        }
    }
    // The gate got the code in its normal form, from this client.
    let redeemed = portal.gate.redeemed.lock().unwrap().clone();
    assert_eq!(redeemed.len(), cases.len());
    assert!(
        redeemed
            .iter()
            .all(|(ip, code)| *ip == LOCALHOST && code == "ABCD2345")
    );

    portal.gate.script(Ok(STATUS));
    let reply = portal.post_code(&portal.http, "ABCD 2345").await;
    reply.assert_page(StatusCode::OK, "Your code was accepted");
    assert!(reply.body.contains("<dd>512 MB</dd>"));
    assert!(reply.body.contains("<dd>1 h 12 min</dd>"));
    if let Some(dir) = &pages {
        std::fs::write(dir.join("success.html"), &reply.body).unwrap();
    }
    // Online now: the probes say so.
    portal.assert_online().await;
    portal.stop().await;
}

#[tokio::test]
async fn malformed_codes_are_explained_and_escaped() {
    let portal = start(|_| {}).await;
    let reply = portal.post_code(&portal.http, "ABC").await;
    reply.assert_alert(
        StatusCode::BAD_REQUEST,
        "a code has 8 characters; this one has 3",
    );
    let reply = portal.post_code(&portal.http, "ABCD234O").await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "&#39;O&#39; is not one of them");

    let hostile = "\"><script>alert(1)</script>";
    let reply = portal.post_code(&portal.http, hostile).await;
    reply.assert_alert(
        StatusCode::BAD_REQUEST,
        "&#39;&quot;&#39; is not one of them",
    );
    assert!(!reply.body.contains("<script>"), "{}", reply.body);
    assert!(
        reply
            .body
            .contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\"")
    );

    let reply = portal.post_code(&portal.http, &"A".repeat(65)).await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "too long for an access code");
    assert!(!reply.body.contains(&"A".repeat(65)));
    // 64 characters is a bad code, not a too-long field.
    let reply = portal.post_code(&portal.http, &"A".repeat(64)).await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "this one has 64");

    // Malformed codes never reached the gate and did not count as guesses.
    assert!(portal.gate.redeemed.lock().unwrap().is_empty());
    portal.gate.script(Err(Refusal::Invalid));
    let reply = portal.post_code(&portal.http, "ABCD2345").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    portal.stop().await;
}

#[tokio::test]
async fn too_many_wrong_codes_are_refused_with_a_wait() {
    let portal = start(|settings| {
        settings.per_device_attempts = 4;
        settings.global_attempts = 4;
    })
    .await;
    portal.gate.script(Err(Refusal::Invalid));
    for _ in 0..4 {
        let reply = portal.post_code(&portal.http, "ABCD2345").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let reply = portal.post_code(&portal.http, "ABCD2345").await;
    reply.assert_alert(StatusCode::TOO_MANY_REQUESTS, "Too many wrong codes");
    let wait: u64 = reply.header(RETRY_AFTER).unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(reply.body.contains(&format!("Wait {wait} s,")));
    assert!(reply.body.contains("value=\"ABCD2345\""));
    assert_eq!(portal.gate.redeemed.lock().unwrap().len(), 4);

    // Another address of the same device is the same device: held back as well, unchecked.
    let same_device = IpAddr::from([127, 0, 0, 2]);
    portal
        .gate
        .devices
        .lock()
        .unwrap()
        .insert(same_device, Mac([2, 0, 127, 0, 0, 1]));
    let reply = portal
        .post_code(&client_from(same_device), "ABCD2345")
        .await;
    reply.assert_alert(StatusCode::TOO_MANY_REQUESTS, "Too many wrong codes");
    assert_eq!(portal.gate.redeemed.lock().unwrap().len(), 4);

    // Another device is not blocked by the first one's limit. The global window is full (4),
    // but a device within its typo allowance (fewer than 3 failures) still has its codes
    // checked; past it, the global limit holds it back.
    let third = client_from(IpAddr::from([127, 0, 0, 3]));
    for _ in 0..3 {
        let reply = portal.post_code(&third, "ABCD2345").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let reply = portal.post_code(&third, "ABCD2345").await;
    reply.assert_alert(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many codes have been tried",
    );
    assert!(reply.header(RETRY_AFTER).is_some());
    assert_eq!(portal.gate.redeemed.lock().unwrap().len(), 7);
    portal.stop().await;
}

#[tokio::test]
async fn successes_and_outages_do_not_count_as_guesses() {
    let portal = start(|settings| settings.per_device_attempts = 2).await;
    for outcome in [
        Ok(STATUS),
        Err(Refusal::BackendUnreachable),
        Err(Refusal::UnknownDevice),
    ] {
        portal.gate.script(outcome);
        for _ in 0..4 {
            let reply = portal.post_code(&portal.http, "ABCD2345").await;
            assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{outcome:?}");
        }
    }
    portal.stop().await;
}

const EMAIL: &str = "consumer@example.com";
const PASSWORD: &str = "Consumer@123 <&>";

/// The password is never put back into a page, in any form.
fn assert_no_password(reply: &Reply) {
    for form in [
        PASSWORD,
        "Consumer@123",
        "Consumer%40123",
        "Consumer&#64;123",
    ] {
        assert!(!reply.body.contains(form), "{form} in {}", reply.body);
    }
}

#[tokio::test]
async fn the_account_fields_are_offered_only_where_accounts_are() {
    let local = start(|_| {}).await;
    let form = local.get("/").await;
    form.assert_page(StatusCode::OK, "name=\"code\"");
    assert!(!form.body.contains("name=\"email\""), "{}", form.body);
    assert!(!form.body.contains("name=\"password\""), "{}", form.body);
    local.stop().await;

    let backend = start_with_accounts(|_| {}).await;
    let form = backend.get("/?lang=es").await;
    for needle in [
        "<details>",
        "name=\"email\" type=\"email\"",
        "name=\"password\" type=\"password\"",
        "autocomplete=\"current-password\"",
        "Iniciar sesión con tu cuenta de la red (opcional)",
        "Esta página no está cifrada",
    ] {
        assert!(form.body.contains(needle), "{needle} in {}", form.body);
    }
    let form = backend.get("/?lang=fr").await;
    assert!(form.body.contains("Mot de passe"), "{}", form.body);
    backend.stop().await;
}

#[tokio::test]
async fn a_consumer_signs_in_with_the_code() {
    let portal = start_with_accounts(|_| {}).await;
    portal.gate.script(Ok(STATUS));
    let reply = portal
        .post_account("abcd 2345", &format!(" {EMAIL} "), PASSWORD)
        .await;
    reply.assert_page(StatusCode::OK, "Your code was accepted");
    assert!(
        reply.body.contains(&format!(
            "Signed in as {EMAIL}: the data you use with this code counts for your account."
        )),
        "{}",
        reply.body
    );
    assert_no_password(&reply);
    // The gate got the code and the account (the email trimmed, the password as typed).
    assert_eq!(
        portal.gate.redeemed.lock().unwrap().clone(),
        [(LOCALHOST, "ABCD2345".to_owned())]
    );
    assert_eq!(
        portal.gate.accounts_given.lock().unwrap().clone(),
        [Some(Account {
            email: EMAIL.to_owned(),
            password: Secret::new(PASSWORD),
        })]
    );
    // Without an account, the gate gets none and the page says nothing of one.
    portal.gate.set_online(LOCALHOST, None);
    let reply = portal.post_code(&portal.http, "ABCD2345").await;
    reply.assert_page(StatusCode::OK, "Your code was accepted");
    assert!(!reply.body.contains("Signed in"));
    assert_eq!(portal.gate.accounts_given.lock().unwrap()[1], None);
    portal.stop().await;
}

#[tokio::test]
async fn each_account_outcome_has_its_page() {
    let portal = start_with_accounts(|_| {}).await;
    // (outcome, status, text in the alert, Retry-After)
    let cases = [
        (
            Err(Refusal::WrongAccount),
            StatusCode::FORBIDDEN,
            "Wrong email or password",
            None,
        ),
        (
            Err(Refusal::NotConsumer),
            StatusCode::FORBIDDEN,
            "provider&#39;s or administrator&#39;s account",
            None,
        ),
        (
            Err(Refusal::AccountUnreachable),
            StatusCode::SERVICE_UNAVAILABLE,
            "Can&#39;t check your account right now",
            Some("60"),
        ),
        (
            Err(Refusal::OtherAccount),
            StatusCode::CONFLICT,
            "already in use on this Wi-Fi with another account, or without one",
            None,
        ),
    ];
    let pages = std::env::var_os("PORTAL_PAGES_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &pages {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("form-account.html"), portal.get("/").await.body).unwrap();
    }
    for (outcome, status, text, retry) in cases {
        portal.gate.script(outcome);
        let reply = portal.post_account("ABCD2345", EMAIL, PASSWORD).await;
        reply.assert_alert(status, text);
        if let (Some(dir), Err(Refusal::WrongAccount)) = (&pages, outcome) {
            std::fs::write(dir.join("error-account.html"), &reply.body).unwrap();
        }
        assert_eq!(reply.header(RETRY_AFTER), retry, "{outcome:?}");
        // The part is open, marked invalid, with the code and the email back for a fix.
        assert!(reply.body.contains("<details open>"), "{outcome:?}");
        assert!(reply.body.contains("id=\"account-error\""), "{outcome:?}");
        assert!(
            reply
                .body
                .contains(&format!("aria-invalid=\"true\" value=\"{EMAIL}\"")),
            "{}",
            reply.body
        );
        assert!(reply.body.contains("value=\"ABCD2345\""), "{outcome:?}");
        assert_no_password(&reply);
        // The device is not let in.
        assert!(portal.gate.status(LOCALHOST).await.is_none());
    }
    portal.stop().await;
}

/// A wrong password counts against the device as a wrong code does: passwords cannot be
/// tried through the portal faster than codes. Refusals that are not a wrong guess do not.
#[tokio::test]
async fn wrong_passwords_count_as_guesses() {
    let portal = start_with_accounts(|settings| settings.per_device_attempts = 3).await;
    for outcome in [
        Err(Refusal::NotConsumer),
        Err(Refusal::AccountUnreachable),
        Err(Refusal::OtherAccount),
    ] {
        portal.gate.script(outcome);
        for _ in 0..4 {
            let reply = portal.post_account("ABCD2345", EMAIL, PASSWORD).await;
            assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{outcome:?}");
        }
    }
    portal.gate.script(Err(Refusal::WrongAccount));
    let tried = portal.gate.redeemed.lock().unwrap().len();
    for _ in 0..3 {
        let reply = portal.post_account("ABCD2345", EMAIL, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let reply = portal.post_account("ABCD2345", EMAIL, PASSWORD).await;
    reply.assert_alert(StatusCode::TOO_MANY_REQUESTS, "Wait");
    assert_eq!(portal.gate.redeemed.lock().unwrap().len(), tried + 3);
    assert_no_password(&reply);
    portal.stop().await;
}

#[tokio::test]
async fn account_fields_are_both_or_neither_and_refused_where_there_are_no_accounts() {
    let portal = start_with_accounts(|_| {}).await;
    for (email, password) in [(EMAIL, ""), ("", PASSWORD), ("  ", PASSWORD)] {
        let reply = portal.post_account("ABCD2345", email, password).await;
        reply.assert_alert(
            StatusCode::BAD_REQUEST,
            "Enter both your account&#39;s email and its password",
        );
        assert_no_password(&reply);
    }
    // Longer than an account's: refused before anything is asked, nothing echoed.
    let long = "e".repeat(portal::MAX_EMAIL_CHARS + 1);
    let reply = portal.post_account("ABCD2345", &long, PASSWORD).await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "longer than an account");
    assert!(!reply.body.contains(&long));
    let long = "p".repeat(portal::MAX_PASSWORD_CHARS + 1);
    let reply = portal.post_account("ABCD2345", EMAIL, &long).await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "longer than an account");
    // Still the code first: a malformed code is explained as before.
    let reply = portal.post_account("ABC", EMAIL, PASSWORD).await;
    reply.assert_alert(StatusCode::BAD_REQUEST, "a code has 8 characters");
    assert_no_password(&reply);
    assert!(portal.gate.redeemed.lock().unwrap().is_empty());
    portal.stop().await;

    // Local codes: no accounts; a form that carries one anyway is refused, not ignored.
    let local = start(|_| {}).await;
    local.gate.script(Ok(STATUS));
    let reply = local.post_account("ABCD2345", EMAIL, PASSWORD).await;
    reply.assert_alert(
        StatusCode::BAD_REQUEST,
        "This Wi-Fi does not use network accounts",
    );
    assert_no_password(&reply);
    assert!(local.gate.redeemed.lock().unwrap().is_empty());
    // Empty account fields are no account.
    let reply = local.post_account("ABCD2345", "", "").await;
    reply.assert_page(StatusCode::OK, "Your code was accepted");
    local.stop().await;
}

#[tokio::test]
async fn bad_requests_get_4xx_pages_and_the_server_lives_on() {
    let portal = start(|_| {}).await;
    let http = &portal.http;

    // 413: a body over 8 KiB, announced by Content-Length…
    let big = format!("code=ABCD2345&pad={}", "x".repeat(9000));
    let reply = portal.post(http, FORM, big).await;
    reply.assert_alert(
        StatusCode::PAYLOAD_TOO_LARGE,
        "far more than an access code",
    );
    // …or chunked, with no length up front.
    let mut request = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nb\r\ncode=A&pad=\r\n",
        portal.addr
    );
    for _ in 0..9 {
        request.push_str(&format!("3e8\r\n{}\r\n", "x".repeat(1000)));
    }
    request.push_str("0\r\n\r\n");
    let raw = raw_exchange(portal.addr, request.as_bytes(), false).await;
    assert!(raw.starts_with("HTTP/1.1 413 "), "{raw}");

    // 400: not a form, no code field, two code fields, not UTF-8.
    for (content_type, body) in [
        ("application/json", r#"{"code":"ABCD2345"}"#.to_owned()),
        ("text/plain", "code=ABCD2345".to_owned()),
        (FORM, "other=1".to_owned()),
        (FORM, "code=ABCD2345&code=EFGH2345".to_owned()),
        (FORM, String::new()),
    ] {
        let reply = portal.post(http, content_type, body.clone()).await;
        reply.assert_alert(StatusCode::BAD_REQUEST, "did not arrive in a form");
        assert!(!reply.body.contains("ABCD2345"), "{body}");
    }
    let reply = http
        .post(portal.at("/login"))
        .body("code=ABCD2345")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let reply = http
        .post(portal.at("/login"))
        .header(CONTENT_TYPE, FORM)
        .body(b"code=AB\xffCD".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);

    // 405 with Allow, on the portal's own paths and elsewhere.
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/", "GET,HEAD"),
        (reqwest::Method::PUT, "/login", "GET,HEAD,POST"),
        (reqwest::Method::POST, "/status", "GET,HEAD"),
        (reqwest::Method::PATCH, "/captive-portal/api", "GET,HEAD"),
        (reqwest::Method::POST, "/generate_204", "GET,HEAD"),
        (
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            "/coffee",
            "GET,HEAD",
        ),
    ] {
        let response = http
            .request(method.clone(), portal.at(path))
            .send()
            .await
            .unwrap();
        let reply = Reply::from(response).await;
        reply.assert_page(StatusCode::METHOD_NOT_ALLOWED, "cannot be used that way");
        let mut allowed: Vec<&str> = reply.header(ALLOW).unwrap().split(',').collect();
        allowed.sort_unstable();
        assert_eq!(allowed.join(","), allow, "{method} {path}");
    }

    // Garbage on the wire is hyper's to refuse; the server carries on.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/1.1\r\nHost: \x01\x02\r\nX: \xff\r\n\r\n",
        b"POST /login HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"\r\n\r\n\r\n",
    ] {
        let raw = raw_exchange(portal.addr, garbage, true).await;
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 4"), "{raw}");
        portal.assert_alive().await;
    }
    // A connection that sends half a body and hangs up.
    let mut stream = TcpStream::connect(portal.addr).await.unwrap();
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM}\r\nContent-Length: 100\r\n\r\ncode=",
        portal.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    drop(stream);

    portal.assert_alive().await;
    portal.stop().await;
}

/// Sends `request` on a fresh connection (then closes our side if `close`) and reads until the
/// server closes the connection.
async fn raw_exchange(addr: SocketAddr, request: &[u8], close: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    if close {
        stream.shutdown().await.unwrap();
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => panic!("the server neither answered nor closed within 5 s: {reply:?}"),
            // A reset after the reply is fine: the reply is what counts.
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn rfc_8908_api_both_ways() {
    let portal = start(|_| {}).await;
    for host in ["10.66.0.1:8080", "example.com"] {
        let reply = portal.get_as_host(host, "/captive-portal/api").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header(CONTENT_TYPE), Some("application/captive+json"));
        assert_eq!(reply.header(CACHE_CONTROL), Some("private"));
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"captive": true, "user-portal-url": portal.url})
        );
    }
    portal.gate.set_online(LOCALHOST, Some(STATUS));
    let reply = portal.get("/captive-portal/api").await;
    assert_eq!(reply.header(CONTENT_TYPE), Some("application/captive+json"));
    assert_eq!(reply.header(CACHE_CONTROL), Some("private"));
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "captive": false,
            "user-portal-url": portal.url,
            "seconds-remaining": 4_320,
            "bytes-remaining": 512 * 1_048_576 + 300_000,
            "can-extend-session": false,
        })
    );
    portal.stop().await;
}

#[tokio::test]
async fn a_dropped_login_still_completes_in_the_gate() {
    let portal = start(|_| {}).await;
    portal.gate.script(Ok(STATUS));
    *portal.gate.delay.lock().unwrap() = Duration::from_millis(300);
    let stream = portal.raw_login().await;
    // Hang up while the gate is still working.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), async {
        while portal.gate.redeemed.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the redemption ran to the end");
    // The client is online although it never saw the success page.
    portal.assert_online().await;
    portal.stop().await;
}

/// At the stop, a login in flight is answered and the portal waits for it; a client holding
/// a connection with half a request, or none yet, is cut off at once. Every connection's
/// task is joined before the stop returns: none outlives the portal.
#[tokio::test]
async fn at_the_stop_a_login_in_flight_is_answered_and_every_connection_joined() {
    let portal = start(|_| {}).await;
    portal.gate.script(Ok(STATUS));
    *portal.gate.delay.lock().unwrap() = Duration::from_millis(500);
    let mut login = portal.raw_login().await;
    let mut trickling = TcpStream::connect(portal.addr).await.unwrap();
    trickling
        .write_all(b"GET / HTTP/1.1\r\nHost: 10.66.0.1\r\nUser-Agent: Moz")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(portal.addr).await.unwrap();
    // The gate is working on the login when the stop comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gate = Arc::clone(&portal.gate);
    let started = tokio::time::Instant::now();
    let stopped = portal.stop_and_join().await;
    let took = started.elapsed();
    assert_eq!(Arc::strong_count(&gate), 1, "no task holds the portal");
    // The login took its 500 ms; the others held nothing in flight and were not waited for.
    assert!(took < STOP_WITHIN, "no wait for the deadline: {took:?}");
    assert_eq!(stopped.aborted, Vec::<&str>::new());
    // Joined means closed: each socket reads its end at once, nothing is left serving it.
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_millis(200), login.read_to_string(&mut reply))
        .await
        .expect("the login's connection is closed")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "answered: {reply}");
    assert!(reply.contains("Your code was accepted"), "{reply}");
    for stream in [&mut trickling, &mut idle] {
        assert_closed(stream).await;
    }
}

/// A login still in the gate at the deadline is cut short: the stop takes the deadline, no
/// longer, and neither the connection's task nor the redemption's outlives it.
#[tokio::test]
async fn at_the_deadline_a_stuck_login_is_aborted_and_joined() {
    let portal = start(|_| {}).await;
    *portal.gate.delay.lock().unwrap() = Duration::from_secs(60);
    let mut login = portal.raw_login().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gate = Arc::clone(&portal.gate);
    let started = tokio::time::Instant::now();
    let stopped = portal.stop_and_join().await;
    let took = started.elapsed();
    assert!(
        took >= STOP_WITHIN && took < STOP_WITHIN + Duration::from_secs(1),
        "the deadline, no longer: {took:?}"
    );
    assert_eq!(
        stopped.aborted,
        vec!["code redemption", "portal connection"]
    );
    assert_eq!(Arc::strong_count(&gate), 1, "no task holds the portal");
    assert!(gate.redeemed.lock().unwrap().is_empty(), "cut short");
    assert_closed(&mut login).await;
}

/// A client that sends no headers is disconnected after the header timeout, and meanwhile
/// others are served.
#[tokio::test]
async fn a_silent_client_does_not_hold_the_portal() {
    let server = start(|_| {}).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Others are served while it waits.
    let reply = server.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    // After the header timeout the server closes the silent connection.
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(
        portal::HEADER_TIMEOUT + Duration::from_secs(5),
        silent.read(&mut buf),
    )
    .await
    .expect("the portal must close a connection that sends no headers");
    // Closed (0 bytes) or answered with a 408 and closed: either way, not held.
    let n = read.unwrap_or(0);
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Connections a device opened while captive (browsers open some ahead of use) reach the
/// portal through the kernel's redirect; when the device logs in they are closed, so its
/// next requests go to the real sites. Other devices' connections stay open.
#[tokio::test]
async fn logging_in_closes_the_devices_other_connections() {
    let server = start(|_| {}).await;
    let mut preconnected = TcpStream::connect(server.addr).await.unwrap();
    let other_socket = tokio::net::TcpSocket::new_v4().unwrap();
    other_socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other_device = other_socket.connect(server.addr).await.unwrap();
    server.gate.script(Ok(STATUS));
    let reply = server.post_code(&server.http, "ABCD2345").await;
    assert_eq!(reply.status, StatusCode::OK);

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), preconnected.read(&mut buf))
        .await
        .expect("the device's idle connection is closed at its login");
    assert_eq!(read.unwrap_or(0), 0, "closed without a reply");

    let mut other_device = other_device;
    let still_open =
        tokio::time::timeout(Duration::from_millis(300), other_device.read(&mut buf)).await;
    assert!(
        still_open.is_err(),
        "another device's connection stays open"
    );
}

/// The page's language as the browser is told it: `<html lang>`, `Content-Language`, `Vary`.
fn assert_language(reply: &Reply, tag: &str) {
    assert!(
        reply.body.contains(&format!("<html lang=\"{tag}\">")),
        "{tag}: {}",
        reply.body
    );
    assert_eq!(reply.header(CONTENT_LANGUAGE), Some(tag));
    assert_eq!(reply.header(VARY), Some("Accept-Language, Cookie"));
}

#[tokio::test]
async fn accept_language_picks_the_pages_language() {
    let portal = start(|_| {}).await;
    for (accept, tag, text) in [
        (
            "es-MX,es;q=0.9,en;q=0.5",
            "es",
            "<label for=\"code\">Código de acceso</label>",
        ),
        (
            "de-DE, fr;q=0.8, en;q=0.7",
            "fr",
            "<label for=\"code\">Code d&#39;accès</label>",
        ),
        ("en-GB", "en", "<label for=\"code\">Access code</label>"),
        ("de", "en", "<label for=\"code\">Access code</label>"),
        (
            "<script>;q=9, ,;;*;q=x",
            "en",
            "<label for=\"code\">Access code</label>",
        ),
    ] {
        let reply = portal.get_with("/", &[("accept-language", accept)]).await;
        reply.assert_page(StatusCode::OK, text);
        assert_language(&reply, tag);
    }
    // Bytes that are not text at all: English, and the server lives on.
    let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n", portal.addr).into_bytes();
    request.extend_from_slice(
        b"Accept-Language: \xff\xfe;q=\x80\r\nCookie: lang=\xc3\r\nConnection: close\r\n\r\n",
    );
    let raw = raw_exchange(portal.addr, &request, false).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("<html lang=\"en\">"), "{raw}");
    // Errors too.
    portal.gate.script(Err(Refusal::Expired));
    let reply = Reply::from(
        portal
            .http
            .post(portal.at("/login"))
            .header(CONTENT_TYPE, FORM)
            .header("accept-language", "fr-CA")
            .body("code=ABCD2345")
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_alert(StatusCode::FORBIDDEN, "Ce code a expiré.");
    assert_language(&reply, "fr");
    // The status page in Spanish, updating itself.
    portal.gate.set_online(LOCALHOST, Some(STATUS));
    let reply = portal.get_in("/status", "es").await;
    reply.assert_page(StatusCode::OK, "<dt>Datos restantes</dt><dd>512 MB</dd>");
    assert!(
        reply
            .body
            .contains("<meta http-equiv=\"refresh\" content=\"60;url=/status\">")
    );
    assert_language(&reply, "es");
    // Under another host (a redirected connection of an online device) too, in French.
    let reply = portal
        .get_with(
            "/a/page",
            &[("host", "example.com"), ("accept-language", "fr-CA")],
        )
        .await;
    reply.assert_page(StatusCode::OK, "<dt>Données restantes</dt><dd>512 Mo</dd>");
    assert!(!reply.body.contains("http-equiv"));
    assert!(
        reply
            .body
            .contains(&format!("href=\"{}status\"", portal.url))
    );
    portal.stop().await;
}

#[tokio::test]
async fn a_language_link_is_remembered_in_a_cookie() {
    let portal = start(|_| {}).await;
    let reply = portal.get_in("/?lang=fr", "es").await;
    reply.assert_page(StatusCode::OK, "<h1>Se connecter</h1>");
    assert_language(&reply, "fr");
    let cookie = reply.header(SET_COOKIE).unwrap();
    assert_eq!(
        cookie,
        "lang=fr; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly"
    );
    // The links to the other languages, no script needed.
    assert!(
        reply
            .body
            .contains("<a href=\"/?lang=es\" hreflang=\"es\" lang=\"es\">Español</a>")
    );
    // The cookie beats Accept-Language; a bad or unknown ?lang= is ignored and not echoed.
    let with_cookie = [("cookie", "lang=fr"), ("accept-language", "es")];
    let reply = portal.get_with("/status", &with_cookie).await;
    reply.assert_page(StatusCode::OK, "Vous n&#39;êtes pas encore connecté");
    assert_eq!(reply.header(SET_COOKIE), None);
    for query in ["?lang=%3Cscript%3E", "?lang=de", "?lang=", "?lang=fr%00"] {
        let reply = portal.get_with(&format!("/{query}"), &with_cookie).await;
        assert_language(&reply, "fr");
        assert_eq!(reply.header(SET_COOKIE), None, "{query}");
        assert!(!reply.body.contains("<script"), "{query}");
    }
    let reply = portal.get_with("/", &[("cookie", "lang=\"><b>")]).await;
    assert_language(&reply, "en");
    portal.stop().await;
}

/// A portal with the provider's look, loaded as the daemon loads it.
async fn start_branded(dir: &std::path::Path, brand: &str) -> Running {
    let text = format!(
        "[lan]\ninterface = \"wlan0\"\n[portal]\nlocales_dir = \"{}\"\n{brand}",
        dir.display()
    );
    let config: edgeshare_gateway::config::GatewayConfig = toml::from_str(&text).unwrap();
    let (look, problems) = portal::Look::load(&config.portal);
    assert!(problems.is_empty(), "{problems:?}");
    start(|settings| settings.look = look).await
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

#[tokio::test]
async fn the_providers_name_logo_colours_and_terms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("logo.png"), PNG).unwrap();
    std::fs::write(
        dir.path().join("terms.txt"),
        "No <b>spam</b>.\n\nBe kind & fair.",
    )
    .unwrap();
    let brand = format!(
        "[portal.brand]\nname = \"Café <Sol>\"\nlogo = \"{}\"\nterms_file = \"{}\"\n\
         [portal.brand.colors]\naccent = \"#C60\"\n",
        dir.path().join("logo.png").display(),
        dir.path().join("terms.txt").display()
    );
    let portal = start_branded(dir.path(), &brand).await;
    let form = portal.get("/").await;
    form.assert_page(
        StatusCode::OK,
        "<header><img src=\"/brand/logo\" alt=\"\"><span>Café &lt;Sol&gt;</span></header>",
    );
    assert!(
        form.body
            .contains("<title>Get online · Café &lt;Sol&gt;</title>")
    );
    assert!(
        form.body
            .contains(":root{--brand:#cc6600;--on-brand:#000000}</style>")
    );
    assert!(
        form.body
            .contains("<a href=\"/terms\">Read the terms of use</a>")
    );
    let csp = form.header(CONTENT_SECURITY_POLICY).unwrap();
    assert!(
        csp.contains("img-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");

    let logo = portal
        .http
        .get(portal.at("/brand/logo"))
        .send()
        .await
        .unwrap();
    assert_eq!(logo.status(), StatusCode::OK);
    assert_eq!(logo.headers()[CONTENT_TYPE], "image/png");
    assert_eq!(logo.headers()[CACHE_CONTROL], "max-age=3600");
    assert!(
        logo.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(logo.bytes().await.unwrap().as_ref(), PNG);
    // Only on the portal's own host.
    portal
        .get_as_host("example.com", "/brand/logo")
        .await
        .assert_redirect_to(&portal.url);

    let terms = portal.get_in("/terms", "es").await;
    terms.assert_page(StatusCode::OK, "<h1>Condiciones de uso</h1>");
    assert!(
        terms
            .body
            .contains("<p>No &lt;b&gt;spam&lt;/b&gt;.</p>\n<p>Be kind &amp; fair.</p>"),
        "{}",
        terms.body
    );
    portal.stop().await;

    // Without a logo or terms, their paths are like any other.
    let portal = start(|_| {}).await;
    for path in ["/brand/logo", "/terms"] {
        portal.get(path).await.assert_redirect_to(&portal.url);
    }
    assert!(!portal.get("/").await.body.contains("/terms"));
    portal.stop().await;
}

#[tokio::test]
async fn a_providers_language_file_adds_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    write_locale(
        dir.path(),
        "sw.toml",
        "[language]\nname = \"Kiswahili\"\n[form]\ntitle = \"Ingia mtandaoni\"\nlabel = \"Nambari ya <siri>\"\n",
    );
    write_locale(dir.path(), "es.toml", "form.title = \"¡Bienvenido!\"\n");
    let portal = start_branded(dir.path(), "").await;
    let reply = portal.get_in("/", "sw-KE, en;q=0.5").await;
    reply.assert_page(StatusCode::OK, "<h1>Ingia mtandaoni</h1>");
    assert_language(&reply, "sw");
    assert!(
        reply
            .body
            .contains("<label for=\"code\">Nambari ya &lt;siri&gt;</label>")
    );
    // What the file lacks is English.
    assert!(reply.body.contains("8 letters and digits"));
    let reply = portal.get_in("/", "es").await;
    reply.assert_page(StatusCode::OK, "<h1>¡Bienvenido!</h1>");
    assert!(reply.body.contains("Código de acceso"));
    assert!(reply.body.contains("lang=\"sw\">Kiswahili</a>"));
    portal.stop().await;
}

#[tokio::test]
async fn a_bad_language_file_leaves_the_portal_serving() {
    let dir = tempfile::tempdir().unwrap();
    write_locale(dir.path(), "es.toml", "form.title = \"{code}\"\n");
    std::fs::write(dir.path().join("fr.toml"), b"\xff\xfe garbage").unwrap();
    let config: edgeshare_gateway::config::GatewayConfig = toml::from_str(&format!(
        "[lan]\ninterface = \"wlan0\"\n[portal]\nlocales_dir = \"{}\"\n",
        dir.path().display()
    ))
    .unwrap();
    let (_, problems) = portal::Look::load(&config.portal);
    let shown: Vec<String> = problems
        .iter()
        .map(|(key, message)| format!("{key}: {message}"))
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].contains("portal.locales_dir: ")
            && shown[0].contains("es.toml: `form.title` uses {code}"),
        "{shown:?}"
    );
    assert!(shown[1].contains("fr.toml: cannot read"), "{shown:?}");
    // The daemon's way: logged, and the built-in texts serve.
    let portal = start(|settings| settings.look = portal::Look::from_config(&config.portal)).await;
    let reply = portal.get_in("/", "es").await;
    reply.assert_page(StatusCode::OK, "<h1>Conéctate</h1>");
    portal.stop().await;
}

/// A connection from `source` (a loopback address) to the portal, silent after connecting.
async fn silent_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the portal closed `stream` within `within` (rather than holding it open).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One device's connections are counted together, whatever address each comes from: its
/// share, from a few of its addresses; another device is not affected.
#[tokio::test]
async fn a_devices_addresses_share_its_connections() {
    let server = start(|_| {}).await;
    let device = Mac([2, 0, 0, 0, 0, 7]);
    for last in 10..20 {
        server
            .gate
            .devices
            .lock()
            .unwrap()
            .insert(IpAddr::from([127, 0, 0, last]), device);
    }
    // Its share from its first few addresses, round-robin.
    let mut held = Vec::new();
    for n in 0..portal::MAX_CONNECTIONS_PER_DEVICE {
        let last = 10 + (n % portal::MAX_ADDRESSES_PER_DEVICE) as u8;
        held.push(silent_from([127, 0, 0, last], server.addr).await);
    }
    // One more from an address it holds connections from: closed at once.
    let mut over = silent_from([127, 0, 0, 10], server.addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    // After one of them ends, a connection from a fifth address is closed too: the device
    // uses its few addresses already.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = silent_from([127, 0, 0, 19], server.addr).await;
    assert!(closed_within(&mut fifth, Duration::from_secs(2)).await);
    // The held ones stay open, and another device is served.
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(10)).await);
    }
    let reply = server.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    server.stop().await;
}

/// Past the portal's connections, a new one waits for a free one rather than being closed.
#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_its_turn() {
    let server = start(|_| {}).await;
    // Silent devices, each holding its share.
    let per_device = portal::MAX_CONNECTIONS_PER_DEVICE;
    let mut held = Vec::new();
    for n in 0..portal::MAX_CONNECTIONS {
        let last = u8::try_from(100 + n / per_device).unwrap();
        held.push(silent_from([127, 0, 1, last], server.addr).await);
    }
    // Every connection is taken (by silent devices): a request from another device waits…
    let waiting = tokio::spawn({
        let http = server.http.clone();
        let url = server.url.clone();
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "answered while every connection was taken"
    );
    // …and is answered once one of them ends.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once a connection was free")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
