//! Contract 1 (seed 000) over real HTTP: every endpoint's shapes and the weak spots.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use edgeshare_standin::{CODE_ALPHABET, Fault, FaultKind, StandinConfig};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn login_shapes() {
    let s = start_default().await;
    let body = token_reply(try_login(&s, "provider@example.com", "Provider@123").await);
    assert_eq!(body["user"]["email"], "provider@example.com");
    assert_eq!(body["user"]["role"], "provider");
    assert_eq!(body["user"]["name"], "Demo Provider");
    assert!(body["user"]["id"].is_string());
    let c = claims(body["token"].as_str().unwrap());
    assert_eq!(c["sub"], body["user"]["id"]);
    assert_eq!(c["role"], "provider");
    let ttl = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(ttl, 7 * 24 * 3600);

    let (status, body) = try_login(&s, "provider@example.com", "wrong").await;
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
    let (status, body) = register(
        &s,
        json!({ "name": "C", "email": "c@example.com", "password": "pw" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["email"], "c@example.com");
    assert_eq!(body["role"], "consumer");
    assert!(body["id"].is_string());

    let (status, body) = register(
        &s,
        json!({ "name": "P", "email": "p@example.com", "password": "pw", "role": "provider" }),
    )
    .await;
    assert_eq!(
        (status, &body["role"]),
        (StatusCode::OK, &json!("provider"))
    );
    login(&s, "p@example.com", "pw").await;

    let (status, body) = register(
        &s,
        json!({ "name": "C", "email": "c@example.com", "password": "pw" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    error_text(&body);

    for bad in [
        json!({ "email": "d@example.com" }),
        json!({ "name": "D", "email": "d@example.com", "password": "pw", "role": "root" }),
    ] {
        let (status, _) = register(&s, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
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
    let depin = depin_login(&s).await;
    let (status, _) = get(&s, "/api/auth/me", depin["access_token"].as_str()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_and_list_codes() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let (status, body) = make_codes(
        &s,
        &token,
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

    let (status, body) = make_codes(&s, &token, json!({ "totalMB": 1, "expireHours": 2 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["codes"].as_array().unwrap().len(), 1);

    for bad in [
        json!({ "totalMB": 0 }),
        json!({ "totalMB": -5 }),
        json!({}),
        json!({ "totalMB": 10, "count": 51 }),
    ] {
        let (status, body) = make_codes(&s, &token, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        error_text(&body);
    }
    let (status, _) = make_codes(&s, &token, json!({ "totalMB": 1, "count": 50 })).await;
    assert_eq!(status, StatusCode::OK);

    // Roles: a consumer is refused, an admin may.
    let consumer = consumer_token(&s).await;
    let (status, body) = make_codes(&s, &consumer, json!({ "totalMB": 1 })).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    error_text(&body);
    let (status, _) = get(&s, "/api/provider/codes", Some(&consumer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(&s, "/api/provider/codes", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = admin_token(&s).await;
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
    let (s, token, code) = seeded().await;
    let (status, body) = authorize(&s, Some(&token), &code).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "ok": true, "remainingMB": 500, "totalMB": 500, "redeemedBy": null })
    );
    let (status, body) = post(&s, "/api/gateway/authorize-code", Some(&token), json!({})).await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::BAD_REQUEST, "code required")
    );
    let (status, body) = authorize(&s, Some(&token), "ZZZZZZZZ").await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::NOT_FOUND, "Invalid code")
    );
    let consumer = consumer_token(&s).await;
    let (status, _) = authorize(&s, Some(&consumer), &code).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = authorize(&s, None, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = admin_token(&s).await;
    let (status, _) = authorize(&s, Some(&admin), &code).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn report_usage_shapes_usage_log_and_consumer() {
    let (s, token, code) = seeded().await;
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
            refusal(StatusCode::BAD_REQUEST, "code and bytes required"),
            "{bad}"
        );
    }
    let (status, body) = report(&s, &token, "ZZZZZZZZ", json!(5)).await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::NOT_FOUND, "Invalid code")
    );
    let consumer = consumer_token(&s).await;
    let (status, _) = report(&s, &consumer, &code, json!(5)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Any provider or admin may report on any code: ownership is not checked.
    let admin = admin_token(&s).await;
    let (status, body) = report(&s, &admin, &code, json!(MIB)).await;
    assert_eq!(
        (status, &body["remainingMB"]),
        (StatusCode::OK, &json!(496))
    );
    // The points and the log go to the code's owner, not to the reporter.
    assert_eq!(s.user("provider@example.com").unwrap().points, 4);
    assert_eq!(s.user("admin@example.com").unwrap().points, 0);

    let (status, body) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totalBytes"], 4 * MIB);
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    // Newest first: the admin's report, then the provider's.
    assert!(logs[1]["_id"].is_string() && logs[0]["_id"] != logs[1]["_id"]);
    assert_eq!(logs[1]["code"], code.as_str());
    assert_eq!(
        logs[1]["provider"],
        s.user("provider@example.com").unwrap().id
    );
    assert!(logs[1]["createdAt"].is_string());
    assert_eq!(logs[1]["consumerId"], consumer_id.as_str());
    assert_eq!(logs[1]["bytes"], 3 * MIB);
    assert_eq!(logs[0]["bytes"], MIB);
    assert!(logs[0].get("consumerId").is_none());
    let (_, admin_usage) = get(&s, "/api/provider/usage", Some(&admin)).await;
    assert_eq!(admin_usage, json!({ "totalBytes": 0, "logs": [] }));
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
    let (s, token) = start_as_provider(StandinConfig {
        report_race_window: Duration::from_millis(300),
        // The accounts' race is the next test's.
        credit_race_window: Duration::ZERO,
        ..StandinConfig::default()
    })
    .await;
    let code = s.seed_codes()[0].clone();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, token, code) = (s.base_url(), token.clone(), code.clone());
        tasks.spawn(async move {
            report_status(url, token, json!({ "code": code, "bytes": MIB })).await
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

/// The second save reads the owner's and the consumer's user records and writes them back
/// after the credit window: reports on DIFFERENT codes of one owner, naming one consumer, lose
/// each other's credit (every report answered 200, every code debited in full), and each user
/// counts what it lost. Without the window, nothing is lost.
#[tokio::test]
async fn concurrent_reports_on_different_codes_lose_the_accounts_credit() {
    for (window, lossy) in [(Duration::from_millis(200), true), (Duration::ZERO, false)] {
        let (s, token) = start_as_provider(StandinConfig {
            credit_race_window: window,
            ..StandinConfig::default()
        })
        .await;
        let consumer = s.user("consumer@example.com").unwrap().id;
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(new_code(&s, &token, 10.0).await);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, code) in codes.iter().enumerate() {
            let (url, token, code, consumer) =
                (s.base_url(), token.clone(), code.clone(), consumer.clone());
            let bytes = (i as u64 + 1) * MIB;
            tasks.spawn(async move {
                report_status(
                    url,
                    token,
                    json!({ "code": code, "bytes": bytes, "consumerId": consumer }),
                )
                .await
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.unwrap(), StatusCode::OK);
        }
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(s.code(code).unwrap().remaining_mb, 10.0 - (i + 1) as f64);
        }
        let owner = s.user("provider@example.com").unwrap();
        let buyer = s.user("consumer@example.com").unwrap();
        let sent: u64 = (1..=6).sum();
        // Every report has its log entry, lost credit or not.
        let (_, usage) = get(&s, "/api/provider/usage", Some(&token)).await;
        assert_eq!(usage["logs"].as_array().unwrap().len(), 6);
        // What is there plus what the stand-in counted lost is what was sent.
        assert_eq!(owner.points + owner.lost_points, sent);
        assert_eq!(
            owner.bytes_shared.as_u64().unwrap() + owner.lost_bytes_shared,
            sent * MIB
        );
        assert_eq!(buyer.bytes_consumed + buyer.lost_bytes_consumed, sent * MIB);
        if lossy {
            assert!(owner.points < sent, "no lost update: {owner:?}");
            assert!(
                buyer.bytes_consumed < sent * MIB,
                "no lost update: {buyer:?}"
            );
        } else {
            assert_eq!((owner.points, owner.lost_points), (sent, 0));
            assert_eq!(buyer.bytes_consumed, sent * MIB);
        }
        s.shutdown().await;
    }
}

/// The usage log lists the latest 200 entries, newest first, as the real service does.
#[tokio::test]
async fn the_usage_log_lists_the_latest_200_entries() {
    let (s, token) = start_as_provider(StandinConfig {
        report_race_window: Duration::ZERO,
        credit_race_window: Duration::ZERO,
        ..StandinConfig::default()
    })
    .await;
    let code = new_code(&s, &token, 300.0).await;
    for bytes in 1..=205u64 {
        let (status, _) = report(&s, &token, &code, json!(bytes)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, usage) = get(&s, "/api/provider/usage", Some(&token)).await;
    let logs = usage["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 200);
    assert_eq!(logs[0]["bytes"], 205);
    assert_eq!(logs[199]["bytes"], 6);
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
        refusal(StatusCode::BAD_REQUEST, "Not enough remaining MB")
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
    let (status, body) = authorize(&s, Some(&token), &a).await;
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
    let (s, token, code) = seeded().await;
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
    assert_credit(&s, &token, json!(2), json!(2 * MIB + 5)).await;
}

#[tokio::test]
async fn string_bytes_are_deducted_and_concatenated() {
    let (s, token, code) = seeded().await;
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

/// A stand-in that purges an expired code `ttl` after its expiry.
fn expiring_after(ttl: Duration) -> StandinConfig {
    StandinConfig {
        expired_code_ttl: ttl,
        ..StandinConfig::default()
    }
}

#[tokio::test]
async fn expired_code_answers_400_then_404() {
    let (s, token) = start_as_provider(expiring_after(Duration::from_millis(1000))).await;
    // 0.0002 h = 720 ms.
    let (_, body) = make_codes(&s, &token, json!({ "totalMB": 10, "expireHours": 0.0002 })).await;
    let code = first_code(&body);
    let ask = || authorize(&s, Some(&token), &code);
    assert_eq!(ask().await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        ask().await,
        refusal(StatusCode::BAD_REQUEST, "Code expired")
    );
    assert_eq!(
        report(&s, &token, &code, json!(5)).await,
        refusal(StatusCode::BAD_REQUEST, "Code expired")
    );
    assert!(s.code(&code).unwrap().expired);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask().await, refusal(StatusCode::NOT_FOUND, "Invalid code"));
    assert_eq!(
        report(&s, &token, &code, json!(5)).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(s.code(&code).is_none());
    let (_, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    assert!(!lists(&list, &code), "{code} listed");
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

/// Point 1: without `expireHours` (absent, `null` or 0, read as JavaScript's
/// `expireHours ? ... : null`), a code has `"expireAt": null`, never expires and is never purged.
#[tokio::test]
async fn codes_without_expire_hours_never_expire() {
    let (s, token) = start_as_provider(expiring_after(Duration::from_millis(200))).await;
    let mut forever = Vec::new();
    for body in [
        json!({ "totalMB": 10 }),
        json!({ "totalMB": 10, "expireHours": null }),
        json!({ "totalMB": 10, "expireHours": 0 }),
    ] {
        let (status, reply) = make_codes(&s, &token, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let made = &reply["codes"][0];
        assert!(made.get("expireAt").is_some(), "{reply}");
        assert_eq!(made["expireAt"], json!(null), "{body}");
        forever.push(made["code"].as_str().unwrap().to_owned());
    }
    // Short-lived codes still work: 0.02 h is 72 s, -1 h is already expired.
    let (_, short) = make_codes(&s, &token, json!({ "totalMB": 10, "expireHours": 0.02 })).await;
    let short_code = first_code(&short);
    let at = time::OffsetDateTime::parse(
        short["codes"][0]["expireAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let secs = (at - time::OffsetDateTime::now_utc()).as_seconds_f64();
    assert!((70.0..=72.0).contains(&secs), "{secs}");
    let (_, past) = make_codes(&s, &token, json!({ "totalMB": 10, "expireHours": -1 })).await;
    let past_code = first_code(&past);

    // Past the TTL of the expired code: it is purged, the ones without expiry are not.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.code(&past_code).is_none());
    assert!(s.code(&short_code).unwrap().expire_at.is_some());
    let (status, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let list = list["codes"].as_array().unwrap();
    for code in &forever {
        let listed = list.iter().find(|c| c["code"] == code.as_str()).unwrap();
        assert!(listed.get("expireAt").is_some());
        assert_eq!(listed["expireAt"], json!(null));
        assert_eq!(listed["remainingMB"], 10);
        let state = s.code(code).unwrap();
        assert_eq!((state.expire_at, state.expired), (None, false));
        // The control API serializes it as null too.
        let (_, control) = get(&s, &format!("/__standin/codes/{code}"), None).await;
        assert_eq!(
            (&control["expireAt"], &control["expired"]),
            (&json!(null), &json!(false))
        );
        let (status, body) = authorize(&s, Some(&token), code).await;
        assert_eq!((status, &body["ok"]), (StatusCode::OK, &json!(true)));
        let (status, _) = report(&s, &token, code, json!(MIB)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(list.iter().all(|c| c["code"] != past_code.as_str()));
    let (_, all) = get(&s, "/__standin/codes", None).await;
    assert_eq!(all.as_array().unwrap().len(), 3 + 3 + 1);
}

/// Point 2: the default TTL is about a minute, like the real database's TTL monitor (both
/// phases over HTTP with a short TTL are in `expired_code_answers_400_then_404`).
#[tokio::test]
async fn expired_code_ttl_defaults_to_a_minute() {
    assert_eq!(
        StandinConfig::default().expired_code_ttl,
        Duration::from_secs(60)
    );
    let s = start_default().await;
    let token = provider_token(&s).await;
    let (_, body) = make_codes(&s, &token, json!({ "totalMB": 10, "expireHours": -0.001 })).await;
    let code = first_code(&body);
    // 3.6 s past its expiry, within the minute: still 400, not yet 404.
    let (status, body) = authorize(&s, Some(&token), &code).await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::BAD_REQUEST, "Code expired")
    );
    assert_eq!(
        report(&s, &token, &code, json!(MIB)).await,
        refusal(StatusCode::BAD_REQUEST, "Code expired")
    );
}

/// Whether a `GET /api/provider/codes` reply lists `code`.
fn lists(list: &serde_json::Value, code: &str) -> bool {
    list["codes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["code"] == code)
}

/// The entry of `code` in a `GET /api/provider/codes` reply.
fn listed_code(list: &serde_json::Value, code: &str) -> serde_json::Value {
    list["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == code)
        .unwrap_or_else(|| panic!("{code} not listed: {list}"))
        .clone()
}

async fn add_fault_over_http(s: &edgeshare_standin::Standin, fault: serde_json::Value) {
    let resp = client()
        .post(format!("{}/__standin/faults", s.base_url()))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(reply(resp).await.0, StatusCode::OK);
}

/// Point 3: a report is applied in two saves; `crash_between_saves` makes the first only and
/// drops the connection without a reply.
#[tokio::test]
async fn crash_between_saves_debits_the_code_and_credits_nobody() {
    let (s, token, code) = seeded().await;
    let consumer_id = s.user("consumer@example.com").unwrap().id;
    // Set over HTTP; with a prefix matching every path it still only hits report-usage.
    add_fault_over_http(&s, json!({ "kind": "crash_between_saves", "times": 1 })).await;
    let (_, faults) = get(&s, "/__standin/faults", None).await;
    assert_eq!(faults[0]["kind"], "crash_between_saves");
    let (status, _) = authorize(&s, Some(&token), &code).await;
    assert_eq!(status, StatusCode::OK);
    let (_, before) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(before["logs"], json!([]));

    let err = report_fresh(
        &s,
        Duration::from_secs(5),
        &token,
        json!({ "code": code, "bytes": 3 * MIB, "consumerId": consumer_id }),
    )
    .await
    .expect_err("no reply after the crash");
    assert!(
        !err.is_timeout(),
        "the connection is dropped at once: {err}"
    );
    let (_, faults) = get(&s, "/__standin/faults", None).await;
    assert_eq!(faults, json!([]), "used up");

    // First save made: the code is debited.
    let (_, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    let listed = listed_code(&list, &code);
    assert_eq!(listed["remainingMB"], 497);
    // Second save not made: no points, no bytesShared, no log, no bytesConsumed.
    assert_credit(&s, &token, json!(0), json!(0)).await;
    let (_, usage) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(usage, json!({ "totalBytes": 0, "logs": [] }));
    assert_eq!(s.user("consumer@example.com").unwrap().bytes_consumed, 0);
    // Recorded without a status: no reply was sent.
    let recorded = s.received();
    let crashed = recorded
        .iter()
        .find(|r| r.path == "/api/gateway/report-usage")
        .unwrap();
    assert_eq!(crashed.status, None);

    // The next report is applied whole; the Rust API sets the same fault.
    let (status, body) = report(&s, &token, &code, json!(2 * MIB)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 495 }))
    );
    assert_credit(&s, &token, json!(2), json!(2 * MIB)).await;
    s.set_fault(Fault::new("/api/gateway", FaultKind::CrashBetweenSaves).times(1));
    let err = report_fresh(
        &s,
        Duration::from_secs(5),
        &token,
        json!({ "code": code, "bytes": MIB }),
    )
    .await;
    assert!(err.is_err());
    assert_eq!(s.code(&code).unwrap().remaining_mb, 494.0);
    assert_eq!(s.user("provider@example.com").unwrap().points, 2);
}

/// Point 4: `floor(bytes / 2^20)` points per report; `bytesShared` moves only with a point,
/// the code's balance and the usage log with every report.
#[tokio::test]
async fn points_are_floor_of_each_report() {
    let (s, token) = start_as_provider(StandinConfig {
        report_race_window: Duration::ZERO,
        ..StandinConfig::default()
    })
    .await;
    // 19.99 MiB of a 20 MB code in ~4.8 MiB pieces: 4 + 4 + 4 + 5 = 17 points, not 19.
    let uneven = new_code(&s, &token, 20.0).await;
    let piece = 5_033_165; // 4.8 MiB
    let total = 20_961_034; // 19.99 MiB
    let pieces = [piece, piece, piece, total - 3 * piece];
    for bytes in pieces {
        let (status, _) = report(&s, &token, &uneven, json!(bytes)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_credit(&s, &token, json!(17), json!(total)).await;
    let (_, usage) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(usage["logs"].as_array().unwrap().len(), 4);
    assert!((s.code(&uneven).unwrap().remaining_mb - 0.01).abs() < 1e-6);

    // 20 reports of exactly 1 MiB: 20 points.
    let whole = new_code(&s, &token, 20.0).await;
    for _ in 0..20 {
        let (status, _) = report(&s, &token, &whole, json!(MIB)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_credit(&s, &token, json!(17 + 20), json!(total + 20 * MIB)).await;
    assert_eq!(s.code(&whole).unwrap().remaining_mb, 0.0);

    // 0.5 MiB: no point, no bytesShared, but the code is debited and the log has it.
    let half = new_code(&s, &token, 1.0).await;
    let (status, body) = report(&s, &token, &half, json!(MIB / 2)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 0.5 }))
    );
    assert_credit(&s, &token, json!(37), json!(total + 20 * MIB)).await;
    let (_, after) = get(&s, "/api/provider/usage", Some(&token)).await;
    assert_eq!(after["logs"].as_array().unwrap().len(), 4 + 20 + 1);
    assert_eq!(after["logs"][0]["code"], half.as_str());
    assert_eq!(after["logs"][0]["bytes"], MIB / 2);
    let (_, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    let listed = listed_code(&list, &half);
    assert_eq!(listed["remainingMB"], 0.5);
}

/// Point 5: any provider (or admin) may authorize and report any code; the code's owner is
/// credited, not the reporter; the code list is the caller's own.
#[tokio::test]
async fn any_provider_may_authorize_and_report_any_code() {
    let s = start_default().await;
    let owner = provider_token(&s).await;
    let code = s.seed_codes()[0].clone();
    let roamer = json!({
        "name": "Roamer", "email": "roamer@example.com", "password": "pw", "role": "provider"
    });
    let (status, _) = register(&s, roamer).await;
    assert_eq!(status, StatusCode::OK);
    let roamer = login(&s, "roamer@example.com", "pw").await;

    let (status, body) = authorize(&s, Some(&roamer), &code).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "ok": true, "remainingMB": 500, "totalMB": 500, "redeemedBy": null })
        )
    );
    let (status, body) = report(&s, &roamer, &code, json!(2 * MIB)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 498 }))
    );
    // The owner is credited, not the reporter.
    assert_credit(&s, &owner, json!(2), json!(2 * MIB)).await;
    assert_credit(&s, &roamer, json!(0), json!(0)).await;
    let (_, usage) = get(&s, "/api/provider/usage", Some(&owner)).await;
    assert_eq!(usage["totalBytes"], 2 * MIB);
    assert_eq!(usage["logs"][0]["code"], code.as_str());
    let (_, usage) = get(&s, "/api/provider/usage", Some(&roamer)).await;
    assert_eq!(usage, json!({ "totalBytes": 0, "logs": [] }));
    // The debit is on the owner's code, seen in the owner's list only.
    let (_, list) = get(&s, "/api/provider/codes", Some(&owner)).await;
    let listed = listed_code(&list, &code);
    assert_eq!(listed["remainingMB"], 498);
    let (_, list) = get(&s, "/api/provider/codes", Some(&roamer)).await;
    assert_eq!(list, json!({ "codes": [] }));
    // The roamer's own code is not in the owner's list, and the owner may bill it.
    let own = new_code(&s, &roamer, 5.0).await;
    let (_, list) = get(&s, "/api/provider/codes", Some(&roamer)).await;
    assert_eq!(list["codes"].as_array().unwrap().len(), 1);
    let (_, list) = get(&s, "/api/provider/codes", Some(&owner)).await;
    assert!(!lists(&list, &own), "{own} listed");
    let (status, _) = report(&s, &owner, &own, json!(MIB)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.user("provider@example.com").unwrap().points, 2);
    assert_eq!(s.user("roamer@example.com").unwrap().points, 1);
}

/// Point 6: a missing token is 401 `Missing token`, a token of a deleted user 401 `Invalid
/// user`, a consumer 403 on the gateway and provider endpoints.
#[tokio::test]
async fn missing_token_deleted_user_and_wrong_role() {
    let s = start_default().await;
    let code = s.seed_codes()[0].clone();
    let calls: [(&str, Option<serde_json::Value>); 6] = [
        ("/api/auth/me", None),
        ("/api/provider/codes", None),
        ("/api/provider/usage", None),
        ("/api/provider/codes", Some(json!({ "totalMB": 1 }))),
        ("/api/gateway/authorize-code", Some(json!({ "code": code }))),
        (
            "/api/gateway/report-usage",
            Some(json!({ "code": code, "bytes": MIB })),
        ),
    ];
    let call = |path: &'static str, body: Option<serde_json::Value>, token: Option<String>| {
        let s = &s;
        async move {
            match body {
                Some(body) => post(s, path, token.as_deref(), body).await,
                None => get(s, path, token.as_deref()).await,
            }
        }
    };
    for (path, body) in calls.clone() {
        assert_eq!(
            call(path, body, None).await,
            refusal(StatusCode::UNAUTHORIZED, "Missing token"),
            "{path}"
        );
    }
    let consumer = consumer_token(&s).await;
    for (path, body) in calls.clone().into_iter().skip(1) {
        let (status, reply) = call(path, body, Some(consumer.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        error_text(&reply);
    }
    // A deleted provider's token (deleted over HTTP), and an admin's (over the Rust API).
    let provider = provider_token(&s).await;
    let resp = client()
        .delete(format!(
            "{}/__standin/users/provider@example.com",
            s.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reply(resp).await.0, StatusCode::OK);
    let admin = admin_token(&s).await;
    assert!(s.delete_user("admin@example.com"));
    assert!(!s.delete_user("admin@example.com"));
    for token in [provider, admin] {
        for (path, body) in calls.clone() {
            assert_eq!(
                call(path, body, Some(token.clone())).await,
                refusal(StatusCode::UNAUTHORIZED, "Invalid user"),
                "{path}"
            );
        }
    }
    assert!(s.user("provider@example.com").is_none());
    let (status, body) = try_login(&s, "provider@example.com", "Provider@123").await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::UNAUTHORIZED, "Invalid credentials")
    );
}

/// Point 6: `count: 0` makes no codes and answers `{"codes": []}`; more than 50 is a 400.
#[tokio::test]
async fn count_zero_makes_no_codes_and_over_fifty_is_refused() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let (status, body) = make_codes(&s, &token, json!({ "totalMB": 10, "count": 0 })).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "codes": [] })));
    let (status, body) = make_codes(&s, &token, json!({ "totalMB": 10, "count": 51 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_text(&body);
    assert_eq!(s.codes().len(), 3, "the seeded ones only");
    let (_, list) = get(&s, "/api/provider/codes", Some(&token)).await;
    assert_eq!(list["codes"].as_array().unwrap().len(), 3);
    let (status, body) = make_codes(&s, &token, json!({ "totalMB": 10, "count": 50 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["codes"].as_array().unwrap().len(), 50);
}

/// Point 6: emails are compared exactly.
#[tokio::test]
async fn emails_are_compared_exactly() {
    let s = start_default().await;
    let (status, body) = try_login(&s, "Provider@example.com", "Provider@123").await;
    assert_eq!(
        (status, body),
        refusal(StatusCode::UNAUTHORIZED, "Invalid credentials")
    );
    // Another case is another account.
    let (status, body) = register(
        &s,
        json!({ "name": "P", "email": "Mixed@Example.com", "password": "pw", "role": "provider" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["email"], "Mixed@Example.com");
    login(&s, "Mixed@Example.com", "pw").await;
    let (status, _) = try_login(&s, "mixed@example.com", "pw").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(s.user("mixed@example.com").is_none());
    assert!(s.user("Mixed@Example.com").is_some());
}

/// Point 6: `bytes` missing, 0 or negative is 400 `code and bytes required`; a report beyond
/// the 0.01 MB tolerance 400 `Not enough remaining MB`; within it, clamped to 0 and the code
/// still authorized with `remainingMB: 0`; `bytes` as a string is deducted and concatenated.
#[tokio::test]
async fn report_errors_clamping_and_string_bytes() {
    let s = start_default().await;
    let token = provider_token(&s).await;
    let code = new_code(&s, &token, 2.0).await;
    for bytes in [None, Some(json!(0)), Some(json!(-1)), Some(json!(null))] {
        let mut body = json!({ "code": code });
        if let Some(b) = bytes.clone() {
            body["bytes"] = b;
        }
        assert_eq!(
            post(&s, "/api/gateway/report-usage", Some(&token), body).await,
            refusal(StatusCode::BAD_REQUEST, "code and bytes required"),
            "{bytes:?}"
        );
    }
    // A string: deducted, and bytesShared becomes text.
    let (status, body) = report(&s, &token, &code, json!("1048576")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 1 }))
    );
    let (_, me) = get(&s, "/api/auth/me", Some(&token)).await;
    assert_eq!(me["bytesShared"], "01048576");
    // 0.011 MB too much: refused whole.
    assert_eq!(
        report(&s, &token, &code, json!(MIB + 11_535)).await,
        refusal(StatusCode::BAD_REQUEST, "Not enough remaining MB")
    );
    assert_eq!(s.code(&code).unwrap().remaining_mb, 1.0);
    // 0.009 MB too much: clamped to 0.
    assert_eq!(
        report(&s, &token, &code, json!(MIB + 9_437)).await,
        (StatusCode::OK, json!({ "ok": true, "remainingMB": 0 }))
    );
    assert_eq!(
        authorize(&s, Some(&token), &code).await,
        (
            StatusCode::OK,
            json!({ "ok": true, "remainingMB": 0, "totalMB": 2, "redeemedBy": null })
        )
    );
}

/// Point 7: `GET /api/auth/me` is `{id, email, role, name, points, bytesShared, bytesConsumed}`.
#[tokio::test]
async fn me_has_exactly_the_contract_fields() {
    let s = start_default().await;
    let (_, login_reply) = try_login(&s, "provider@example.com", "Provider@123").await;
    let token = login_reply["token"].as_str().unwrap();
    let (status, me) = get(&s, "/api/auth/me", Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({
            "id": login_reply["user"]["id"],
            "email": "provider@example.com",
            "role": "provider",
            "name": "Demo Provider",
            "points": 0,
            "bytesShared": 0,
            "bytesConsumed": 0,
        })
    );
}
