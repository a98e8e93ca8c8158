//! Contract 3 (seed 001) over real HTTP: sign-in, client tokens, tenant rules, shapes, 413.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use edgeshare_standin::Standin;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn ingest(
    s: &Standin,
    path: &str,
    token: Option<&str>,
    tenant: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let mut req = client().post(format!("{}{path}", s.base_url())).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(t) = tenant {
        req = req.header("X-Tenant-Id", t);
    }
    reply(req.send().await.unwrap()).await
}

fn connection(id: &str, bytes_in: u64) -> Value {
    json!({
        "id": id, "sourceIp": "192.168.50.10", "destIp": "2606:4700::1111",
        "sourcePort": 51234, "destPort": 443, "protocol": "TCP", "status": "active",
        "startTime": "2025-01-29T11:35:00Z", "lastActivity": "2025-01-29T11:36:00.250Z",
        "duration": 60000, "bytesIn": bytes_in, "bytesOut": 100, "packetsIn": 10,
        "packetsOut": 5, "bandwidth": 12.5,
    })
}

fn snapshot() -> Value {
    json!({
        "timestamp": "2025-01-29T11:36:00Z", "connections": 3, "bandwidthIn": 1000.5,
        "bandwidthOut": 200, "inactive": 1,
    })
}

#[tokio::test]
async fn signin_and_client_token() {
    let s = start_default().await;
    let (status, body) = try_signin(&s, "edge@example.com", "Edge@123").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["email"], "edge@example.com");
    assert!(body["user"]["id"].is_string());
    let user_token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = try_signin(&s, "edge@example.com", "x").await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::UNAUTHORIZED, "Invalid credentials")
    );
    let (status, _) = post(&s, "/auth/signin", None, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Default tenant: the user's first.
    let (status, body) = post(&s, "/auth/client-token", Some(&user_token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expiresIn"], "12h");
    let c = claims(body["token"].as_str().unwrap());
    assert_eq!(c["tenantId"], "tenant-edge");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        12 * 3600
    );
    let client_token = body["token"].as_str().unwrap().to_owned();

    for (tenant, expected) in [
        ("tenant-edge", StatusCode::OK),
        ("tenant-other", StatusCode::FORBIDDEN),
    ] {
        let body = json!({ "tenantId": tenant });
        let (status, body) = post(&s, "/auth/client-token", Some(&user_token), body).await;
        assert_eq!(status, expected, "{tenant}");
        if expected != StatusCode::OK {
            error_text(&body);
        }
    }
    let (status, _) = post(&s, "/auth/client-token", None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A client token cannot mint client tokens.
    let (status, _) = post(&s, "/auth/client-token", Some(&client_token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ingest_auth_and_tenant_rules() {
    let s = start_default().await;
    let user = signin(&s, "edge@example.com", "Edge@123").await;
    let (_, body) = post(&s, "/auth/client-token", Some(&user), json!({})).await;
    let client = body["token"].as_str().unwrap().to_owned();
    let other = signin(&s, "other@example.com", "Other@123").await;
    let batch = json!({ "connections": [connection("c1", 1)] });
    for path in ["/api/connections", "/api/metrics"] {
        let body = if path == "/api/metrics" {
            json!({ "snapshots": [snapshot()] })
        } else {
            batch.clone()
        };
        let (status, reply) = ingest(&s, path, None, Some("tenant-edge"), &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        error_text(&reply);
        let (status, _) = ingest(&s, path, Some("garbage"), Some("tenant-edge"), &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, reply) = ingest(&s, path, Some(&user), None, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: no X-Tenant-Id");
        error_text(&reply);
        let (status, reply) = ingest(&s, path, Some(&other), Some("tenant-edge"), &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        error_text(&reply);
        let (status, _) = ingest(&s, path, Some(&client), Some("tenant-other"), &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        for token in [&user, &client] {
            let (status, reply) = ingest(&s, path, Some(token), Some("tenant-edge"), &body).await;
            assert_eq!(
                (status, reply),
                (StatusCode::ACCEPTED, json!({ "accepted": 1 })),
                "{path}"
            );
        }
        // A crowd token is not a telemetry token.
        let crowd = provider_token(&s).await;
        let (status, _) = ingest(&s, path, Some(&crowd), Some("tenant-edge"), &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(s.connections("tenant-other").is_empty());
}

#[tokio::test]
async fn connections_upsert_and_validation() {
    let s = start_default().await;
    let user = signin(&s, "edge@example.com", "Edge@123").await;
    let send = |body: Value| {
        let (s, user) = (&s, user.clone());
        async move {
            ingest(
                s,
                "/api/connections",
                Some(&user),
                Some("tenant-edge"),
                &body,
            )
            .await
        }
    };
    let (status, body) =
        send(json!({ "connections": [connection("a", 10), connection("b", 20)] })).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({ "accepted": 2 }))
    );
    let mut updated = connection("a", 999);
    updated["status"] = json!("inactive");
    updated.as_object_mut().unwrap().remove("duration");
    let (status, _) = send(json!({ "connections": [updated.clone()] })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stored = s.connections("tenant-edge");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0], updated, "cumulative counters overwrite");
    assert_eq!(stored[1]["bytesIn"], 20);
    let (status, body) = send(json!({ "connections": [] })).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({ "accepted": 0 }))
    );

    let mut cases = vec![
        json!({}),
        json!({ "connections": "x" }),
        json!({ "connections": [1] }),
    ];
    for (field, value) in [
        ("protocol", json!("SCTP")),
        ("status", json!("open")),
        ("startTime", json!("2025-01-29 11:35")),
        ("lastActivity", json!(12)),
        ("sourceIp", json!("not-an-ip")),
        ("destPort", json!(65536)),
        ("bytesOut", json!(-1)),
        ("id", json!("")),
    ] {
        let mut c = connection("z", 1);
        c[field] = value;
        cases.push(json!({ "connections": [connection("ok", 1), c] }));
    }
    for missing in [
        "id",
        "destIp",
        "sourcePort",
        "protocol",
        "packetsIn",
        "lastActivity",
    ] {
        let mut c = connection("z", 1);
        c.as_object_mut().unwrap().remove(missing);
        cases.push(json!({ "connections": [c] }));
    }
    for case in cases {
        let (status, body) = send(case.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
        error_text(&body);
    }
    // A refused batch stores nothing.
    assert!(
        s.connections("tenant-edge")
            .iter()
            .all(|c| c["id"] != "ok" && c["id"] != "z")
    );
}

#[tokio::test]
async fn metrics_append_and_validation() {
    let s = start_default().await;
    let user = signin(&s, "edge@example.com", "Edge@123").await;
    for _ in 0..2 {
        let (status, body) = ingest(
            &s,
            "/api/metrics",
            Some(&user),
            Some("tenant-edge"),
            &json!({ "snapshots": [snapshot(), snapshot()] }),
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, json!({ "accepted": 2 }))
        );
    }
    assert_eq!(s.snapshots("tenant-edge"), vec![snapshot(); 4]);
    for (field, value) in [
        ("timestamp", json!("now")),
        ("connections", json!(-1)),
        ("connections", json!(1.5)),
        ("bandwidthIn", json!("fast")),
        ("inactive", Value::Null),
    ] {
        let mut snap = snapshot();
        snap[field] = value;
        let (status, body) = ingest(
            &s,
            "/api/metrics",
            Some(&user),
            Some("tenant-edge"),
            &json!({ "snapshots": [snap] }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        error_text(&body);
    }
    let (status, _) = ingest(
        &s,
        "/api/metrics",
        Some(&user),
        Some("tenant-edge"),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.snapshots("tenant-edge").len(), 4);
}

#[tokio::test]
async fn body_over_2mb_is_413() {
    let s = start_default().await;
    let user = signin(&s, "edge@example.com", "Edge@123").await;
    let one = serde_json::to_string(&connection("c0", 1)).unwrap();
    let count = 2 * 1024 * 1024 / one.len() + 10;
    let list: Vec<Value> = (0..count)
        .map(|i| connection(&format!("c{i}"), 1))
        .collect();
    let big = json!({ "connections": list });
    assert!(serde_json::to_vec(&big).unwrap().len() > 2 * 1024 * 1024);
    let (status, body) = ingest(
        &s,
        "/api/connections",
        Some(&user),
        Some("tenant-edge"),
        &big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    error_text(&body);
    // Just under the limit is accepted.
    let fits: Vec<Value> = (0..count / 2)
        .map(|i| connection(&format!("c{i}"), 1))
        .collect();
    let (status, _) = ingest(
        &s,
        "/api/connections",
        Some(&user),
        Some("tenant-edge"),
        &json!({ "connections": fits }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.connections("tenant-edge").len(), count / 2);
}
