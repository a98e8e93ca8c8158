//! HTTPS to a self-hosted backend: trusted with `ca_file`, refused without it.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::time::Duration;

use edgeshare_shared::backend::crowd::CrowdClient;
use edgeshare_shared::backend::{BackendError, HttpClient, HttpSettings};
use edgeshare_standin::{StandinConfig, TlsFiles};

#[tokio::test]
async fn a_custom_ca_file_is_trusted_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ca.cert.pem()).unwrap();
    std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
    let standin = common::standin_with(StandinConfig {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key,
        }),
        ..StandinConfig::default()
    })
    .await;
    let base = standin.base_url();
    assert!(base.starts_with("https://"), "{base}");
    let mut config = common::crowd_config(&standin, "provider@example.com", "Provider@123");
    config.url.set_host(Some("localhost")).unwrap();

    let settings = |ca_file| HttpSettings {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ca_file,
    };
    let trusted = HttpClient::new(&settings(Some(cert))).unwrap();
    let login = CrowdClient::new(&trusted, &config).login().await.unwrap();
    assert_eq!(login.user.email, "provider@example.com");

    let untrusted = HttpClient::new(&settings(None)).unwrap();
    let err = CrowdClient::new(&untrusted, &config)
        .login()
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_ca_file_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = HttpClient::new(&HttpSettings {
        ca_file: Some(dir.path().join("missing.pem")),
        ..HttpSettings::default()
    })
    .unwrap_err();
    assert!(matches!(err, BackendError::Setup(_)), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
