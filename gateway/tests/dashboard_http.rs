//! The provider's dashboard over real HTTP on loopback: a fake [`Source`] (a list of codes,
//! one device online), the real router served with the peer's address, and reqwest with
//! redirects off. The real daemon behind it is tested in gateway_netns.rs
//! (`the_dashboard_serves_the_provider_from_the_wan_side_and_never_the_lan`).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use edgeshare_gateway::code_book::{CodeRow, Order};
use edgeshare_gateway::dashboard::view::{
    Agent, DeviceLive, Earnings, Health, Live, SessionLive, Usage,
};
use edgeshare_gateway::dashboard::{self, Settings, Source};
use edgeshare_gateway::net::{Mac, Millis, Network};
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::secret::Secret;
use edgeshare_shared::supervisor::Supervisor;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, ORIGIN, RETRY_AFTER, SET_COOKIE};

const PASSWORD: &str = "the provider's password";
const FORM: &str = "application/x-www-form-urlencoded";
const MAC: &str = "02:00:00:66:00:02";

/// Cloned into the server; the test keeps a clone to see what the dashboard did.
#[derive(Clone)]
struct FakeSource {
    codes: Arc<Mutex<Vec<CodeRow>>>,
    kicked: Arc<Mutex<Vec<Mac>>>,
}

fn code(text: &str) -> AccessCode {
    AccessCode::parse(text).unwrap()
}

fn row(text: &str, mb: f64) -> CodeRow {
    // Unused so far: all of it remains.
    let (total_mb, remaining_mb) = (mb, mb);
    CodeRow {
        code: code(text),
        total_mb,
        remaining_mb,
        expires: None,
        revoked: false,
    }
}

impl Source for FakeSource {
    async fn live(&self) -> Option<Live> {
        Some(Live {
            at_ms: 1,
            sessions: vec![SessionLive {
                code: code("ABCD2345"),
                started_ms: 0,
                expires_ms: 3_600_000,
                quota_bytes: 10 << 20,
                used_bytes: 1 << 20,
                consumer: Some("64f0c0ffee".into()),
                devices: vec![DeviceLive {
                    mac: MAC.parse().unwrap(),
                    ip: "10.66.0.2".parse().unwrap(),
                    also: vec!["fd00:66::2".parse().unwrap()],
                    up_bytes: 1000,
                    down_bytes: (1 << 20) - 1000,
                    up_rate: 100.0,
                    down_rate: 250_000.0,
                }],
            }],
            health: Health::default(),
        })
    }

    async fn codes(&self) -> Result<Vec<CodeRow>, String> {
        Ok(self.codes.lock().unwrap().clone())
    }

    async fn create_codes(&self, order: Order) -> Result<Vec<CodeRow>, String> {
        let made: Vec<CodeRow> = ["MADE2345", "MADE6789"]
            .iter()
            .take(order.count as usize)
            .map(|c| row(c, order.mb))
            .collect();
        self.codes.lock().unwrap().extend(made.clone());
        Ok(made)
    }

    async fn revoke(&self, code: AccessCode) -> Result<String, String> {
        let mut codes = self.codes.lock().unwrap();
        let row = codes
            .iter_mut()
            .find(|r| r.code == code)
            .ok_or("no such code")?;
        row.revoked = true;
        Ok("revoked".into())
    }

    async fn kick(&self, mac: Mac) -> Result<String, String> {
        if mac.to_string() != MAC {
            return Err(format!("no online device has MAC {mac}"));
        }
        self.kicked.lock().unwrap().push(mac);
        Ok("kicked".into())
    }

    async fn usage(&self, _now: Millis) -> Result<Usage, String> {
        Ok(Usage {
            hours: vec![("10h".into(), 5 << 20), ("11h".into(), 1 << 20)],
            days: vec![("Fri 04".into(), 6 << 20)],
        })
    }

    async fn earnings(&self) -> Option<Result<Earnings, String>> {
        Some(Ok(Earnings {
            name: "<script>alert('name')</script>".into(),
            points: 42.0,
            bytes_shared: "44040192".into(),
        }))
    }

    async fn agent(&self) -> Agent {
        Agent::Unreachable("<b>refused</b>".into())
    }

    fn backend(&self) -> bool {
        true
    }

    fn check(&self, order: &Order) -> Result<(), String> {
        if order.count > 2 {
            return Err("count: 1 to 2 codes at a time".into());
        }
        Ok(())
    }
}

struct Served {
    base: String,
    source: FakeSource,
}

/// The dashboard on 127.0.0.1:0, with 127.0.0.2 standing for the LAN.
async fn serve() -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let source = FakeSource {
        codes: Arc::new(Mutex::new(vec![row("ABCD2345", 500.0)])),
        kicked: Arc::default(),
    };
    let settings = Settings {
        password: Secret::new(PASSWORD),
        provider: "Café <Ana>".into(),
        ssid: Some("Ana's Wi-Fi".into()),
        portal_url: "http://10.66.0.1:8080/".into(),
        lan: vec![Network {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            prefix: 32,
        }],
    };
    // Under a supervisor, as the daemon runs it; never stopped.
    let mut supervisor = Supervisor::new(std::time::Duration::from_secs(1));
    let (serving, tasks) = (source.clone(), supervisor.spawner());
    supervisor.spawn_essential("dashboard", async move {
        dashboard::serve(listener, serving, settings, tasks).await;
        Ok(())
    });
    tokio::spawn(supervisor.run_until(std::future::pending()));
    Served { base, source }
}

fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(edgeshare_shared::tls::client_config(None).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::V4(ip))
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    client_from(Ipv4Addr::LOCALHOST)
}

/// Sends `password` to the login form from `from`.
async fn send_password(
    served: &Served,
    from: &reqwest::Client,
    password: &str,
) -> reqwest::Response {
    from.post(format!("{}/login", served.base))
        .header("content-type", FORM)
        .body(format!("password={}", urlencode(password)))
        .send()
        .await
        .unwrap()
}

/// Logs in; the cookie to send and the page's CSRF token.
async fn log_in(served: &Served) -> (String, String) {
    let reply = send_password(served, &client(), PASSWORD).await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let set = reply.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = get(served, &cookie, "/").await.text().await.unwrap();
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[at..].split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `GET path` with the login's cookie.
async fn get(served: &Served, cookie: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", served.base))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

async fn get_without_session(served: &Served, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", served.base))
        .send()
        .await
        .unwrap()
}

async fn post(served: &Served, cookie: &str, path: &str, body: &str) -> reqwest::Response {
    client()
        .post(format!("{}{path}", served.base))
        .header(COOKIE, cookie)
        .header("content-type", FORM)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// A form post with the session's CSRF token after `fields`.
async fn post_with_token(
    served: &Served,
    cookie: &str,
    path: &str,
    fields: &str,
    csrf: &str,
) -> reqwest::Response {
    post(served, cookie, path, &format!("{fields}&csrf={csrf}")).await
}

#[tokio::test]
async fn a_peer_on_the_lan_is_refused_even_with_the_password() {
    let served = serve().await;
    let lan = client_from(Ipv4Addr::new(127, 0, 0, 2));
    for reply in [
        lan.get(format!("{}/login", served.base))
            .send()
            .await
            .unwrap(),
        send_password(&served, &lan, PASSWORD).await,
    ] {
        assert_eq!(reply.status(), StatusCode::FORBIDDEN);
        assert!(reply.headers().get(SET_COOKIE).is_none());
    }
}

#[tokio::test]
async fn without_a_login_nothing_is_shown_or_done() {
    let served = serve().await;
    let overview = get_without_session(&served, "/").await;
    assert_eq!(overview.status(), StatusCode::SEE_OTHER);
    assert_eq!(overview.headers()[LOCATION], "login");
    let live = get_without_session(&served, "/live.json").await;
    assert_eq!(live.status(), StatusCode::UNAUTHORIZED);
    let forged = post(
        &served,
        "edgeshare_dashboard=forged",
        "/kick",
        &format!("mac={MAC}&csrf=x"),
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(served.source.kicked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_overview_escapes_what_it_is_given_and_forms_need_the_csrf_token() {
    let served = serve().await;
    let (cookie, csrf) = log_in(&served).await;
    let page = get(&served, &cookie, "/").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    for raw in ["<script>alert", "<b>refused", "<Ana>"] {
        assert!(!html.contains(raw), "{raw} reached the page unescaped");
    }
    for shown in [
        MAC,
        "fd00:66::2",
        "244.1 KiB/s",
        "ABCD2345",
        "42",
        "Café &lt;Ana&gt;",
        "64f0c0ffee",
    ] {
        assert!(html.contains(shown), "{shown} is not on the page");
    }
    assert!(
        !html.contains("http://") || !html.contains("cdn"),
        "nothing from elsewhere"
    );

    let no_token = post(&served, &cookie, "/revoke", "code=ABCD2345").await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let wrong_token = post(&served, &cookie, "/revoke", "code=ABCD2345&csrf=0000").await;
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);
    let other_site = client()
        .post(format!("{}/revoke", served.base))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "http://evil.example")
        .header("content-type", FORM)
        .body(format!("code=ABCD2345&csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(other_site.status(), StatusCode::FORBIDDEN);
    assert!(!served.source.codes.lock().unwrap()[0].revoked);

    let revoked = post_with_token(&served, &cookie, "/revoke", "code=ABCD2345", &csrf).await;
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    assert!(served.source.codes.lock().unwrap()[0].revoked);
}

#[tokio::test]
async fn codes_are_made_and_printed_and_bad_orders_get_400() {
    let served = serve().await;
    let (cookie, csrf) = log_in(&served).await;
    let made = post_with_token(&served, &cookie, "/codes", "mb=50&hours=2&count=2", &csrf).await;
    assert_eq!(made.status(), StatusCode::SEE_OTHER);
    assert_eq!(made.headers()[LOCATION], "./?made=MADE2345,MADE6789");
    let notice = get(&served, &cookie, "/?made=MADE2345,MADE6789,%3Cscript%3E")
        .await
        .text()
        .await
        .unwrap();
    assert!(notice.contains("Made 2 code(s)"), "{notice}");
    assert!(notice.contains("vouchers?code=MADE2345&amp;code=MADE6789"));
    let sheet = get(
        &served,
        &cookie,
        "/vouchers?code=MADE2345&code=MADE6789&code=ZZZZ2345",
    )
    .await;
    assert_eq!(sheet.status(), StatusCode::OK);
    let sheet = sheet.text().await.unwrap();
    // Printed as MADE-2345: easier to read out.
    assert!(sheet.contains("MADE-2345") && sheet.contains("MADE-6789"));
    assert!(
        !sheet.contains("ZZZZ-2345"),
        "only the provider's own codes are printed"
    );
    assert!(
        sheet.contains("Ana&#39;s Wi-Fi"),
        "the Wi-Fi's name on the vouchers"
    );

    for (body, says) in [
        ("mb=&hours=2&count=1", "mb: give a number"),
        ("mb=5&hours=2&count=9", "count: 1 to 2 codes"),
        ("mb=5&hours=2&count=-1", "count: give a whole number"),
    ] {
        let reply = post_with_token(&served, &cookie, "/codes", body, &csrf).await;
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(reply.text().await.unwrap().contains(says), "{body}");
    }
    let huge = post(&served, &cookie, "/codes", &"x".repeat(10_000)).await;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = post_with_token(&served, &cookie, "/kick", "mac=02:00:00:00:00:99", &csrf).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(served.source.codes.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn wrong_passwords_are_held_back_and_the_live_json_follows_a_login() {
    let served = serve().await;
    let (cookie, _) = log_in(&served).await;
    let live: serde_json::Value = get(&served, &cookie, "/live.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["sessions"][0]["devices"][0]["mac"], MAC);
    let guesser = client_from(Ipv4Addr::new(127, 0, 0, 3));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..7 {
        let reply = send_password(&served, &guesser, &format!("guess{i}")).await;
        statuses.push(reply.status().as_u16());
        retry_after = retry_after.or(reply.headers().get(RETRY_AFTER).cloned());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    assert!(retry_after.is_some());
    // Held back with the right password too; the provider's own login from elsewhere works.
    let right = send_password(&served, &guesser, PASSWORD).await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    log_in(&served).await;
}

#[tokio::test]
async fn forms_are_rate_limited_per_address() {
    let served = serve().await;
    let (cookie, csrf) = log_in(&served).await;
    let mut statuses = Vec::new();
    for _ in 0..31 {
        let reply = post_with_token(&served, &cookie, "/kick", &format!("mac={MAC}"), &csrf).await;
        statuses.push(reply.status().as_u16());
        if reply.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.headers().get(RETRY_AFTER).is_some());
        }
    }
    assert!(statuses[..30].iter().all(|&s| s == 303), "{statuses:?}");
    assert_eq!(statuses[30], 429, "{statuses:?}");
    assert_eq!(served.source.kicked.lock().unwrap().len(), 30);
}
