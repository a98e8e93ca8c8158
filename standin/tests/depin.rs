//! Contract 2 (seed 002) over real HTTP and WebSocket: auth on both path sets, the producer
//! socket's framings, token checks at upgrade, and dropped sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edgeshare_standin::{Standin, StandinConfig, WsFraming};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A POST to `path` under one of the two path sets (`prefix`), without a token.
async fn post_at(s: &Standin, prefix: &str, path: &str, body: Value) -> (StatusCode, Value) {
    post(s, &format!("{prefix}{path}"), None, body).await
}

async fn access_token(s: &Standin) -> String {
    depin_login(s).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn send_json(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

fn ws_url(s: &Standin, token: &str) -> String {
    format!(
        "{}/producer?token={token}",
        s.base_url().replace("http://", "ws://")
    )
}

async fn connect(s: &Standin, token: &str) -> Ws {
    tokio_tungstenite::connect_async(ws_url(s, token))
        .await
        .unwrap()
        .0
}

/// The next text message, as JSON, within a second.
async fn next_json(ws: &mut Ws) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("a reply")
        .expect("stream open")
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

fn reading() -> Value {
    json!({
        "device_id": "device-001",
        "timestamp": "2025-01-29T11:35:00Z",
        "data": { "temperature": 24.3, "humidity": 51, "pressure": 1013.25 },
    })
}

/// Status and JSON body of a refused upgrade.
async fn refused_upgrade(url: String) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap(),
            )
        }
        Ok(_) => panic!("upgrade accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn auth_on_both_path_sets() {
    let s = start_default().await;
    let device = json!({ "username": "device-001", "password": "Device@123" });
    for (i, prefix) in ["", "/depin/api/auth"].into_iter().enumerate() {
        let (status, body) = post_at(&s, prefix, "/login", device.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["user_id"], 1);
        let access = claims(body["access_token"].as_str().unwrap());
        let refresh = claims(body["refresh_token"].as_str().unwrap());
        assert_eq!(
            (&access["typ"], &refresh["typ"]),
            (&json!("access"), &json!("refresh"))
        );
        assert_eq!(
            (&access["sub"], &access["username"]),
            (&json!("1"), &json!("device-001"))
        );
        let ttl = |c: &Value| c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
        assert_eq!((ttl(&access), ttl(&refresh)), (3600, 7 * 24 * 3600));

        let (status, body) = post_at(
            &s,
            prefix,
            "/login",
            json!({ "username": "device-001", "password": "nope" }),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({ "error": "Invalid credentials" })
            )
        );
        let (status, _) = post_at(&s, prefix, "/login", json!({ "username": "x" })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Refresh gives a new, working pair; an access token is not a refresh token.
        let (_, pair) = post_at(&s, prefix, "/login", device.clone()).await;
        let refresh = json!({ "refresh_token": pair["refresh_token"] });
        let (status, body) = post_at(&s, prefix, "/refresh", refresh).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(body["access_token"], pair["access_token"]);
        assert!(body["refresh_token"].is_string());
        drop(connect(&s, body["access_token"].as_str().unwrap()).await);
        for bad in [pair["access_token"].clone(), json!("garbage")] {
            let (status, body) =
                post_at(&s, prefix, "/refresh", json!({ "refresh_token": bad })).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            error_text(&body);
        }
        let (status, _) = post_at(&s, prefix, "/refresh", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let name = format!("sensor-{i}");
        let register = json!({
            "username": name, "password": "pw", "role": "producer", "device_id": name,
        });
        let (status, body) = post_at(&s, prefix, "/register", register.clone()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["username"], name.as_str());
        assert_eq!(body["role"], "producer");
        assert_eq!(body["device_id"], name.as_str());
        assert!(body["user_id"].as_u64().unwrap() > 1);
        let (status, _) = post_at(&s, prefix, "/register", register).await;
        assert_eq!(status, StatusCode::CONFLICT);
        for (bad, why) in [
            (json!({ "username": "y", "password": "pw" }), "no role"),
            (
                json!({ "username": "y", "password": "pw", "role": "producer" }),
                "a producer needs a device_id",
            ),
        ] {
            let (status, _) = post_at(&s, prefix, "/register", bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
        }
        let own = json!({ "username": name, "password": "pw" });
        let (status, _) = post_at(&s, prefix, "/login", own).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn producer_framings_acks_and_errors() {
    let s = start_default().await;
    let token = access_token(&s).await;
    let mut ws = connect(&s, &token).await;
    // A bare message gets no reply: the first reply is the wrapped message's ack.
    send_json(&mut ws, reading()).await;
    send_json(&mut ws, json!({ "type": "data", "payload": reading() })).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["subscriberCount"], 0);
    assert!(
        ack["transaction_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    ws.send(Message::text("not json")).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert!(err["error"].is_string());
    send_json(&mut ws, json!({ "device_id": "device-001" })).await;
    assert_eq!(next_json(&mut ws).await["type"], "error");
    send_json(
        &mut ws,
        json!({ "type": "data", "payload": { "device_id": "d" } }),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "error");
    // Still open, and pings are answered.
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(pong, Message::Pong(ref p) if p.as_ref() == b"hi"),
        "{pong:?}"
    );
    send_json(&mut ws, json!({ "type": "data", "payload": reading() })).await;
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    assert_eq!(s.open_websockets(), 1);
    ws.close(None).await.unwrap();

    let msgs = s.ws_messages();
    let framings: Vec<WsFraming> = msgs.iter().map(|m| m.framing).collect();
    assert_eq!(
        framings,
        [
            WsFraming::Bare,
            WsFraming::Wrapped,
            WsFraming::Invalid,
            WsFraming::Bare,
            WsFraming::Wrapped,
            WsFraming::Wrapped,
        ]
    );
    assert_eq!(msgs[0].payload.as_ref(), Some(&reading()));
    assert_eq!(msgs[0].reply, None);
    assert_eq!(msgs[1].payload.as_ref(), Some(&reading()));
    assert_eq!(msgs[1].reply.as_ref().unwrap()["type"], "ack");
    assert!(
        msgs[2..5]
            .iter()
            .all(|m| m.error.is_some() && m.payload.is_none())
    );
    assert!(
        msgs.iter()
            .all(|m| m.user_id == 1 && m.username == "device-001")
    );
}

#[tokio::test]
async fn upgrade_refused_without_a_valid_access_token() {
    let s = start(StandinConfig {
        access_token_ttl: Duration::from_secs(1),
        ..StandinConfig::default()
    })
    .await;
    let base = s.base_url().replace("http://", "ws://");
    let (status, body) = refused_upgrade(format!("{base}/producer")).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string());
    let (status, _) = refused_upgrade(ws_url(&s, "garbage")).await;
    assert_eq!(status, 401);
    let pair = depin_login(&s).await;
    let (status, _) = refused_upgrade(ws_url(&s, pair["refresh_token"].as_str().unwrap())).await;
    assert_eq!(status, 401, "a refresh token does not open the stream");
    let access = pair["access_token"].as_str().unwrap();
    drop(connect(&s, access).await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = refused_upgrade(ws_url(&s, access)).await;
    assert_eq!((status, body), (401, json!({ "error": "Token expired" })));
}

#[tokio::test]
async fn drop_websockets_ends_stream_without_close_frame() {
    let s = start_default().await;
    let token = access_token(&s).await;
    let mut a = connect(&s, &token).await;
    let mut b = connect(&s, &token).await;
    // Make sure both are being served before dropping.
    for ws in [&mut a, &mut b] {
        send_json(ws, json!({ "type": "data", "payload": reading() })).await;
        assert_eq!(next_json(ws).await["type"], "ack");
    }
    assert_eq!(s.open_websockets(), 2);
    s.drop_websockets();
    for ws in [&mut a, &mut b] {
        let end = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap();
        match end {
            None
            | Some(Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))) => {}
            Some(Err(tungstenite::Error::Io(_))) => {}
            other => panic!("expected the stream to end without a Close frame, got {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.open_websockets(), 0);
    // New sockets still work.
    let mut c = connect(&s, &token).await;
    send_json(&mut c, json!({ "type": "data", "payload": reading() })).await;
    assert_eq!(next_json(&mut c).await["type"], "ack");
}
