//! Contract 1 (seed 000) over real HTTP: every endpoint's shapes and the weak spots.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edgeshare_standin::{CODE_ALPHABET, StandinConfig};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn login_shapes() {
    let s = start_default().await;
    let (status, body) = post(
        &s,
        "/api/auth/login",
        None,
        json!({ "email": "provider@example.com", "password": "Provider@123" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["email"], "provider@example.com");
    assert_eq!(body["user"]["role"], "provider");
    assert_eq!(body["user"]["name"], "Demo Provider");
    assert!(body["user"]["id"].is_string());
    let c = claims(body["token"].as_str().unwrap());
    assert_eq!(c["sub"], body["user"]["id"]);
    assert_eq!(c["role"], "provider");
    let ttl = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(ttl, 7 * 24 * 3600);

    let (status, body) = post(
        &s,
        "/api/auth/login",
        None,
        json!({ "email": "provider@example.com", "password": "wrong" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "error": "Invalid credentials" }));

    let (status, body) = post(&s, "/api/auth/login", None, json!({ "email": "x@y" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_text(&body);

    for (email, password) in [
        ("admin@example.com", "Admin@123"),
        ("consumer@example.com", "Consumer@123"),
    ] {
        login(&s, email, password).await;
    }
}

#[tokio::test]
async fn register_shapes() {
    let s = start_default().await;
    let (status, body) = post(
        &s,
        "/api/auth/register",
        None,
        json!({ "name": "C", "email": "c@example.com", "password": "pw" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["email"], "c@example.com");
    assert_eq!(body["role"], "consumer");
    assert!(body["id"].is_string());

    let (status, body) = post(
        &s,
        "/api/auth/register",
        None,
        json!({ "name": "P", "email": "p@example.com", "password": "pw", "role": "provider" }),
    )
    .await;
    assert_eq!(
        (status, &body["role"]),
        (StatusCode::OK, &json!("provider"))
    );
    login(&s, "p@example.com", "pw").await;

    let (status, body) = post(
        &s,
        "/api/auth/register",
        None,
        json!({ "name": "C", "email": "c@example.com", "password": "pw" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    error_text(&body);

    let (status, _) = post(
        &s,
        "/api/auth/register",
        None,
        json!({ "email": "d@example.com" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        &s,
        "/api/auth/register",
        None,
        json!({ "name": "D", "email": "d@example.com", "password": "pw", "role": "root" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn me_and_token_errors() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let (status, body) = get(&s, "/api/auth/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "id",
        "email",
        "role",
        "name",
        "points",
        "bytesShared",
        "bytesConsumed",
    ] {
        assert!(body.get(field).is_some(), "{field} missing in {body}");
    }
    assert_eq!(body["points"], 0);
    assert_eq!(body["bytesShared"], 0);

    let (status, body) = get(&s, "/api/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    error_text(&body);
    let (status, _) = get(&s, "/api/auth/me", Some("not.a.jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A token of another contract is not accepted.
    let (_, depin) = post(
        &s,
        "/login",
        None,
        json!({ "username": "device-001", "password": "Device@123" }),
    )
    .await;
    let (status, _) = get(&s, "/api/auth/me", depin["access_token"].as_str()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_and_list_codes() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let (status, body) = post(
        &s,
        "/api/provider/codes",
        Some(&token),
        json!({ "totalMB": 100, "count": 3, "expireHours": 24 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let codes = body["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 3);
    for c in codes {
        let code = c["code"].as_str().unwrap();
        assert_eq!(code.len(), 8);
        assert!(code.chars().all(|ch| CODE_ALPHABET.contains(ch)), "{code}");
        assert_eq!(c["totalMB"], 100);
        let expire = c["expireAt"].as_str().unwrap();
        // `toISOString()` shape: milliseconds and `Z`.
        assert_eq!(expire.len(), 24, "{expire}");
        assert!(
            expire.ends_with('Z') && expire.as_bytes()[19] == b'.',
            "{expire}"
        );
        let state = s.code(code).unwrap();
        let hours =
            (state.expire_at.unwrap() - time::OffsetDateTime::now_utc()).as_seconds_f64() / 3600.0;
        assert!((23.9..=24.0).contains(&hours), "{hours}");
    }

    let (status, body) = post(
        &s,
        "/api/provider/codes",
        Some(&token),
        json!({ "totalMB": 1, "expireHours": 2 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["codes"].as_array().unwrap().len(), 1);

    for bad in [
        json!({ "totalMB": 0 }),
        json!({ "totalMB": -5 }),
        json!({}),
        json!({ "totalMB": 10, "count": 51 }),
    ] {
        let (status, body) = post(&s, "/api/provider/codes", Some(&token), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        error_text(&body);
    }
    let (status, _) = post(
        &s,
        "/api/provider/codes",
        Some(&token),
        json!({ "totalMB": 1, "count": 50 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Roles: a consumer is refused, an admin may.
    let consumer = login(&s, "consumer@example.com", "Consumer@123").await;
    let (status, body) = post(
        &s,
        "/api/provider/codes",
        Some(&consumer),
        json!({ "totalMB": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    error_text(&body);
    let (status, _) = get(&s, "/api/provider/codes", Some(&consumer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(&s, "/api/provider/codes", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = login(&s, "admin@example.com", "Admin@123").await;
    let admin_code = new_code(&s, &admin, 5.0).await;

    // The list is the caller's own, with remainingMB.
    let (status, body) = get(&s, "/api/provider/codes", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let list = body["codes"].as_array().unwrap();
    assert_eq!(list.len(), 3 + 3 + 1 + 50, "seeded + created");
    // The seeded codes are valid 24 h; made without `expireHours`, a code never expires.
    assert_eq!(list[0]["expireAt"], json!(null));
    assert!(list.iter().all(|c| c["code"] != admin_code.as_str()));
    let seeded = list
        .iter()
        .find(|c| c["code"] == s.seed_codes()[0].as_str())
        .unwrap();
    assert_eq!(seeded["totalMB"], 500);
    assert_eq!(seeded["remainingMB"], 500);
    assert_eq!(seeded["redeemedBy"], json!(null));
    assert!(seeded["expireAt"].is_string());
}

#[tokio::test]
async fn authorize_code_shapes() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let (status, body) = post(
        &s,
        "/api/gateway/authorize-code",
        Some(&token),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "ok": true, "remainingMB": 500, "totalMB": 500, "redeemedBy": null })
    );
    let (status, body) = post(&s, "/api/gateway/authorize-code", Some(&token), json!({})).await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!({ "error": "code required" }))
    );
    let (status, body) = post(
        &s,
        "/api/gateway/authorize-code",
        Some(&token),
        json!({ "code": "ZZZZZZZZ" }),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({ "error": "Invalid code" }))
    );
    let consumer = login(&s, "consumer@example.com", "Consumer@123").await;
    let (status, _) = post(
        &s,
        "/api/gateway/authorize-code",
        Some(&consumer),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post(
        &s,
        "/api/gateway/authorize-code",
        None,
        json!({ "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = login(&s, "admin@example.com", "Admin@123").await;
    let (status, _) = post(
        &s,
        "/api/gateway/authorize-code",
        Some(&admin),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn report_usage_shapes_usage_log_and_consumer() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let consumer_id = s.user("consumer@example.com").unwrap().id;
    let (status, body) = post(
        &s,
        "/api/gateway/report-usage",
        Some(&token),
        json!({ "code": code, "bytes": 3 * MIB, "consumerId": consumer_id }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "ok": true, "remainingMB": 497 }));
    assert_eq!(
        s.user("consumer@example.com").unwrap().bytes_consumed,
        3 * MIB
    );

    for bad in [
        json!({ "code": code }),
        json!({ "bytes": 5 }),
        json!({ "code": code, "bytes": 0 }),
        json!({ "code": code, "bytes": -4 }),
    ] {
        let (status, body) = post(&s, "/api/gateway/report-usage", Some(&token), bad.clone()).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({ "error": "code and bytes required" })
            ),
            "{bad}"
        );
    }
    let (status, body) = report(&s, &token, "ZZZZZZZZ", json!(5)).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({ "error": "Invalid code" }))
    );
    let consumer = login(&s, "consumer@example.com", "Consumer@123").await;
    let (status, _) = report(&s, &consumer, &code, json!(5)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Any provider or admin may report on any code: ownership is not checked.
    let admin = login(&s, "admin@example.com", "Admin@123").await;
    let (status, body) = report(&s, &admin, &code, json!(MIB)).await;
    assert_eq!(
        (status, &body["remainingMB"]),
        (StatusCode::OK, &json!(496))
    );
    // The points and the log go to the reporter, not to the code's owner.
    assert_eq!(s.user("provider@example.com").unwrap().points, 3);
    assert_eq!(s.user("admin@example.com").unwrap().points, 1);

    let (status, body) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totalBytes"], 3 * MIB);
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["code"], code.as_str());
    assert!(logs[0]["createdAt"].is_string());
    assert_eq!(logs[0]["consumerId"], consumer_id.as_str());
    assert_eq!(logs[0]["bytes"], 3 * MIB);
    let (_, admin_usage) = get(&s, "/api/provider/usage", Some(&admin)).await;
    assert_eq!(admin_usage["totalBytes"], MIB);
    assert_eq!(admin_usage["logs"].as_array().unwrap().len(), 1);
    assert!(admin_usage["logs"][0].get("consumerId").is_none());
}

#[tokio::test]
async fn repeated_report_is_applied_twice() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[1].clone();
    for expected in [498, 496] {
        let (status, body) = report(&s, &token, &code, json!(2 * MIB)).await;
        assert_eq!(
            (status, &body["remainingMB"]),
            (StatusCode::OK, &json!(expected))
        );
    }
    assert_eq!(s.code(&code).unwrap().remaining_mb, 496.0);
    assert_eq!(s.user("provider@example.com").unwrap().points, 4);
}

#[tokio::test]
async fn concurrent_reports_lose_updates() {
    let s = start(StandinConfig {
        report_race_window: Duration::from_millis(300),
        ..StandinConfig::default()
    })
    .await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, token, code) = (s.base_url(), token.clone(), code.clone());
        tasks.spawn(async move {
            client()
                .post(format!("{url}/api/gateway/report-usage"))
                .bearer_auth(token)
                .json(&json!({ "code": code, "bytes": MIB }))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let remaining = s.code(&code).unwrap().remaining_mb;
    assert!(
        remaining > 490.5,
        "all 10 updates applied ({remaining}): no lost update"
    );
    assert!(remaining < 500.0);
    // Every report earned its point: only the code's balance loses updates.
    assert_eq!(s.user("provider@example.com").unwrap().points, 10);
}

#[tokio::test]
async fn overshoot_tolerance_and_clamping() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let a = new_code(&s, &token, 1.0).await;
    let b = new_code(&s, &token, 1.0).await;
    // 0.0105 MB too much: the whole report is refused.
    let (status, body) = report(&s, &token, &b, json!(MIB + 11_010)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "Not enough remaining MB" })
        )
    );
    assert_eq!(s.code(&b).unwrap().remaining_mb, 1.0);
    // 0.0095 MB too much: accepted, clamped to 0.
    let (status, body) = report(&s, &token, &a, json!(MIB + 9_961)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 0 }))
    );
    assert_eq!(s.code(&a).unwrap().remaining_mb, 0.0);
    // authorize-code does not check what is left.
    let (status, body) = post(
        &s,
        "/api/gateway/authorize-code",
        Some(&token),
        json!({ "code": a }),
    )
    .await;
    assert_eq!(
        (status, &body["ok"], &body["remainingMB"]),
        (StatusCode::OK, &json!(true), &json!(0))
    );
    // A further report within the tolerance is still accepted; beyond it, refused.
    let (status, _) = report(&s, &token, &a, json!(10_000)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = report(&s, &token, &a, json!(11_000)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Fractional balances.
    let (_, body) = report(&s, &token, &b, json!(MIB / 4)).await;
    assert_eq!(body["remainingMB"], 0.75);
}

#[tokio::test]
async fn points_granularity_and_bytes_shared() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let (status, _) = report(&s, &token, &code, json!(MIB - 1)).await;
    assert_eq!(status, StatusCode::OK);
    let u = s.user("provider@example.com").unwrap();
    assert_eq!(
        (u.points, &u.bytes_shared),
        (0, &json!(0)),
        "under 1 MiB earns nothing"
    );
    let (status, _) = report(&s, &token, &code, json!(2 * MIB + 5)).await;
    assert_eq!(status, StatusCode::OK);
    let u = s.user("provider@example.com").unwrap();
    assert_eq!((u.points, &u.bytes_shared), (2, &json!(2 * MIB + 5)));
    // The balance counts every byte, points or not.
    let expected = 500.0 - (3 * MIB + 4) as f64 / MIB as f64;
    assert!((s.code(&code).unwrap().remaining_mb - expected).abs() < 1e-9);
    let (_, me) = get(&s, "/api/auth/me", Some(&token)).await;
    assert_eq!(
        (&me["points"], &me["bytesShared"]),
        (&json!(2), &json!(2 * MIB + 5))
    );
}

#[tokio::test]
async fn string_bytes_are_deducted_and_concatenated() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let (status, body) = report(&s, &token, &code, json!("2097152")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 498 }))
    );
    let u = s.user("provider@example.com").unwrap();
    assert_eq!(u.points, 2);
    assert_eq!(u.bytes_shared, json!("02097152"));
    let (status, _) = report(&s, &token, &code, json!(MIB)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.user("provider@example.com").unwrap().bytes_shared,
        json!("020971521048576")
    );
    let (_, me) = get(&s, "/api/auth/me", Some(&token)).await;
    assert_eq!(me["bytesShared"], "020971521048576");
    // A string that is not a number is refused.
    let (status, _) = report(&s, &token, &code, json!("lots")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expired_code_answers_400_then_404() {
    let s = start(StandinConfig {
        expired_code_ttl: Duration::from_millis(1000),
        ..StandinConfig::default()
    })
    .await;
    let token = provider_token(&s).await;
    // 0.0002 h = 720 ms.
    let (_, body) = post(
        &s,
        "/api/provider/codes",
        Some(&token),
        json!({ "totalMB": 10, "expireHours": 0.0002 }),
    )
    .await;
    let code = body["codes"][0]["code"].as_str().unwrap().to_owned();
    let authorize = || {
        post(
            &s,
            "/api/gateway/authorize-code",
            Some(&token),
            json!({ "code": code }),
        )
    };
    assert_eq!(authorize().await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        authorize().await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Code expired" }))
    );
    assert_eq!(
        report(&s, &token, &code, json!(5)).await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Code expired" }))
    );
    assert!(s.code(&code).unwrap().expired);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        authorize().await,
        (StatusCode::NOT_FOUND, json!({ "error": "Invalid code" }))
    );
    assert_eq!(
        report(&s, &token, &code, json!(5)).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(s.code(&code).is_none());
    let (_, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    assert!(
        list["codes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["code"] != code.as_str())
    );
}

#[tokio::test]
async fn seed_codes_are_configurable() {
    let s = start(StandinConfig {
        seed_codes: vec!["ABCDEFGH".into(), "23456789".into()],
        ..StandinConfig::default()
    })
    .await;
    assert_eq!(s.seed_codes(), ["ABCDEFGH", "23456789"]);
    let c = s.code("ABCDEFGH").unwrap();
    assert_eq!(
        (c.total_mb, c.remaining_mb, c.owner_email.as_str()),
        (500.0, 500.0, "provider@example.com")
    );
    assert_eq!(s.codes().len(), 2);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = StandinConfig {
        seed_codes: vec!["NOTVALID0".into()],
        ..StandinConfig::default()
    };
    assert!(edgeshare_standin::start(listener, bad).await.is_err());
}

#[tokio::test]
async fn bad_input_gets_json_errors() {
    let s = start_default().await;
    let c = client();
    let resp = c
        .post(format!("{}/api/auth/login", s.base_url()))
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .unwrap();
    let (status, body) = reply(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_text(&body);
    // Not JSON at all (no content type): Express sees `{}`.
    let resp = c
        .post(format!("{}/api/auth/login", s.base_url()))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_eq!(reply(resp).await.0, StatusCode::BAD_REQUEST);
    let (status, body) = get(&s, "/api/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_text(&body);
    let (status, body) = get(&s, "/api/auth/login", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    error_text(&body);
}
