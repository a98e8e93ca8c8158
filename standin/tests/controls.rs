//! The test controls: faults, refused connections, revoked tokens, recording, the HTTP control
//! API, and HTTPS.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edgeshare_standin::{Fault, FaultKind, Standin, StandinConfig, TlsFiles};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `kind` once, on the next report.
fn fault_once(s: &Standin, kind: FaultKind) {
    s.set_fault(Fault::new("/api/gateway/report-usage", kind).times(1));
}

async fn status_of(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn status500_respects_prefix_and_times() {
    let (s, token, code) = seeded().await;
    s.set_fault(Fault::new("/api/gateway", FaultKind::Status500).times(2));
    for _ in 0..2 {
        let (status, body) = report(&s, &token, &code, json!(MIB)).await;
        assert_eq!(
            (status, body),
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "Injected fault")
        );
        // Other paths are not affected.
        assert_eq!(
            get(&s, "/api/auth/me", Some(&token)).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        s.code(&code).unwrap().remaining_mb,
        500.0,
        "the handler did not run"
    );
    assert_eq!(
        report(&s, &token, &code, json!(MIB)).await.0,
        StatusCode::OK,
        "used up"
    );

    s.set_fault(Fault::new("", FaultKind::Status500));
    for _ in 0..3 {
        assert_eq!(
            get(&s, "/api/auth/me", Some(&token)).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    s.clear_faults();
    assert_eq!(
        get(&s, "/api/auth/me", Some(&token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn delay_before_delays_the_handler() {
    let (s, token, code) = seeded().await;
    fault_once(&s, FaultKind::DelayBefore(Duration::from_millis(400)));
    let started = Instant::now();
    let pending = tokio::spawn(report_status(
        s.base_url(),
        token.clone(),
        json!({ "code": code, "bytes": MIB }),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.code(&code).unwrap().remaining_mb,
        500.0,
        "not applied during the delay"
    );
    assert_eq!(pending.await.unwrap(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(s.code(&code).unwrap().remaining_mb, 499.0);
}

#[tokio::test]
async fn delay_after_is_applied_but_times_out() {
    let (s, token, code) = seeded().await;
    fault_once(&s, FaultKind::DelayAfter(Duration::from_millis(800)));
    let err = report_fresh(
        &s,
        Duration::from_millis(250),
        &token,
        json!({ "code": code, "bytes": MIB }),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The ambiguous case: the client timed out, yet the report was applied.
    assert_eq!(s.code(&code).unwrap().remaining_mb, 499.0);
    // A patient client gets the reply after the delay.
    fault_once(&s, FaultKind::DelayAfter(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(
        report(&s, &token, &code, json!(MIB)).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.code(&code).unwrap().remaining_mb, 498.0);
}

#[tokio::test]
async fn apply_then_drop_closes_without_reply() {
    let (s, token, code) = seeded().await;
    fault_once(&s, FaultKind::ApplyThenDrop);
    let err = report_fresh(
        &s,
        Duration::from_secs(5),
        &token,
        json!({ "code": code, "bytes": 2 * MIB }),
    )
    .await
    .unwrap_err();
    assert!(!err.is_timeout(), "closed, not timed out: {err:?}");
    assert_eq!(s.code(&code).unwrap().remaining_mb, 498.0, "applied");
    let last = s.received().into_iter().last().unwrap();
    assert_eq!(
        (last.path.as_str(), last.status),
        ("/api/gateway/report-usage", None)
    );
    assert_eq!(
        report(&s, &token, &code, json!(MIB)).await.0,
        StatusCode::OK,
        "once only"
    );
}

#[tokio::test]
async fn refuse_then_accept_on_the_same_port() {
    let s = start_default().await;
    let addr = s.addr();
    let token = provider_token(&s).await;
    // A pooled connection is cut too.
    let pooled = client();
    let me = format!("{}/api/auth/me", s.base_url());
    assert_eq!(
        pooled
            .get(&me)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    s.refuse_connections().await;
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = fresh_client(Duration::from_secs(2))
        .get(&me)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(pooled.get(&me).bearer_auth(&token).send().await.is_err());

    s.accept_connections().await.unwrap();
    assert_eq!(s.addr(), addr);
    let resp = fresh_client(Duration::from_secs(2))
        .get(&me)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Accepting twice is harmless.
    s.accept_connections().await.unwrap();
    s.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn expire_tokens_revokes_every_contract() {
    let s = start_default().await;
    let crowd = provider_token(&s).await;
    let depin = depin_login(&s).await;
    let tele = signin(&s, "edge@example.com", "Edge@123").await;
    assert_eq!(
        get(&s, "/api/auth/me", Some(&crowd)).await.0,
        StatusCode::OK
    );

    s.expire_tokens();
    assert_eq!(
        get(&s, "/api/auth/me", Some(&crowd)).await,
        refusal(StatusCode::UNAUTHORIZED, "Token expired")
    );
    let (status, body) = post(
        &s,
        "/refresh",
        None,
        json!({ "refresh_token": depin["refresh_token"] }),
    )
    .await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::UNAUTHORIZED, "Token expired")
    );
    let (status, body) = post(&s, "/auth/client-token", Some(&tele), json!({})).await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::UNAUTHORIZED, "Token expired")
    );
    // Logging in again gives a token that works.
    let fresh = provider_token(&s).await;
    assert_eq!(
        get(&s, "/api/auth/me", Some(&fresh)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn received_requests_are_recorded() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let client = client();
    let resp = client
        .post(format!("{}/api/gateway/report-usage?trace=1", s.base_url()))
        .bearer_auth(&token)
        .json(&json!({ "code": "ZZZZZZZZ", "bytes": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    client
        .post(format!("{}/api/auth/login", s.base_url()))
        .body("plain text")
        .send()
        .await
        .unwrap();
    get(&s, "/__standin/state", None).await;
    let received = s.received();
    assert_eq!(received.len(), 3, "control requests are not recorded");
    assert_eq!(received[0].path, "/api/auth/login");
    assert_eq!(received[0].body["email"], "provider@example.com");
    assert_eq!(received[0].status, Some(200));
    let r = &received[1];
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.query.as_deref()),
        ("POST", "/api/gateway/report-usage", Some("trace=1"))
    );
    assert_eq!(r.body, json!({ "code": "ZZZZZZZZ", "bytes": 5 }));
    assert_eq!(r.status, Some(404));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(received[2].body, json!("plain text"));
    assert_eq!(received[2].status, Some(400));
}

#[tokio::test]
async fn http_control_endpoints() {
    let s = start_default().await;
    let base = s.base_url();
    let c = client();
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    report(&s, &token, &code, json!(MIB)).await;

    let (status, codes) = get(&s, "/__standin/codes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(codes.as_array().unwrap().len(), 3);
    let (_, one) = get(&s, &format!("/__standin/codes/{code}"), None).await;
    assert_eq!(one["remainingMB"], 499.0);
    let (status, user) = get(&s, "/__standin/users/provider@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&user["points"], &user["bytesShared"]),
        (&json!(1), &json!(MIB))
    );
    assert_eq!(
        get(&s, "/__standin/users/nobody@example.com", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, state) = get(&s, "/__standin/state", None).await;
    assert_eq!(state["seedCodes"], json!(s.seed_codes()));
    assert!(state["users"].is_array() && state["codes"].is_array());
    let (_, received) = get(&s, "/__standin/received", None).await;
    assert_eq!(received.as_array().unwrap().len(), 2);
    assert_eq!(received[1]["path"], "/api/gateway/report-usage");
    assert_eq!(received[1]["status"], 200);

    // Faults over HTTP, with curl's default content type.
    let fault = json!({ "path_prefix": "/api/auth/me", "kind": "status500", "times": 1 });
    let resp = c
        .post(format!("{base}/__standin/faults"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(fault.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, faults) = get(&s, "/__standin/faults", None).await;
    assert_eq!(faults[0]["kind"], "status500");
    assert_eq!(
        get(&s, "/api/auth/me", Some(&token)).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&s, "/api/auth/me", Some(&token)).await.0,
        StatusCode::OK
    );
    let delay = json!({ "kind": "delay_after", "delay_ms": 50 });
    assert_eq!(
        status_of(c.post(format!("{base}/__standin/faults")).json(&delay)).await,
        StatusCode::OK
    );
    let bad = json!({ "kind": "delay_before" });
    let (status, body) = reply(
        c.post(format!("{base}/__standin/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_text(&body);
    // Control requests are never faulted.
    c.post(format!("{base}/__standin/faults"))
        .json(&json!({ "kind": "status500" }))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s, "/__standin/state", None).await.0, StatusCode::OK);
    assert_eq!(
        status_of(c.delete(format!("{base}/__standin/faults"))).await,
        StatusCode::OK
    );
    assert_eq!(get(&s, "/__standin/faults", None).await.1, json!([]));

    assert_eq!(
        status_of(c.post(format!("{base}/__standin/expire-tokens"))).await,
        StatusCode::OK
    );
    assert_eq!(
        get(&s, "/api/auth/me", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(c.post(format!("{base}/__standin/drop-websockets"))).await,
        StatusCode::OK
    );
    let (_, msgs) = get(&s, "/__standin/ws-messages", None).await;
    assert_eq!(msgs, json!([]));

    // Refuse for a while, over HTTP.
    let resp = c
        .post(format!("{base}/__standin/refuse-connections"))
        .json(&json!({ "for_ms": 500 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(s.addr()).await.is_err());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = fresh_client(Duration::from_secs(2))
        .get(format!("{base}/__standin/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn serves_https() {
    install_provider();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = start(StandinConfig {
        tls: Some(TlsFiles {
            cert: cert_path,
            key: key_path,
        }),
        ..StandinConfig::default()
    })
    .await;
    assert!(s.base_url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let resp = https
        .post(format!("{}/api/auth/login", s.base_url()))
        .json(&json!({ "email": "provider@example.com", "password": "Provider@123" }))
        .send()
        .await
        .unwrap();
    let (status, body): (StatusCode, Value) = reply(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["token"].is_string());
    // Plain HTTP on the TLS port does not get an answer.
    let plain = fresh_client(Duration::from_secs(2))
        .get(format!(
            "{}/api/auth/me",
            s.base_url().replace("https", "http")
        ))
        .send()
        .await;
    assert!(plain.is_err());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let missing = StandinConfig {
        tls: Some(TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
        }),
        ..StandinConfig::default()
    };
    assert!(edgeshare_standin::start(listener, missing).await.is_err());
}

#[tokio::test]
async fn download_streams_exactly_the_bytes_asked_for() {
    let s = start_default().await;
    for bytes in [0u64, 1, 65_536, 65_537, 3 * 1024 * 1024 + 5] {
        let reply = client()
            .get(format!("{}/__standin/download/{bytes}", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.content_length(), Some(bytes));
        let body = reply.bytes().await.unwrap();
        assert_eq!(body.len() as u64, bytes);
        assert!(body.iter().all(|b| *b == 0));
    }
    let too_big = client()
        .get(format!(
            "{}/__standin/download/{}",
            s.base_url(),
            17u64 << 30
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::BAD_REQUEST);
}
