//! Injected faults, and the recording of every request, in one middleware around the three
//! backends (never around the `/__standin/` controls).
//!
//! The faults are the failures a client of a real backend meets: a 500, a slow answer, the
//! two ambiguous ones, where the backend changed its state but the client cannot know it (the
//! reply comes after the client's timeout, or never), and a backend crash in the middle of a
//! contract 1 report (half applied, no reply).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{ApiError, ConnKill, ReceivedRequest, Shared, lock};

/// Largest body recorded; larger requests are answered 413 without reaching a handler. The
/// handlers' own limit (2 MB) is lower, so that the telemetry 413 comes from the handler.
const RECORD_LIMIT: usize = 16 * 1024 * 1024;

/// A fault to inject into requests whose path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `""` matches every path.
    pub path_prefix: String,
    pub kind: FaultKind,
    /// How many requests it applies to; `None` = until cleared.
    pub times: Option<u32>,
}

impl Fault {
    /// A fault that applies until cleared.
    pub fn new(path_prefix: impl Into<String>, kind: FaultKind) -> Self {
        Self {
            path_prefix: path_prefix.into(),
            kind,
            times: None,
        }
    }

    /// The same fault, for the next `n` matching requests only.
    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer 500 `{"error": "Injected fault"}` without running the handler.
    Status500,
    /// Wait, then run the handler and answer.
    DelayBefore(Duration),
    /// Run the handler (its state change happens), then wait before answering: with a client
    /// timeout shorter than this, the client cannot tell whether the request was applied.
    DelayAfter(Duration),
    /// Run the handler (its state change happens), then close the connection with no reply.
    ApplyThenDrop,
    /// Contract 1 report-usage only (`POST /api/gateway/report-usage`; other paths are not
    /// matched by it): make the first save (the code's `remainingMB`), then close the
    /// connection with no reply, as a backend process crashing before its second save (usage
    /// log, the provider's `points` and `bytesShared`, the consumer's `bytesConsumed`). A
    /// report refused before the first save (400, 404) is answered as usual; the fault is used
    /// up all the same. Over HTTP: `"kind": "crash_between_saves"`.
    CrashBetweenSaves,
}

/// The path [`FaultKind::CrashBetweenSaves`] applies to.
pub(crate) const REPORT_USAGE_PATH: &str = "/api/gateway/report-usage";

/// Request extension set by [`FaultKind::CrashBetweenSaves`]: the report-usage handler stops
/// after its first save and calls [`crash_now`] with it.
#[derive(Clone)]
pub(crate) struct CrashBetweenSaves(pub(crate) Option<ConnKill>);

/// Closes the request's connection without a reply, as a crashed process; never returns when
/// the connection is the stand-in's own. Without one (a router served by someone else), a 500
/// stands for the crash.
pub(crate) async fn crash_now(kill: Option<ConnKill>) -> Response {
    match kill {
        Some(ConnKill(kill)) => {
            tracing::info!("crashing between the two saves of a report");
            // The connection task drops the connection, and this future with it.
            kill.notify_one();
            std::future::pending().await
        }
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Injected crash").into_response(),
    }
}

/// Whether a fault applies to a request for `path`.
fn matches(fault: &Fault, path: &str) -> bool {
    path.starts_with(&fault.path_prefix)
        && fault.times != Some(0)
        && (fault.kind != FaultKind::CrashBetweenSaves || path == REPORT_USAGE_PATH)
}

/// The kind of the first fault matching `path`, counting one use of it.
fn take_fault(shared: &Shared, path: &str) -> Option<FaultKind> {
    let mut faults = lock(&shared.faults);
    let i = faults.iter().position(|f| matches(f, path))?;
    let kind = faults[i].kind;
    if let Some(n) = faults[i].times.as_mut() {
        *n -= 1;
        if *n == 0 {
            faults.remove(i);
        }
    }
    Some(kind)
}

fn set_status(shared: &Shared, index: usize, status: StatusCode) {
    if let Some(r) = lock(&shared.received).get_mut(index) {
        r.status = Some(status.as_u16());
    }
}

fn body_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

pub(crate) async fn record_and_inject(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/__standin") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, RECORD_LIMIT).await;
    let mut record = ReceivedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), v)
            })
            .collect(),
        body: read.as_deref().map_or(Value::Null, body_value),
        status: None,
        at: OffsetDateTime::now_utc(),
    };
    let Ok(bytes) = read else {
        record.status = Some(StatusCode::PAYLOAD_TOO_LARGE.as_u16());
        lock(&shared.received).push(record);
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request entity too large")
            .into_response();
    };
    let index = {
        let mut received = lock(&shared.received);
        received.push(record);
        received.len() - 1
    };
    let kill = parts.extensions.get::<ConnKill>().cloned();
    let mut req = Request::from_parts(parts, Body::from(bytes));
    let fault = take_fault(&shared, &path);
    if let Some(kind) = fault {
        tracing::info!(%path, ?kind, "injecting fault");
    }
    let response = match fault {
        None => next.run(req).await,
        Some(FaultKind::Status500) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Injected fault").into_response()
        }
        Some(FaultKind::DelayBefore(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(req).await
        }
        Some(FaultKind::DelayAfter(delay)) => {
            let response = next.run(req).await;
            set_status(&shared, index, response.status());
            tokio::time::sleep(delay).await;
            return response;
        }
        Some(FaultKind::CrashBetweenSaves) => {
            // The handler stops between its saves (see `crowd::report_usage`).
            req.extensions_mut().insert(CrashBetweenSaves(kill));
            next.run(req).await
        }
        Some(FaultKind::ApplyThenDrop) => {
            let response = next.run(req).await;
            match kill {
                Some(ConnKill(kill)) => {
                    // The connection task drops the connection, and this future with it.
                    kill.notify_one();
                    return std::future::pending().await;
                }
                // Not served by the stand-in's own accept loop: nothing to drop.
                None => response,
            }
        }
    };
    set_status(&shared, index, response.status());
    response
}
