//! A stand-in backend on a loopback port and clients pointed at it.
#![allow(dead_code)] // Each test file uses its own part of this module.

use std::time::Duration;

use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::HttpSettings;
use edgeshare_shared::backend::crowd::{CrowdClient, CrowdConfig};
use edgeshare_shared::secret::Secret;
use edgeshare_standin::{Standin, StandinConfig};
use url::Url;

pub const CODE: &str = "ABCD2345";

pub async fn standin_with(config: StandinConfig) -> Standin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    edgeshare_standin::start(listener, config).await.unwrap()
}

pub async fn standin() -> Standin {
    standin_with(StandinConfig {
        seed_codes: vec![CODE.to_owned()],
        ..StandinConfig::default()
    })
    .await
}

pub fn http_with_timeout(timeout: Duration) -> HttpClient {
    HttpClient::new(&HttpSettings {
        timeout,
        connect_timeout: Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap()
}

pub fn http() -> HttpClient {
    http_with_timeout(Duration::from_secs(5))
}

pub fn url(standin: &Standin) -> Url {
    Url::parse(&standin.base_url()).unwrap()
}

pub fn crowd_config(standin: &Standin, email: &str, password: &str) -> CrowdConfig {
    CrowdConfig {
        url: url(standin),
        email: email.to_owned(),
        password: Secret::new(password),
    }
}

pub fn provider(standin: &Standin, http: &HttpClient) -> CrowdClient {
    CrowdClient::new(
        http,
        &crowd_config(standin, "provider@example.com", "Provider@123"),
    )
}

/// How many requests the stand-in received on `path`.
pub fn count(standin: &Standin, path: &str) -> usize {
    standin.received().iter().filter(|r| r.path == path).count()
}
