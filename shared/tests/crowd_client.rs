//! The contract-1 client against the stand-in backend over loopback: every call, every error
//! path, and the weak spots the client must make visible to its caller.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::time::Duration;

use common::{CODE, count, crowd_config, http, http_with_timeout, provider, standin, standin_with};
use edgeshare_shared::backend::crowd::{CreateCodes, CrowdClient, Role, UsageReport};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::code::AccessCode;
use edgeshare_standin::{Fault, FaultKind, Standin, StandinConfig};

fn code(text: &str) -> AccessCode {
    AccessCode::parse(text).unwrap()
}

fn report(bytes: u64) -> UsageReport {
    UsageReport {
        code: code(CODE),
        bytes,
        consumer_id: None,
    }
}

fn account(standin: &Standin, email: &str, password: &str) -> CrowdClient {
    CrowdClient::new(&http(), &crowd_config(standin, email, password))
}

/// A stand-in and this provider's client, signed in by a first call.
async fn signed_in() -> (Standin, CrowdClient) {
    let standin = standin().await;
    let client = provider(&standin, &http());
    client.me().await.unwrap();
    (standin, client)
}

#[tokio::test]
async fn login_and_me() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    let login = client.login().await.unwrap();
    assert_eq!(login.user.email, "provider@example.com");
    assert_eq!(login.user.role, Role::Provider);
    // A 7-day JWT, as the contract says.
    let exp = edgeshare_shared::jwt::expiry(login.token.expose()).unwrap();
    let days = (exp - time::OffsetDateTime::now_utc()).whole_hours() as f64 / 24.0;
    assert!((6.9..=7.0).contains(&days), "{days}");

    let me = client.me().await.unwrap();
    assert_eq!(me.user, login.user);
    assert_eq!(me.user.name.as_deref(), Some("Demo Provider"));
    assert_eq!(me.points, 0.0);
}

#[tokio::test]
async fn wrong_password_is_bad_credentials_with_the_servers_text() {
    let standin = standin().await;
    let client = account(&standin, "provider@example.com", "wrong");
    let err = client.me().await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadCredentials), "{err}");
    assert!(err.to_string().contains("Invalid credentials"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password must not leak: {err}"
    );
    assert!(!err.is_transient() && !err.is_ambiguous());
    // One login attempt, no loop.
    assert_eq!(count(&standin, "/api/auth/login"), 1);
}

#[tokio::test]
async fn codes_are_created_listed_and_authorized() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    let created = client
        .create_codes(&CreateCodes {
            total_mb: 10.0,
            count: 3,
            expire_hours: Some(2.0),
        })
        .await
        .unwrap();
    assert_eq!(created.len(), 3);
    let in_two_hours = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    for c in &created {
        assert_eq!(c.total_mb, 10.0);
        let expire_at = c.expire_at.expect("made with expireHours: it expires");
        assert!((expire_at - in_two_hours).abs() < time::Duration::minutes(1));
    }
    let listed = client.list_codes().await.unwrap();
    assert_eq!(listed.len(), 4, "the seeded code and the three new ones");
    let new = listed.iter().find(|c| c.code == created[0].code).unwrap();
    assert_eq!(new.remaining_mb, 10.0);

    let authorized = client.authorize_code(&created[0].code).await.unwrap();
    assert_eq!(authorized.remaining_mb, 10.0);
    assert_eq!(authorized.total_mb, 10.0);
    assert_eq!(authorized.remaining_bytes(), 10 * 1_048_576);

    let err = client
        .create_codes(&CreateCodes {
            total_mb: 0.0,
            count: 1,
            expire_hours: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadRequest), "{err}");
}

#[tokio::test]
async fn unknown_and_expired_codes_are_typed_refusals() {
    let standin = standin_with(StandinConfig {
        seed_codes: vec![CODE.to_owned()],
        expired_code_ttl: Duration::from_millis(1500),
        ..StandinConfig::default()
    })
    .await;
    let client = provider(&standin, &http());
    let err = client.authorize_code(&code("ZZZZ9999")).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::NotFound), "{err}");
    assert!(err.to_string().contains("Invalid code"), "{err}");

    // A code that expires in ~1 s: first "Code expired", then (deleted) 404.
    let created = client
        .create_codes(&CreateCodes {
            total_mb: 1.0,
            count: 1,
            expire_hours: Some(0.3 / 3600.0),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = client.authorize_code(&created[0].code).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::CodeExpired), "{err}");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let err = client.authorize_code(&created[0].code).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::NotFound), "{err}");
}

#[tokio::test]
async fn a_report_is_deducted_and_sent_as_a_json_number() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    let receipt = client.report_usage(&report(3 * 1_048_576)).await.unwrap();
    assert_eq!(receipt.remaining_mb, 497.0);
    assert_eq!(standin.code(CODE).unwrap().remaining_mb, 497.0);
    let sent = standin
        .received()
        .into_iter()
        .find(|r| r.path == "/api/gateway/report-usage")
        .unwrap();
    assert!(sent.body["bytes"].is_u64(), "{:?}", sent.body);
    assert!(sent.body.get("consumerId").is_none());
    let owner = standin.user("provider@example.com").unwrap();
    assert_eq!(owner.points, 3);
    assert_eq!(owner.bytes_shared, serde_json::json!(3 * 1_048_576));
    let authorized = client.authorize_code(&code(CODE)).await.unwrap();
    assert_eq!(authorized.remaining_mb, 497.0);
}

#[tokio::test]
async fn an_overdraft_is_refused_whole_and_typed() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    let err = client
        .report_usage(&report(501 * 1_048_576))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection(),
        Some(Rejection::NotEnoughRemaining),
        "{err}"
    );
    assert_eq!(standin.code(CODE).unwrap().remaining_mb, 500.0);
    // Reporting exactly what remains empties the code, which authorize-code still accepts
    // (a weak spot): the client exposes remaining_bytes() == 0 for the caller to refuse.
    client.report_usage(&report(500 * 1_048_576)).await.unwrap();
    let authorized = client.authorize_code(&code(CODE)).await.unwrap();
    assert_eq!(authorized.remaining_bytes(), 0);
}

#[tokio::test]
async fn zero_bytes_is_a_bad_request() {
    let standin = standin().await;
    let err = provider(&standin, &http())
        .report_usage(&report(0))
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadRequest));
    assert!(err.to_string().contains("code and bytes required"), "{err}");
}

#[tokio::test]
async fn an_expired_token_causes_one_new_login_and_the_call_succeeds() {
    let standin = standin().await;
    let client = std::sync::Arc::new(provider(&standin, &http()));
    client.me().await.unwrap();
    assert_eq!(count(&standin, "/api/auth/login"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // tokens carry whole-second iat
    standin.expire_tokens();
    // Ten calls at once meet the dead token: one new login serves them all.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        calls.spawn(async move { client.me().await });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(count(&standin, "/api/auth/login"), 2);
}

#[tokio::test]
async fn a_refused_relogin_is_not_retried_in_a_loop() {
    let (standin, client) = signed_in().await;
    standin.set_fault(Fault::new("/api/auth/login", FaultKind::Status500));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    standin.expire_tokens();
    let err = client.me().await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::ServerError), "{err}");
    assert!(err.is_transient());
    assert_eq!(count(&standin, "/api/auth/login"), 2);
}

#[tokio::test]
async fn refused_connections_are_unreachable_and_safe_to_retry() {
    let (standin, client) = signed_in().await;
    standin.refuse_connections().await;
    let err = client.report_usage(&report(1_048_576)).await.unwrap_err();
    assert!(matches!(err, BackendError::Unreachable { .. }), "{err}");
    assert!(err.is_transient() && !err.is_ambiguous());
    assert!(err.to_string().contains("cannot reach"), "{err}");
    standin.accept_connections().await.unwrap();
    client.report_usage(&report(1_048_576)).await.unwrap();
    assert_eq!(standin.code(CODE).unwrap().remaining_mb, 499.0);
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_ambiguous_and_was_applied() {
    let standin = standin().await;
    let client = provider(&standin, &http_with_timeout(Duration::from_millis(500)));
    client.me().await.unwrap();
    standin.set_fault(
        Fault::new(
            "/api/gateway/report-usage",
            FaultKind::DelayAfter(Duration::from_secs(2)),
        )
        .times(1),
    );
    let started = std::time::Instant::now();
    let err = client
        .report_usage(&report(2 * 1_048_576))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout holds"
    );
    assert!(err.is_ambiguous(), "{err}");
    assert!(!err.is_transient(), "never resent blindly: {err}");
    // The weak spot, made visible: the backend did apply it.
    assert_eq!(standin.code(CODE).unwrap().remaining_mb, 498.0);
    // The way to learn it, as the contract advises: read the code's balance back.
    let listed = client.list_codes().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|c| c.code.as_str() == CODE)
            .unwrap()
            .remaining_mb,
        498.0
    );
}

#[tokio::test]
async fn a_dropped_connection_after_applying_is_ambiguous() {
    let (standin, client) = signed_in().await;
    standin.set_fault(Fault::new("/api/gateway/report-usage", FaultKind::ApplyThenDrop).times(1));
    let err = client.report_usage(&report(1_048_576)).await.unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(standin.code(CODE).unwrap().remaining_mb, 499.0);
}

#[tokio::test]
async fn server_errors_are_transient_and_keep_the_text() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    standin.set_fault(Fault::new("/api/gateway/authorize-code", FaultKind::Status500).times(1));
    let err = client.authorize_code(&code(CODE)).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::ServerError));
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("POST /api/gateway/authorize-code"),
        "{err}"
    );
    // The fault was for one request only.
    client.authorize_code(&code(CODE)).await.unwrap();
}

#[tokio::test]
async fn a_slow_but_timely_reply_is_fine() {
    let standin = standin().await;
    let client = provider(&standin, &http_with_timeout(Duration::from_secs(3)));
    standin.set_fault(Fault::new(
        "/api/gateway/",
        FaultKind::DelayBefore(Duration::from_millis(300)),
    ));
    assert_eq!(
        client
            .authorize_code(&code(CODE))
            .await
            .unwrap()
            .remaining_mb,
        500.0
    );
}

#[tokio::test]
async fn a_consumer_account_is_forbidden() {
    let standin = standin().await;
    let client = account(&standin, "consumer@example.com", "Consumer@123");
    let err = client.authorize_code(&code(CODE)).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Forbidden), "{err}");
}

#[tokio::test]
async fn usage_lists_reports() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    client.report_usage(&report(2 * 1_048_576)).await.unwrap();
    let usage = client.usage().await.unwrap();
    assert_eq!(usage.total_bytes, 2.0 * 1_048_576.0);
    assert_eq!(usage.logs.len(), 1);
}

#[tokio::test]
async fn a_consumer_signs_in_beside_the_providers_own_login() {
    let standin = standin().await;
    let client = provider(&standin, &http());
    client.list_codes().await.unwrap();
    assert_eq!(count(&standin, "/api/auth/login"), 1);

    let password = edgeshare_shared::secret::Secret::new("Consumer@123");
    let consumer = client
        .sign_in("consumer@example.com", &password)
        .await
        .unwrap();
    assert_eq!(consumer.role, Role::Consumer);
    assert_eq!(consumer.email, "consumer@example.com");
    assert!(!consumer.id.is_empty());

    let wrong = edgeshare_shared::secret::Secret::new("Wrong@123");
    let err = client
        .sign_in("consumer@example.com", &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadCredentials), "{err}");
    assert!(!err.to_string().contains("Wrong@123"), "{err}");
    let provider_account = client
        .sign_in(
            "provider@example.com",
            &edgeshare_shared::secret::Secret::new("Provider@123"),
        )
        .await
        .unwrap();
    assert_eq!(provider_account.role, Role::Provider);

    // The provider's own token was neither replaced nor dropped: no new login for its calls,
    // and they still act as the provider.
    client.list_codes().await.unwrap();
    let report = UsageReport {
        consumer_id: Some(consumer.id.clone()),
        ..report(3 * 1_048_576 + 5)
    };
    client.report_usage(&report).await.unwrap();
    assert_eq!(count(&standin, "/api/auth/login"), 4, "1 + 3 sign-ins");
    let sent = standin
        .received()
        .into_iter()
        .rfind(|r| r.path == "/api/gateway/report-usage")
        .unwrap();
    assert_eq!(sent.body["consumerId"], consumer.id.as_str());
    let user = standin.user("consumer@example.com").unwrap();
    assert_eq!(user.bytes_consumed, 3 * 1_048_576 + 5);
    assert_eq!(
        standin.user("provider@example.com").unwrap().points,
        3,
        "the provider is credited as before"
    );
}
