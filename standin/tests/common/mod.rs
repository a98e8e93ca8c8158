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
    let (status, body) = post(
        s,
        "/api/auth/login",
        None,
        json!({ "email": email, "password": password }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
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
