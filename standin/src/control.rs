//! The test controls over HTTP, under `/__standin/`, so that a shell script with curl can do what
//! a Rust test does with [`crate::Standin`]. These requests are never recorded nor faulted.
//!
//! The endpoints are listed in the crate documentation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ApiError, ApiResult, Command, Fault, FaultKind, Shared, lock, now_ms};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__standin/received", get(received))
        .route("/__standin/ws-messages", get(ws_messages))
        .route(
            "/__standin/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/__standin/expire-tokens", post(expire_tokens))
        .route("/__standin/drop-websockets", post(drop_websockets))
        .route("/__standin/refuse-connections", post(refuse_connections))
        .route("/__standin/codes", get(codes))
        .route("/__standin/codes/{code}", get(code))
        .route("/__standin/users/{email}", get(user).delete(delete_user))
        .route("/__standin/connections/{tenant}", get(connections))
        .route("/__standin/snapshots/{tenant}", get(snapshots))
        .route("/__standin/state", get(state))
        .route("/__standin/download/{bytes}", get(download))
}

/// Largest download served: 16 GiB, far above any test, bounded so a typo cannot stream
/// forever.
const MAX_DOWNLOAD: u64 = 16 << 30;

/// `GET /__standin/download/{bytes}`: exactly that many zero bytes, streamed in 64 KiB
/// chunks with a Content-Length. The demo and the accounting tests download from it as
/// "the internet" behind the gateway.
async fn download(Path(bytes): Path<u64>) -> Response {
    if bytes > MAX_DOWNLOAD {
        return ApiError::bad_request("at most 16 GiB per download").into_response();
    }
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from_static(&[0u8; CHUNK as usize]);
    let chunks = (0..bytes.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(bytes - i * CHUNK) as usize;
        Ok::<_, std::convert::Infallible>(chunk.slice(..len))
    });
    let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, bytes)
        .body(body)
        .unwrap_or_else(|_| ApiError::bad_request("cannot build the reply").into_response())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    Status500,
    DelayBefore,
    DelayAfter,
    ApplyThenDrop,
    CrashBetweenSaves,
}

/// A [`Fault`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultDto {
    #[serde(default)]
    path_prefix: String,
    kind: KindName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(default)]
    times: Option<u32>,
}

impl FaultDto {
    fn into_fault(self) -> Result<Fault, ApiError> {
        let delay = || {
            self.delay_ms
                .map(Duration::from_millis)
                .ok_or_else(|| ApiError::bad_request("delay_ms required for a delay"))
        };
        let kind = match self.kind {
            KindName::Status500 => FaultKind::Status500,
            KindName::DelayBefore => FaultKind::DelayBefore(delay()?),
            KindName::DelayAfter => FaultKind::DelayAfter(delay()?),
            KindName::ApplyThenDrop => FaultKind::ApplyThenDrop,
            KindName::CrashBetweenSaves => FaultKind::CrashBetweenSaves,
        };
        Ok(Fault {
            path_prefix: self.path_prefix,
            kind,
            times: self.times,
        })
    }

    fn from_fault(f: &Fault) -> Self {
        let ms = |d: Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (kind, delay_ms) = match f.kind {
            FaultKind::Status500 => (KindName::Status500, None),
            FaultKind::DelayBefore(d) => (KindName::DelayBefore, ms(d)),
            FaultKind::DelayAfter(d) => (KindName::DelayAfter, ms(d)),
            FaultKind::ApplyThenDrop => (KindName::ApplyThenDrop, None),
            FaultKind::CrashBetweenSaves => (KindName::CrashBetweenSaves, None),
        };
        Self {
            path_prefix: f.path_prefix.clone(),
            kind,
            delay_ms,
            times: f.times,
        }
    }
}

fn json_of<T: Serialize>(value: &T) -> Response {
    axum::Json(json!(value)).into_response()
}

fn ok() -> Response {
    axum::Json(json!({ "ok": true })).into_response()
}

async fn received(State(shared): State<Arc<Shared>>) -> Response {
    json_of(&*lock(&shared.received))
}

async fn ws_messages(State(shared): State<Arc<Shared>>) -> Response {
    json_of(&*lock(&shared.ws_messages))
}

fn fault_list(shared: &Shared) -> Vec<FaultDto> {
    lock(&shared.faults)
        .iter()
        .map(FaultDto::from_fault)
        .collect()
}

async fn list_faults(State(shared): State<Arc<Shared>>) -> Response {
    json_of(&fault_list(&shared))
}

/// Reads the body as JSON whatever its content type (curl's `-d` says form-urlencoded).
async fn add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let dto: FaultDto = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid fault: {e}")))?;
    let fault = dto.into_fault()?;
    lock(&shared.faults).push(fault);
    Ok(ok())
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    lock(&shared.faults).clear();
    ok()
}

async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwt.expire_all();
    ok()
}

async fn drop_websockets(State(shared): State<Arc<Shared>>) -> Response {
    shared.drop_websockets();
    ok()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseFor {
    for_ms: u64,
}

async fn refuse_connections(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let RefuseFor { for_ms } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Expected {{\"for_ms\": N}}: {e}")))?;
    let commands = shared.commands.clone();
    tokio::spawn(async move {
        // Refusing cuts every connection, this one too: let the answer go out first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if commands.send(Command::Refuse(tx)).await.is_err() || rx.await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(for_ms)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if commands.send(Command::Accept(tx)).await.is_ok()
            && let Ok(Err(e)) = rx.await
        {
            tracing::error!(error = %e, "could not listen again");
        }
    });
    Ok(ok())
}

async fn codes(State(shared): State<Arc<Shared>>) -> Response {
    let ttl = shared.config.expired_code_ttl;
    json_of(&lock(&shared.crowd).code_states(now_ms(), ttl))
}

async fn code(State(shared): State<Arc<Shared>>, Path(code): Path<String>) -> ApiResult {
    let ttl = shared.config.expired_code_ttl;
    let state = lock(&shared.crowd).code_state(&code, now_ms(), ttl);
    state
        .map(|s| json_of(&s))
        .ok_or_else(|| ApiError::not_found("No such code"))
}

async fn user(State(shared): State<Arc<Shared>>, Path(email): Path<String>) -> ApiResult {
    let state = lock(&shared.crowd).user_state(&email);
    state
        .map(|s| json_of(&s))
        .ok_or_else(|| ApiError::not_found("No such user"))
}

/// `DELETE /__standin/users/{email}` (exact email): the user is gone, its tokens answer 401
/// `Invalid user`.
async fn delete_user(State(shared): State<Arc<Shared>>, Path(email): Path<String>) -> ApiResult {
    if lock(&shared.crowd).delete_user(&email) {
        Ok(ok())
    } else {
        Err(ApiError::not_found("No such user"))
    }
}

async fn connections(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    json_of(&lock(&shared.telemetry).connections(&tenant))
}

async fn snapshots(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    json_of(&lock(&shared.telemetry).snapshots(&tenant))
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    let ttl = shared.config.expired_code_ttl;
    let (seed_codes, codes, users) = {
        let mut crowd = lock(&shared.crowd);
        (
            crowd.seed_codes.clone(),
            crowd.code_states(now_ms(), ttl),
            crowd.user_states(),
        )
    };
    let tenants = lock(&shared.telemetry).counts();
    let body: Value = json!({
        "seedCodes": seed_codes,
        "codes": codes,
        "users": users,
        "tenants": tenants,
        "faults": fault_list(&shared),
        "openWebsockets": shared.ws_open.load(Ordering::SeqCst),
        "receivedRequests": lock(&shared.received).len(),
        "wsMessages": lock(&shared.ws_messages).len(),
    });
    axum::Json(body).into_response()
}
