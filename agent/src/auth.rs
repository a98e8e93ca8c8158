//! The stream's credentials (contract 2): one login, its access token refreshed before it
//! expires, a new login when the refresh is refused. The link asks for a token on every
//! connect; [`StreamAuth::keep_fresh`] refreshes in the background so that a reconnect after
//! an outage does not wait for the auth service too.

use std::sync::Arc;
use std::time::Duration;

use edgeshare_shared::backend::depin::{DepinAuth, DepinTokens};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::supervisor::stopped;
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::metrics::Metrics;

/// How long before the access token's expiry it is refreshed: a little past the shared
/// clients' renewal margin (5 min), so that [`DepinAuth::fresh`] sees it as stale.
const REFRESH_BEFORE: time::Duration = time::Duration::seconds(5 * 60 + 10);

/// When the expiry is unknown (a token that is not a JWT), how often to check anyway.
const CHECK_UNKNOWN: Duration = Duration::from_secs(10 * 60);

#[derive(Debug)]
pub struct StreamAuth {
    auth: DepinAuth,
    tokens: Mutex<Option<DepinTokens>>,
    metrics: Arc<Metrics>,
}

/// True for the failures that mean "these credentials or this token were refused".
pub fn is_auth_failure(err: &BackendError) -> bool {
    matches!(
        err.rejection(),
        Some(Rejection::BadCredentials | Rejection::Unauthorized | Rejection::Forbidden)
    )
}

impl StreamAuth {
    pub fn new(auth: DepinAuth, metrics: Arc<Metrics>) -> Self {
        StreamAuth {
            auth,
            tokens: Mutex::new(None),
            metrics,
        }
    }

    /// Tokens fit to connect with now: kept, refreshed, or from a new login.
    pub async fn fresh(&self) -> Result<DepinTokens, BackendError> {
        let mut tokens = self.tokens.lock().await;
        match self
            .auth
            .fresh(tokens.as_ref(), OffsetDateTime::now_utc())
            .await
        {
            Ok(fresh) => {
                *tokens = Some(fresh.clone());
                Ok(fresh)
            }
            Err(err) => {
                if is_auth_failure(&err) {
                    Metrics::add(&self.metrics.auth_failures, 1);
                    // A refused login leaves nothing worth refreshing.
                    *tokens = None;
                }
                Err(err)
            }
        }
    }

    /// The stream refused the access token (401 at the upgrade): the next [`fresh`] refreshes
    /// it, and logs in again if the refresh token is refused too.
    ///
    /// [`fresh`]: StreamAuth::fresh
    pub async fn access_refused(&self) {
        Metrics::add(&self.metrics.auth_failures, 1);
        if let Some(tokens) = self.tokens.lock().await.as_mut() {
            tokens.access_expires = Some(OffsetDateTime::UNIX_EPOCH);
        }
    }

    /// How long until the access token should be refreshed.
    async fn until_refresh(&self) -> Duration {
        let tokens = self.tokens.lock().await;
        match tokens.as_ref().and_then(|t| t.access_expires) {
            Some(expires) => {
                let left = expires - REFRESH_BEFORE - OffsetDateTime::now_utc();
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            }
            None => CHECK_UNKNOWN,
        }
    }

    /// Refreshes the access token before it expires, until `shutdown`. Only once the link
    /// has logged in (no tokens: nothing to refresh, the link logs in when it connects).
    pub async fn keep_fresh(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let wait = if failures > 0 {
                // A failed refresh is retried soon, but not in a tight loop.
                Duration::from_secs(30).min(Duration::from_secs(2u64.pow(failures.min(5))))
            } else {
                self.until_refresh().await.max(Duration::from_secs(1))
            };
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                () = tokio::time::sleep(wait) => {}
            }
            let has_tokens = self.tokens.lock().await.is_some();
            if !has_tokens {
                continue;
            }
            match self.fresh().await {
                Ok(_) => failures = 0,
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, "could not refresh the stream's access token; retrying");
                    self.metrics.set_last_error(&err.to_string());
                }
            }
        }
    }
}
