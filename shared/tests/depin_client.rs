//! The contract-2 client against the stand-in: login, refresh, re-login, register,
//! configurable paths, and the producer socket with both framings.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::time::Duration;

use common::{http, standin, standin_with, url};
use edgeshare_shared::backend::Rejection;
use edgeshare_shared::backend::depin::{
    DepinAuth, DepinPaths, DepinTokens, Framing, Reading, ServerMessage, producer_url,
};
use edgeshare_shared::secret::Secret;
use edgeshare_standin::{Standin, StandinConfig};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::Message;

fn device(standin: &Standin, paths: DepinPaths) -> DepinAuth {
    account(standin, paths, "device-001", "Device@123")
}

/// The seeded device's tokens.
async fn logged_in(standin: &Standin) -> DepinTokens {
    device(standin, DepinPaths::default())
        .login()
        .await
        .unwrap()
}

fn account(standin: &Standin, paths: DepinPaths, name: &str, password: &str) -> DepinAuth {
    DepinAuth::new(
        &http(),
        &url(standin),
        paths,
        name.to_owned(),
        Secret::new(password),
    )
}

fn reading(temperature: f64) -> Reading {
    let mut data = serde_json::Map::new();
    data.insert("temperature".into(), temperature.into());
    Reading {
        device_id: "device-001".into(),
        timestamp: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
        data,
    }
}

fn ws_url(standin: &Standin) -> url::Url {
    let mut url = url(standin);
    url.set_scheme("ws").unwrap();
    url.set_path("/producer");
    url
}

#[tokio::test]
async fn login_gives_an_hour_long_access_token() {
    let standin = standin().await;
    let tokens = logged_in(&standin).await;
    let left = tokens.access_expires.unwrap() - OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(59) && left <= time::Duration::hours(1),
        "{left}"
    );
    assert!(!tokens.user_id.is_empty());
    assert!(!tokens.access_is_stale(OffsetDateTime::now_utc()));
    assert!(tokens.access_is_stale(OffsetDateTime::now_utc() + time::Duration::minutes(56)));
}

#[tokio::test]
async fn wrong_password_is_bad_credentials() {
    let standin = standin().await;
    let auth = account(&standin, DepinPaths::default(), "device-001", "nope");
    let err = auth.login().await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadCredentials), "{err}");
}

#[tokio::test]
async fn the_api_auth_paths_work_when_configured() {
    let standin = standin().await;
    let paths = DepinPaths {
        login: "/depin/api/auth/login".into(),
        refresh: "/depin/api/auth/refresh".into(),
        register: "/depin/api/auth/register".into(),
    };
    let auth = device(&standin, paths);
    let tokens = auth.login().await.unwrap();
    auth.refresh(&tokens).await.unwrap();
    assert_eq!(common::count(&standin, "/depin/api/auth/login"), 1);
    assert_eq!(common::count(&standin, "/depin/api/auth/refresh"), 1);
}

#[tokio::test]
async fn a_stale_access_token_is_refreshed_and_a_refused_refresh_logs_in_again() {
    let standin = standin_with(StandinConfig {
        // A 2-minute access token: renewed in its last 15 % (18 s), so stale 110 s on.
        access_token_ttl: Duration::from_secs(120),
        ..StandinConfig::default()
    })
    .await;
    let auth = device(&standin, DepinPaths::default());
    let first = auth.login().await.unwrap();
    let issued = OffsetDateTime::now_utc();
    assert!(!first.access_is_stale(issued), "fresh when issued");
    let now = issued + time::Duration::seconds(110);
    assert!(first.access_is_stale(now));

    let refreshed = auth.fresh(Some(&first), now).await.unwrap();
    assert_eq!(common::count(&standin, "/refresh"), 1);
    assert_eq!(common::count(&standin, "/login"), 1);
    assert_ne!(refreshed.access.expose(), "");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    standin.expire_tokens();
    let relogged = auth
        .fresh(
            Some(&refreshed),
            OffsetDateTime::now_utc() + time::Duration::seconds(110),
        )
        .await
        .unwrap();
    assert_eq!(common::count(&standin, "/refresh"), 2);
    assert_eq!(common::count(&standin, "/login"), 2);
    assert_eq!(relogged.user_id, first.user_id);

    // Fresh tokens are used as they are: no call at all.
    let again = auth
        .fresh(
            Some(&relogged),
            OffsetDateTime::now_utc() - time::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(again.access, relogged.access);
    assert_eq!(standin.received().len(), 4);
}

#[tokio::test]
async fn register_then_conflict() {
    let standin = standin().await;
    let auth = account(&standin, DepinPaths::default(), "sensor-7", "Sensor@7");
    let registered = auth.register("sensor-7").await.unwrap();
    assert!(!registered.user_id.is_empty());
    let body = &standin.received()[0].body;
    assert_eq!(body["role"], "producer");
    assert_eq!(body["device_id"], "sensor-7");
    let err = auth.register("sensor-7").await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Conflict), "{err}");
    auth.login().await.unwrap();
}

#[tokio::test]
async fn both_framings_reach_the_platform_and_typed_ones_are_acked() {
    let standin = standin().await;
    let tokens = logged_in(&standin).await;
    let url = producer_url(&ws_url(&standin), &tokens.access);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();

    use futures_util::{SinkExt, StreamExt};
    socket
        .send(Message::text(Framing::Typed.encode(&reading(21.5))))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ack = ServerMessage::parse(reply.to_text().unwrap()).unwrap();
    assert!(matches!(ack, ServerMessage::Ack { .. }), "{ack:?}");

    let bare = reading(22.0);
    socket
        .send(Message::text(Framing::Bare.encode(&bare)))
        .await
        .unwrap();
    // A bare message gets no reply; wait until the platform has recorded it.
    for _ in 0..50 {
        if standin.ws_messages().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = standin.ws_messages();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|m| m.error.is_none()), "{received:?}");
    let payload: Reading = serde_json::from_value(received[1].payload.clone().unwrap()).unwrap();
    assert_eq!(payload, bare);
}

#[tokio::test]
async fn a_bad_token_is_refused_at_the_upgrade() {
    let standin = standin().await;
    let url = producer_url(&ws_url(&standin), &Secret::new("not-a-token"));
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected an HTTP 401, got {other}"),
    }
}
