//! Helpers shared by the integration tests: a stand-in on port 0 and a plain-HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use edgeshare_standin::{Standin, StandinConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const MIB: u64 = 1 << 20;

pub async fn start(config: StandinConfig) -> Standin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    edgeshare_standin::start(listener, config).await.unwrap()
}

pub async fn start_default() -> Standin {
    start(StandinConfig::default()).await
}

/// A stand-in with `config` and the seeded provider's token.
pub async fn start_as_provider(config: StandinConfig) -> (Standin, String) {
    let s = start(config).await;
    let token = provider_token(&s).await;
    (s, token)
}

/// reqwest with `rustls-no-provider` needs a process-wide provider even for plain HTTP.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that opens a new connection for every request.
pub fn fresh_client(timeout: Duration) -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub async fn reply(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {status} {text:?}"));
    (status, body)
}

pub async fn post(
    s: &Standin,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = client().post(format!("{}{path}", s.base_url())).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    reply(req.send().await.unwrap()).await
}

pub async fn get(s: &Standin, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = client().get(format!("{}{path}", s.base_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    reply(req.send().await.unwrap()).await
}

/// Contract 1 login; returns the token.
pub async fn login(s: &Standin, email: &str, password: &str) -> String {
    token_of(try_login(s, email, password).await)
}

pub async fn provider_token(s: &Standin) -> String {
    login(s, "provider@example.com", "Provider@123").await
}

/// Creates one code of `total_mb` with the given token; returns it.
pub async fn new_code(s: &Standin, token: &str, total_mb: f64) -> String {
    let (status, body) = post(
        s,
        "/api/provider/codes",
        Some(token),
        json!({ "totalMB": total_mb }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["codes"][0]["code"].as_str().unwrap().to_owned()
}

pub async fn report(s: &Standin, token: &str, code: &str, bytes: Value) -> (StatusCode, Value) {
    post(
        s,
        "/api/gateway/report-usage",
        Some(token),
        json!({ "code": code, "bytes": bytes }),
    )
    .await
}

/// The claims of a JWT, unverified.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
}

/// The fixture most crowd tests start from: a default stand-in, the seeded provider's token and
/// the first seeded code.
pub async fn seeded() -> (Standin, String, String) {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    (s, token, code)
}

pub async fn consumer_token(s: &Standin) -> String {
    login(s, "consumer@example.com", "Consumer@123").await
}

pub async fn admin_token(s: &Standin) -> String {
    login(s, "admin@example.com", "Admin@123").await
}

/// A Contract 1 login attempt, answered as it is (no check).
pub async fn try_login(s: &Standin, email: &str, password: &str) -> (StatusCode, Value) {
    post(s, "/api/auth/login", None, credentials(email, password)).await
}

pub async fn register(s: &Standin, body: Value) -> (StatusCode, Value) {
    post(s, "/api/auth/register", None, body).await
}

/// `POST /api/provider/codes` with `body`, answered as it is.
pub async fn make_codes(s: &Standin, token: &str, body: Value) -> (StatusCode, Value) {
    post(s, "/api/provider/codes", Some(token), body).await
}

/// The one code of a `POST /api/provider/codes` reply.
pub fn first_code(made: &Value) -> String {
    made["codes"][0]["code"].as_str().unwrap().to_owned()
}

pub async fn authorize(s: &Standin, token: Option<&str>, code: &str) -> (StatusCode, Value) {
    post(
        s,
        "/api/gateway/authorize-code",
        token,
        json!({ "code": code }),
    )
    .await
}

/// The error reply `{"error": message}` with `status`.
pub fn refusal(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (status, json!({ "error": message }))
}

/// Asserts the caller's `points` and `bytesShared` as `GET /api/auth/me` gives them.
pub async fn assert_credit(s: &Standin, token: &str, points: Value, bytes_shared: Value) {
    let (_, me) = get(s, "/api/auth/me", Some(token)).await;
    assert_eq!(
        (&me["points"], &me["bytesShared"]),
        (&points, &bytes_shared),
        "{me}"
    );
}

/// A report sent from a task of its own (pooled client); its status.
pub async fn report_status(base_url: String, token: String, body: Value) -> StatusCode {
    client()
        .post(format!("{base_url}/api/gateway/report-usage"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A report over a connection of its own that gives up after `timeout`: for the faults that
/// drop or delay the reply.
pub async fn report_fresh(
    s: &Standin,
    timeout: Duration,
    token: &str,
    body: Value,
) -> reqwest::Result<reqwest::Response> {
    fresh_client(timeout)
        .post(format!("{}/api/gateway/report-usage", s.base_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
}

/// Contract 2 (DePIN) login of the seeded device; the whole reply (both tokens).
pub async fn depin_login(s: &Standin) -> Value {
    token_reply(
        post(
            s,
            "/login",
            None,
            json!({ "username": "device-001", "password": "Device@123" }),
        )
        .await,
    )
}

/// A Contract 3 sign-in attempt, answered as it is (no check).
pub async fn try_signin(s: &Standin, email: &str, password: &str) -> (StatusCode, Value) {
    post(s, "/auth/signin", None, credentials(email, password)).await
}

fn credentials(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

/// Contract 3 sign-in; returns the user token.
pub async fn signin(s: &Standin, email: &str, password: &str) -> String {
    token_of(try_signin(s, email, password).await)
}

/// The body of a reply that must be a 200.
pub fn token_reply((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The `token` of a reply that must be a 200.
pub fn token_of(reply: (StatusCode, Value)) -> String {
    token_reply(reply)["token"].as_str().unwrap().to_owned()
}
