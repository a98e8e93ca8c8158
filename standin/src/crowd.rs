//! Contract 1 (seed 000): the crowdsourced-internet backend under `/api` — users, access codes,
//! authorize-code and report-usage.
//!
//! Its weak spots are reproduced on purpose, because the edge gateway must cope with them:
//! report-usage has no idempotency, reads `remainingMB` and writes it back after
//! [`StandinConfig::report_race_window`](crate::StandinConfig) (concurrent reports lose updates),
//! lets a report overshoot by 0.01 MB and clamps to 0, grants `floor(bytes / 2^20)` points per
//! report, writes the usage log and grows `bytesShared` only for reports that earned a point,
//! adds `bytes` the JavaScript way (a string is concatenated), and does not check who reports
//! on a code (the code's OWNER is credited, whoever reported). A report is applied in two
//! saves: the code's `remainingMB` first, then the usage log (an entry per report, naming the
//! owner), the owner's `points` and `bytesShared` and the consumer's `bytesConsumed`
//! ([`FaultKind::CrashBetweenSaves`](crate::FaultKind) stops in between). The second save reads
//! the owner's and the consumer's user records and writes them back after
//! [`StandinConfig::credit_race_window`](crate::StandinConfig): two reports crediting one
//! account at once lose an update, for different codes too, as on the real service; each user
//! counts what it so lost ([`UserState::lost_points`]). authorize-code does not check
//! `remainingMB > 0`. A code made without
//! `expireHours` has `expireAt: null` and never expires; an expired code answers 400 until the
//! TTL deletes it, then 404.
//!
//! Not served: `/api/consumer/*`, `/api/leaderboard` and the chat (so `redeemedBy` stays
//! `null`). Lists (`GET /api/provider/codes`, usage logs) are newest first; the usage log
//! lists the latest [`USAGE_LOG_LIMIT`] entries only. Passwords are
//! compared in clear and emails exactly (case matters). Every authenticated call looks the
//! token's user up: a token of a deleted user answers 401 `Invalid user`.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::faults::{CrashBetweenSaves, crash_now};
use crate::{
    ApiError, ApiResult, CODE_ALPHABET, CODE_LEN, JsonBody, Shared, bearer, hex_id, iso_ms, js_num,
    lock, ms_to_datetime, now_ms, str_field,
};

const MB: f64 = 1_048_576.0;
const HOUR_MS: f64 = 3_600_000.0;
/// How far below zero a report may take a code (about 10 KB).
const OVERSHOOT_MB: f64 = 0.01;
const AUD: &str = "crowd";
/// `GET /api/provider/usage` lists this many entries, the newest.
pub const USAGE_LOG_LIMIT: usize = 200;

/// A contract 1 access code as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeState {
    pub code: String,
    #[serde(rename = "ownerId")]
    pub owner_id: String,
    #[serde(rename = "ownerEmail")]
    pub owner_email: String,
    #[serde(rename = "totalMB")]
    pub total_mb: f64,
    #[serde(rename = "remainingMB")]
    pub remaining_mb: f64,
    #[serde(rename = "redeemedBy")]
    pub redeemed_by: Option<String>,
    /// `None` (`"expireAt": null`): made without `expireHours`, never expires.
    #[serde(rename = "expireAt", with = "time::serde::rfc3339::option")]
    pub expire_at: Option<OffsetDateTime>,
    /// Past `expireAt` (answers 400 `Code expired` until it is deleted); never for a code
    /// without `expireAt`.
    pub expired: bool,
}

/// A contract 1 user as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserState {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub points: u64,
    /// A JSON value because the real service can turn it into a string (see the module doc).
    #[serde(rename = "bytesShared")]
    pub bytes_shared: Value,
    #[serde(rename = "bytesConsumed")]
    pub bytes_consumed: u64,
    /// Points other reports had credited that a report's stale write-back overwrote (the
    /// per-account race): the stand-in's own count of what the account lost.
    #[serde(rename = "lostPoints")]
    pub lost_points: u64,
    /// `bytesShared` so lost (counted while it is a number).
    #[serde(rename = "lostBytesShared")]
    pub lost_bytes_shared: u64,
    /// `bytesConsumed` so lost.
    #[serde(rename = "lostBytesConsumed")]
    pub lost_bytes_consumed: u64,
}

/// What the races overwrote of one user's totals.
#[derive(Debug, Default)]
struct Lost {
    points: u64,
    bytes_shared: u64,
    bytes_consumed: u64,
}

#[derive(Debug)]
struct User {
    id: String,
    email: String,
    password: String,
    name: String,
    role: String,
    points: u64,
    bytes_shared: Value,
    bytes_consumed: u64,
    lost: Lost,
}

#[derive(Debug)]
struct Code {
    code: String,
    owner: String,
    total_mb: f64,
    remaining_mb: f64,
    redeemed_by: Option<String>,
    /// `None`: never expires, and the TTL index skips it.
    expire_at_ms: Option<i64>,
}

#[derive(Debug)]
struct UsageLog {
    /// The document id (a Mongo ObjectId's hex).
    id: String,
    code: String,
    /// The code's owner (not necessarily who reported it).
    provider: String,
    bytes: f64,
    consumer_id: Option<String>,
    created_ms: i64,
}

#[derive(Debug)]
pub(crate) struct Db {
    users: Vec<User>,
    /// Oldest first.
    codes: Vec<Code>,
    logs: Vec<UsageLog>,
    pub(crate) seed_codes: Vec<String>,
}

/// One report-usage call, validated.
struct Report<'a> {
    code: &'a str,
    bytes: f64,
    /// `bytes` as sent (a number or a numeric string), for the JavaScript `+=`.
    bytes_sent: &'a Value,
    consumer_id: Option<&'a str>,
}

/// What report-usage's second save read of the accounts it credits, before its race window.
struct CreditRead {
    owner: String,
    points: u64,
    bytes_shared: Value,
    /// The consumer's `bytesConsumed`, if the report names a user.
    consumed: Option<u64>,
}

/// Why a code was refused.
enum Lookup {
    Missing,
    Expired,
}

impl From<Lookup> for ApiError {
    fn from(l: Lookup) -> Self {
        match l {
            Lookup::Missing => ApiError::not_found("Invalid code"),
            Lookup::Expired => ApiError::bad_request("Code expired"),
        }
    }
}

fn is_valid_code(code: &str) -> bool {
    code.len() == CODE_LEN && code.chars().all(|c| CODE_ALPHABET.contains(c))
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// `a + b` as JavaScript evaluates it for the values a Mongo document can hold here: if either
/// is a string, both are printed and concatenated.
fn js_add(a: &Value, b: &Value) -> Value {
    fn js_string(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    match (a, b) {
        (Value::String(_), _) | (_, Value::String(_)) => {
            Value::String(js_string(a) + &js_string(b))
        }
        _ => js_num(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

/// `bytes` of a report: a positive JSON number, or a string that parses as one (JavaScript
/// coerces it in `bytes <= 0` and `bytes / MB`). Returns the number and the value as sent.
fn parse_bytes(v: Option<&Value>) -> Option<(f64, Value)> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n > 0.0).then(|| (n, v.cloned().unwrap_or(Value::Null)))
}

impl Db {
    pub(crate) fn seeded(seed_codes: &[String], now: i64) -> anyhow::Result<Self> {
        let mut db = Self {
            users: Vec::new(),
            codes: Vec::new(),
            logs: Vec::new(),
            seed_codes: Vec::new(),
        };
        let provider = db.add_user(
            "Demo Provider",
            "provider@example.com",
            "Provider@123",
            "provider",
        );
        db.add_user("Admin", "admin@example.com", "Admin@123", "admin");
        db.add_user(
            "Demo Consumer",
            "consumer@example.com",
            "Consumer@123",
            "consumer",
        );
        // The real seed script's codes are valid 24 h.
        let expire = Some(now + 24 * 3_600_000);
        if seed_codes.is_empty() {
            for _ in 0..3 {
                let code = db.new_code(&provider, 500.0, expire);
                db.seed_codes.push(code);
            }
        } else {
            for code in seed_codes {
                anyhow::ensure!(
                    is_valid_code(code),
                    "seed code {code:?} is not {CODE_LEN} characters of {CODE_ALPHABET}"
                );
                anyhow::ensure!(
                    !db.codes.iter().any(|c| &c.code == code),
                    "seed code {code} given twice"
                );
                db.codes.push(Code {
                    code: code.clone(),
                    owner: provider.clone(),
                    total_mb: 500.0,
                    remaining_mb: 500.0,
                    redeemed_by: None,
                    expire_at_ms: expire,
                });
                db.seed_codes.push(code.clone());
            }
        }
        Ok(db)
    }

    fn add_user(&mut self, name: &str, email: &str, password: &str, role: &str) -> String {
        let id = hex_id(24);
        self.users.push(User {
            id: id.clone(),
            // Stored and compared as given: the real schema does not lowercase emails.
            email: email.to_owned(),
            password: password.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            points: 0,
            bytes_shared: json!(0),
            bytes_consumed: 0,
            lost: Lost::default(),
        });
        id
    }

    fn new_code(&mut self, owner: &str, total_mb: f64, expire_at_ms: Option<i64>) -> String {
        let code = loop {
            let candidate: String = (0..CODE_LEN)
                .map(|_| {
                    let i = fastrand::usize(..CODE_ALPHABET.len());
                    char::from(CODE_ALPHABET.as_bytes()[i])
                })
                .collect();
            if !self.codes.iter().any(|c| c.code == candidate) {
                break candidate;
            }
        };
        self.codes.push(Code {
            code: code.clone(),
            owner: owner.to_owned(),
            total_mb,
            remaining_mb: total_mb,
            redeemed_by: None,
            expire_at_ms,
        });
        code
    }

    /// Deletes codes whose expiry is more than `ttl` ago, like the real TTL index (which skips
    /// documents without `expireAt`: those stay for good).
    fn purge(&mut self, now: i64, ttl: Duration) {
        let ttl = ttl_ms(ttl);
        self.codes.retain(|c| {
            c.expire_at_ms
                .is_none_or(|at| now <= at.saturating_add(ttl))
        });
    }

    fn live_code(&mut self, code: &str, now: i64, ttl: Duration) -> Result<&mut Code, Lookup> {
        self.purge(now, ttl);
        let c = self
            .codes
            .iter_mut()
            .find(|c| c.code == code)
            .ok_or(Lookup::Missing)?;
        if is_expired(c.expire_at_ms, now) {
            return Err(Lookup::Expired);
        }
        Ok(c)
    }

    fn user_by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    fn state_of(&self, c: &Code, now: i64) -> CodeState {
        CodeState {
            code: c.code.clone(),
            owner_id: c.owner.clone(),
            owner_email: self
                .user_by_id(&c.owner)
                .map(|u| u.email.clone())
                .unwrap_or_default(),
            total_mb: c.total_mb,
            remaining_mb: c.remaining_mb,
            redeemed_by: c.redeemed_by.clone(),
            expire_at: c.expire_at_ms.map(ms_to_datetime),
            expired: is_expired(c.expire_at_ms, now),
        }
    }

    pub(crate) fn code_state(&mut self, code: &str, now: i64, ttl: Duration) -> Option<CodeState> {
        self.purge(now, ttl);
        let c = self.codes.iter().find(|c| c.code == code)?;
        Some(self.state_of(c, now))
    }

    pub(crate) fn code_states(&mut self, now: i64, ttl: Duration) -> Vec<CodeState> {
        self.purge(now, ttl);
        self.codes
            .iter()
            .rev()
            .map(|c| self.state_of(c, now))
            .collect()
    }

    fn user_state_of(u: &User) -> UserState {
        UserState {
            id: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role.clone(),
            points: u.points,
            bytes_shared: u.bytes_shared.clone(),
            bytes_consumed: u.bytes_consumed,
            lost_points: u.lost.points,
            lost_bytes_shared: u.lost.bytes_shared,
            lost_bytes_consumed: u.lost.bytes_consumed,
        }
    }

    /// By email, compared exactly.
    pub(crate) fn user_state(&self, email: &str) -> Option<UserState> {
        self.users
            .iter()
            .find(|u| u.email == email)
            .map(Self::user_state_of)
    }

    /// Deletes a user (by email, exactly) as an admin deleting the account in the database
    /// would: its codes and logs stay, its tokens now answer 401 `Invalid user`.
    pub(crate) fn delete_user(&mut self, email: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|u| u.email != email);
        self.users.len() != before
    }

    /// Registers a user as `POST /api/auth/register` would; `None` if the email is taken.
    pub(crate) fn register(
        &mut self,
        name: &str,
        email: &str,
        password: &str,
        role: &str,
    ) -> Option<UserState> {
        if self.users.iter().any(|u| u.email == email) {
            return None;
        }
        self.add_user(name, email, password, role);
        self.user_state(email)
    }

    pub(crate) fn user_states(&self) -> Vec<UserState> {
        self.users.iter().map(Self::user_state_of).collect()
    }

    /// First save of report-usage: the code's `remainingMB`, computed from `read_remaining`,
    /// what was read before the race window (so concurrent reports lose updates).
    fn save_remaining(&mut self, code: &str, bytes: f64, read_remaining: f64) -> f64 {
        let remaining = (read_remaining - bytes / MB).max(0.0);
        // A code deleted during the window: the real `save()` of a deleted document is a no-op.
        if let Some(c) = self.codes.iter_mut().find(|c| c.code == code) {
            c.remaining_mb = remaining;
        }
        remaining
    }

    /// Second save of report-usage, first half: reads the owner's user record and the
    /// consumer's, as the real service loads them before adding.
    fn read_credit(&self, owner: &str, consumer_id: Option<&str>) -> CreditRead {
        let (points, bytes_shared) = self
            .user_by_id(owner)
            .map_or((0, json!(0)), |u| (u.points, u.bytes_shared.clone()));
        CreditRead {
            owner: owner.to_owned(),
            points,
            bytes_shared,
            consumed: consumer_id
                .and_then(|id| self.user_by_id(id))
                .map(|u| u.bytes_consumed),
        }
    }

    /// Second save of report-usage, second half: a usage log entry naming the owner (for
    /// every report), `floor(bytes / 2^20)` points to the code's owner and, with at least
    /// one, `bytes` to its `bytesShared`; `bytes` to the consumer's `bytesConsumed`. The
    /// totals are written from `read`, so what other reports credited since is overwritten,
    /// and counted as lost.
    fn save_credit(&mut self, report: &Report<'_>, read: CreditRead, now: i64) {
        let Report {
            code,
            bytes,
            bytes_sent,
            consumer_id,
        } = *report;
        self.logs.push(UsageLog {
            id: hex_id(24),
            code: code.to_owned(),
            provider: read.owner.clone(),
            bytes,
            consumer_id: consumer_id.map(str::to_owned),
            created_ms: now,
        });
        let points = (bytes / MB).floor();
        if points >= 1.0 {
            if let Some(u) = self.users.iter_mut().find(|u| u.id == read.owner) {
                // Saturating float-to-int conversion; points are far below u64::MAX.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let points = points as u64;
                u.lost.points += u.points.saturating_sub(read.points);
                if let (Some(now), Some(then)) =
                    (u.bytes_shared.as_u64(), read.bytes_shared.as_u64())
                {
                    u.lost.bytes_shared += now.saturating_sub(then);
                }
                u.points = read.points + points;
                u.bytes_shared = js_add(&read.bytes_shared, bytes_sent);
            }
        }
        let consumer = consumer_id.and_then(|id| self.users.iter_mut().find(|u| u.id == id));
        if let (Some(u), Some(then)) = (consumer, read.consumed) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bytes = bytes as u64;
            u.lost.bytes_consumed += u.bytes_consumed.saturating_sub(then);
            u.bytes_consumed = then.saturating_add(bytes);
        }
    }
}

/// Past its `expireAt`; a code without one never is.
fn is_expired(expire_at_ms: Option<i64>, now: i64) -> bool {
    expire_at_ms.is_some_and(|at| at < now)
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/auth/register", post(register))
        .route("/api/auth/me", get(me))
        .route("/api/provider/codes", post(create_codes).get(list_codes))
        .route("/api/provider/usage", get(usage))
        .route("/api/gateway/authorize-code", post(authorize_code))
        .route("/api/gateway/report-usage", post(report_usage))
}

/// The caller's user id and role: the bearer token's `sub`, looked up in the users.
struct Caller {
    id: String,
    role: String,
}

/// As the real auth middleware: 401 `Missing token` without a bearer token, 401 `Invalid
/// token` / `Token expired` for a bad one, 401 `Invalid user` when its `sub` is no (longer a)
/// user. The role is the user's own.
fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("Missing token"))?;
    let claims = shared
        .jwt
        .verify(token, AUD)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::unauthorized("Invalid token"))?;
    let db = lock(&shared.crowd);
    let user = db
        .user_by_id(sub)
        .ok_or_else(|| ApiError::unauthorized("Invalid user"))?;
    Ok(Caller {
        id: user.id.clone(),
        role: user.role.clone(),
    })
}

/// Provider or admin (admins can do everything providers can).
fn provider(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let c = caller(shared, headers)?;
    if c.role == "provider" || c.role == "admin" {
        Ok(c)
    } else {
        Err(ApiError::forbidden())
    }
}

async fn login(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let (Some(email), Some(password)) = (str_field(&body, "email"), str_field(&body, "password"))
    else {
        return Err(ApiError::bad_request("Email and password required"));
    };
    // Compared exactly: `Provider@example.com` is not `provider@example.com`.
    let db = lock(&shared.crowd);
    let user = db
        .users
        .iter()
        .find(|u| u.email == email && u.password == password)
        .ok_or_else(|| ApiError::unauthorized("Invalid credentials"))?;
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(user.id));
    claims.insert("role".into(), json!(user.role));
    let token = shared.jwt.sign(AUD, claims, shared.config.login_token_ttl);
    Ok(axum::Json(json!({
        "token": token,
        "user": { "id": user.id, "email": user.email, "role": user.role, "name": user.name },
    }))
    .into_response())
}

async fn register(State(shared): State<Arc<Shared>>, JsonBody(body): JsonBody) -> ApiResult {
    let (Some(name), Some(email), Some(password)) = (
        str_field(&body, "name"),
        str_field(&body, "email"),
        str_field(&body, "password"),
    ) else {
        return Err(ApiError::bad_request("Missing fields"));
    };
    let role = str_field(&body, "role").unwrap_or("consumer");
    if !["provider", "consumer", "admin"].contains(&role) {
        return Err(ApiError::bad_request("Invalid role"));
    }
    let mut db = lock(&shared.crowd);
    if db.users.iter().any(|u| u.email == email) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "Email already registered",
        ));
    }
    let id = db.add_user(name, email, password, role);
    Ok(axum::Json(json!({ "id": id, "email": email, "role": role })).into_response())
}

async fn me(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let c = caller(&shared, &headers)?;
    let db = lock(&shared.crowd);
    let u = db
        .user_by_id(&c.id)
        .ok_or_else(|| ApiError::unauthorized("Invalid user"))?;
    Ok(axum::Json(json!({
        "id": u.id, "email": u.email, "role": u.role, "name": u.name,
        "points": u.points, "bytesShared": u.bytes_shared, "bytesConsumed": u.bytes_consumed,
    }))
    .into_response())
}

async fn create_codes(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let c = provider(&shared, &headers)?;
    let total_mb = body
        .get("totalMB")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t > 0.0)
        .ok_or_else(|| ApiError::bad_request("totalMB must be > 0"))?;
    // `count` defaults to 1 when absent (or null); more than 50 is refused; 0 (or less) makes
    // no codes and answers `{"codes": []}`, as the real `for (i < count)` loop does; a fraction
    // makes as many codes as that loop runs (rounded up).
    let count = match body.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => {
            let n = v
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| ApiError::bad_request("count must be a number"))?;
            if n > 50.0 {
                return Err(ApiError::bad_request("count must be <= 50"));
            }
            // At most 50 here, and at least 0.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = n.max(0.0).ceil() as usize;
            n
        }
    };
    // JavaScript's `expireHours ? now + expireHours h : null`: absent, null or 0 make a code
    // with `"expireAt": null` that never expires (the contract only says "optional"; 0 is
    // falsy, so it is read as "no expiry" too). Fractions and negative values are taken as
    // they are (a negative value makes an already expired code, handy in tests). A value that
    // is not a number is treated as absent.
    let hours = body
        .get("expireHours")
        .and_then(Value::as_f64)
        .filter(|h| h.is_finite() && *h != 0.0);
    let now = now_ms();
    // Rounded to whole milliseconds, like a JavaScript Date.
    #[allow(clippy::cast_possible_truncation)]
    let expire_at = hours.map(|h| now + (h * HOUR_MS).round() as i64);
    let mut db = lock(&shared.crowd);
    let codes: Vec<Value> = (0..count)
        .map(|_| {
            let code = db.new_code(&c.id, total_mb, expire_at);
            json!({
                "code": code,
                "totalMB": js_num(total_mb),
                "expireAt": expire_at.map(iso_ms),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "codes": codes })).into_response())
}

async fn list_codes(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let c = provider(&shared, &headers)?;
    let mut db = lock(&shared.crowd);
    db.purge(now_ms(), shared.config.expired_code_ttl);
    let codes: Vec<Value> = db
        .codes
        .iter()
        .rev()
        .filter(|code| code.owner == c.id)
        .map(|code| {
            json!({
                "code": code.code,
                "totalMB": js_num(code.total_mb),
                "remainingMB": js_num(code.remaining_mb),
                "redeemedBy": code.redeemed_by,
                "expireAt": code.expire_at_ms.map(iso_ms),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "codes": codes })).into_response())
}

async fn usage(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    let c = provider(&shared, &headers)?;
    let db = lock(&shared.crowd);
    let mine: Vec<&UsageLog> = db
        .logs
        .iter()
        .rev()
        .filter(|l| l.provider == c.id)
        .collect();
    let total: f64 = mine.iter().map(|l| l.bytes).sum();
    let logs: Vec<Value> = mine
        .iter()
        .take(USAGE_LOG_LIMIT)
        .map(|l| {
            let mut entry = json!({
                "_id": l.id, "code": l.code, "provider": l.provider, "bytes": js_num(l.bytes),
                "createdAt": iso_ms(l.created_ms),
            });
            if let (Some(id), Some(obj)) = (&l.consumer_id, entry.as_object_mut()) {
                obj.insert("consumerId".into(), json!(id));
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({ "totalBytes": js_num(total), "logs": logs })).into_response())
}

async fn authorize_code(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    provider(&shared, &headers)?;
    let code = str_field(&body, "code").ok_or_else(|| ApiError::bad_request("code required"))?;
    let mut db = lock(&shared.crowd);
    // No `remainingMB > 0` check: a used-up code is still `ok: true` (the real service's gap).
    let c = db.live_code(code, now_ms(), shared.config.expired_code_ttl)?;
    Ok(axum::Json(json!({
        "ok": true,
        "remainingMB": js_num(c.remaining_mb),
        "totalMB": js_num(c.total_mb),
        "redeemedBy": c.redeemed_by,
    }))
    .into_response())
}

async fn report_usage(
    State(shared): State<Arc<Shared>>,
    crash: Option<Extension<CrashBetweenSaves>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult {
    // Any provider or admin, whoever owns the code (the real service does not check); the
    // code's owner is credited.
    provider(&shared, &headers)?;
    let (Some(code), Some((bytes, bytes_sent))) =
        (str_field(&body, "code"), parse_bytes(body.get("bytes")))
    else {
        return Err(ApiError::bad_request("code and bytes required"));
    };
    let report = Report {
        code,
        bytes,
        bytes_sent: &bytes_sent,
        consumer_id: str_field(&body, "consumerId"),
    };
    let used_mb = bytes / MB;
    // Read ...
    let (read_remaining, owner) = {
        let mut db = lock(&shared.crowd);
        let c = db.live_code(code, now_ms(), shared.config.expired_code_ttl)?;
        if c.remaining_mb - used_mb < -OVERSHOOT_MB {
            return Err(ApiError::bad_request("Not enough remaining MB"));
        }
        (c.remaining_mb, c.owner.clone())
    };
    // ... wait, as the real service awaits its database in between ...
    let window = shared.config.report_race_window;
    if !window.is_zero() {
        tokio::time::sleep(window).await;
    }
    // ... and write back what was computed from the stale read: concurrent reports lose updates.
    let remaining = lock(&shared.crowd).save_remaining(code, bytes, read_remaining);
    // A crash between the two saves: the code is debited, the owner never credited.
    if let Some(Extension(CrashBetweenSaves(kill))) = crash {
        return Ok(crash_now(kill).await);
    }
    // The second save reads the accounts, awaits, and writes back what it computed: reports
    // crediting one account at once lose updates. Without a window, read and write at once.
    let window = shared.config.credit_race_window;
    if window.is_zero() {
        let mut db = lock(&shared.crowd);
        let read = db.read_credit(&owner, report.consumer_id);
        db.save_credit(&report, read, now_ms());
    } else {
        // Once started, the real service finishes a request whose client went away: a
        // task of its own, which a dropped connection does not cancel between the saves.
        let read = lock(&shared.crowd).read_credit(&owner, report.consumer_id);
        let (task_shared, code, bytes_sent) = (shared.clone(), code.to_owned(), bytes_sent.clone());
        let consumer = report.consumer_id.map(str::to_owned);
        let credit = tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let report = Report {
                code: &code,
                bytes,
                bytes_sent: &bytes_sent,
                consumer_id: consumer.as_deref(),
            };
            lock(&task_shared.crowd).save_credit(&report, read, now_ms());
        });
        // The task only sleeps and writes under the lock: it cannot fail.
        let _ = credit.await;
    }
    Ok(axum::Json(json!({ "ok": true, "remainingMB": js_num(remaining) })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_add_concatenates_strings() {
        assert_eq!(js_add(&json!(0), &json!("2097152")), json!("02097152"));
        assert_eq!(js_add(&json!("02097152"), &json!(5)), json!("020971525"));
        assert_eq!(js_add(&json!(1), &json!(2)), json!(3));
    }

    #[test]
    fn bytes_parsing() {
        assert_eq!(parse_bytes(Some(&json!(5))).map(|b| b.0), Some(5.0));
        assert_eq!(parse_bytes(Some(&json!("7"))).map(|b| b.0), Some(7.0));
        assert!(parse_bytes(Some(&json!(0))).is_none());
        assert!(parse_bytes(Some(&json!(-3))).is_none());
        assert!(parse_bytes(Some(&json!("abc"))).is_none());
        assert!(parse_bytes(Some(&json!(true))).is_none());
        assert!(parse_bytes(None).is_none());
    }

    #[test]
    fn seed_codes_are_checked() {
        assert!(Db::seeded(&["ABCDEFGH".into()], 0).is_ok());
        assert!(Db::seeded(&["ABCDEFGO".into()], 0).is_err());
        assert!(Db::seeded(&["ABC".into()], 0).is_err());
        assert!(Db::seeded(&["ABCDEFGH".into(), "ABCDEFGH".into()], 0).is_err());
        let db = Db::seeded(&[], 0).expect("seeded");
        assert_eq!(db.seed_codes.len(), 3);
        assert!(db.seed_codes.iter().all(|c| is_valid_code(c)));
    }
}
