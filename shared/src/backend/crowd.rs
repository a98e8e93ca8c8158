//! Contract 1: the crowdsourced-internet backend (seed 000): provider login, access codes,
//! authorize-code and report-usage.
//!
//! This client sends exactly what it is asked to. The contract's weak spots (no idempotency,
//! lost updates under concurrency, 1 MiB point granularity) are covered by the caller's
//! reporting policy, which uses [`BackendError::is_ambiguous`] and [`CrowdClient::list_codes`]
//! to learn whether a report was applied.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use super::{Api, BackendError, Call, HttpClient, Rejection, Token, TokenSlot};
use crate::code::AccessCode;
use crate::secret::Secret;

/// One megabyte as the backend counts it: `remainingMB` and `totalMB` are in units of 2^20
/// bytes.
pub const MB: f64 = 1_048_576.0;

/// The `[backend]` section of a daemon's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdConfig {
    /// Base URL, e.g. `https://api.example.org` (paths like `/api/auth/login` are appended).
    pub url: Url,
    /// The provider (or admin) account the device acts for.
    pub email: String,
    pub password: Secret,
}

impl CrowdConfig {
    /// Checks what serde cannot, reporting against `section` (e.g. `backend`).
    pub fn validate(&self, section: &str, problems: &mut crate::config::Problems) {
        if !matches!(self.url.scheme(), "http" | "https") {
            problems.push(
                format!("{section}.url"),
                "must be an http:// or https:// URL",
            );
        }
        if self.email.trim().is_empty() {
            problems.push(format!("{section}.email"), "must not be empty");
        }
        if self.password.is_empty() {
            problems.push(format!("{section}.password"), "must not be empty");
        }
    }
}

/// A user as login returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "super::id_as_string")]
    pub id: String,
    pub email: String,
    pub role: Role,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Provider,
    Consumer,
    Admin,
    /// A role this client does not know; such an account cannot act as a gateway.
    #[serde(other)]
    Unknown,
}

/// `POST /api/auth/login` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Login {
    pub token: Secret,
    pub user: User,
}

/// `GET /api/auth/me` reply: the user and what the account has earned and used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    #[serde(flatten)]
    pub user: User,
    #[serde(default)]
    pub points: f64,
    /// Kept as JSON: the backend turns it into a string if a report ever sent `bytes` as
    /// text (a known corruption), and this must still parse.
    #[serde(default)]
    pub bytes_shared: serde_json::Value,
    #[serde(default)]
    pub bytes_consumed: serde_json::Value,
}

/// `POST /api/provider/codes` request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateCodes {
    #[serde(rename = "totalMB")]
    pub total_mb: f64,
    pub count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_hours: Option<f64>,
}

/// A code as `POST /api/provider/codes` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedCode {
    pub code: AccessCode,
    #[serde(rename = "totalMB")]
    pub total_mb: f64,
    /// `None`: the code never expires (made without `expireHours`; the backend says `null`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expire_at: Option<OffsetDateTime>,
}

/// A code as `GET /api/provider/codes` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCode {
    pub code: AccessCode,
    #[serde(rename = "totalMB")]
    pub total_mb: f64,
    #[serde(rename = "remainingMB")]
    pub remaining_mb: f64,
    #[serde(default)]
    pub redeemed_by: Option<serde_json::Value>,
    /// `None`: the code never expires (the backend lists such a code with `null`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expire_at: Option<OffsetDateTime>,
}

impl ProviderCode {
    /// Unix milliseconds of the expiry; `None` for a code that never expires.
    pub fn expire_at_ms(&self) -> Option<u64> {
        self.expire_at
            .map(|at| u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    }
}

/// The items are read one by one, so that one the client cannot read (a field of a shape it
/// does not know) costs that code only, never the whole list.
#[derive(Deserialize)]
struct CodeList {
    codes: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct CreatedList {
    codes: Vec<CreatedCode>,
}

/// `GET /api/provider/usage` reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderUsage {
    pub total_bytes: f64,
    #[serde(default)]
    pub logs: Vec<serde_json::Value>,
}

/// `POST /api/gateway/authorize-code` reply for a code the backend accepts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuthorizedCode {
    #[serde(rename = "remainingMB")]
    pub remaining_mb: f64,
    #[serde(rename = "totalMB")]
    pub total_mb: f64,
    #[serde(rename = "redeemedBy", default)]
    pub redeemed_by: Option<serde_json::Value>,
}

impl AuthorizedCode {
    /// Whole bytes left on the code. The backend does not refuse a code with nothing left
    /// (and clamps an overdrawn one to 0), so a gateway must check this is above zero.
    pub fn remaining_bytes(&self) -> u64 {
        // f64 → u64 saturates and maps NaN to 0, which is the safe answer here.
        (self.remaining_mb.max(0.0) * MB).floor() as u64
    }
}

/// `POST /api/gateway/report-usage` request: `bytes` is a delta since the last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub code: AccessCode,
    /// Sent as a JSON number: sent as a string, the backend corrupts the provider's total.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_id: Option<String>,
}

/// `POST /api/gateway/report-usage` reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReportReceipt {
    #[serde(rename = "remainingMB")]
    pub remaining_mb: f64,
}

#[derive(Serialize)]
struct CodeBody<'a> {
    code: &'a AccessCode,
}

#[derive(Serialize)]
struct LoginBody<'a> {
    email: &'a str,
    password: &'a str,
}

/// A client for contract 1, logged in as one provider. Logs in on first use, again on a
/// 401, and before the 7-day token runs out.
#[derive(Debug)]
pub struct CrowdClient {
    api: Api,
    email: String,
    password: Secret,
    token: TokenSlot,
}

impl CrowdClient {
    pub fn new(http: &HttpClient, config: &CrowdConfig) -> Self {
        CrowdClient {
            api: Api::new(http, &config.url),
            email: config.email.clone(),
            password: config.password.clone(),
            token: TokenSlot::default(),
        }
    }

    /// Logs in and returns the account. A refused login is [`Rejection::BadCredentials`].
    pub async fn login(&self) -> Result<Login, BackendError> {
        let body = LoginBody {
            email: &self.email,
            password: self.password.expose(),
        };
        let login: Login = self
            .api
            .send(Call::post("/api/auth/login", &body))
            .await
            .map_err(bad_credentials)?;
        Ok(login)
    }

    /// `POST /api/auth/login` with another person's credentials: a consumer signing in on the
    /// portal. Returns the account, or [`Rejection::BadCredentials`] for a wrong email or
    /// password. The account's token is dropped here, unread: reports name a consumer by id
    /// (`consumerId`) and are sent with this client's own token, which this call leaves as
    /// it is. Nothing of the credentials reaches an error or a log.
    pub async fn sign_in(&self, email: &str, password: &Secret) -> Result<User, BackendError> {
        let body = LoginBody {
            email,
            password: password.expose(),
        };
        let login: Login = self
            .api
            .send(Call::post("/api/auth/login", &body))
            .await
            .map_err(bad_credentials)?;
        Ok(login.user)
    }

    async fn fresh_token(&self) -> Result<Token, BackendError> {
        let login = self.login().await?;
        tracing::debug!(user = %login.user.email, role = ?login.user.role, "logged in to the codes backend");
        Ok(Token::from_jwt(login.token))
    }

    async fn authed<T: serde::de::DeserializeOwned>(
        &self,
        call: impl Fn() -> Call<'static>,
    ) -> Result<T, BackendError> {
        self.token
            .send(&self.api, || self.fresh_token(), call)
            .await
    }

    /// `GET /api/auth/me`.
    pub async fn me(&self) -> Result<Me, BackendError> {
        self.authed(|| Call::get("/api/auth/me")).await
    }

    /// `POST /api/provider/codes`: creates up to 50 codes.
    pub async fn create_codes(
        &self,
        request: &CreateCodes,
    ) -> Result<Vec<CreatedCode>, BackendError> {
        let list: CreatedList = self
            .authed(|| Call::post("/api/provider/codes", request))
            .await?;
        Ok(list.codes)
    }

    /// `GET /api/provider/codes`: the provider's own codes with what remains on each. An
    /// item that cannot be read is left out with a warning; the rest are returned.
    pub async fn list_codes(&self) -> Result<Vec<ProviderCode>, BackendError> {
        let list: CodeList = self.authed(|| Call::get("/api/provider/codes")).await?;
        Ok(readable_codes(list.codes))
    }

    /// `GET /api/provider/usage`.
    pub async fn usage(&self) -> Result<ProviderUsage, BackendError> {
        self.authed(|| Call::get("/api/provider/usage")).await
    }

    /// `POST /api/gateway/authorize-code`. An unknown code is [`Rejection::NotFound`], an
    /// expired one [`Rejection::CodeExpired`] (or `NotFound` once the backend has deleted
    /// it: treat both as a refusal).
    pub async fn authorize_code(&self, code: &AccessCode) -> Result<AuthorizedCode, BackendError> {
        let body = CodeBody { code };
        self.authed(|| Call::post("/api/gateway/authorize-code", &body))
            .await
    }

    /// `POST /api/gateway/report-usage`. Not idempotent: after an error for which
    /// [`BackendError::is_ambiguous`] is true, the report may have been applied.
    pub async fn report_usage(&self, report: &UsageReport) -> Result<ReportReceipt, BackendError> {
        self.authed(|| Call::post("/api/gateway/report-usage", report))
            .await
    }
}

fn readable_codes(items: Vec<serde_json::Value>) -> Vec<ProviderCode> {
    items
        .into_iter()
        .enumerate()
        .filter_map(|(index, item)| match serde_json::from_value(item) {
            Ok(code) => Some(code),
            Err(err) => {
                // The item holds an access code (a secret): only its place and the error.
                tracing::warn!(
                    index,
                    error = %err,
                    "GET /api/provider/codes: an item could not be read and is left out; the other codes are used"
                );
                None
            }
        })
        .collect()
}

/// A 401 from a login endpoint means the credentials, not a token.
pub(super) fn bad_credentials(err: BackendError) -> BackendError {
    match err {
        BackendError::Rejected {
            endpoint,
            status,
            message,
            kind: Rejection::Unauthorized,
        } => BackendError::Rejected {
            endpoint,
            status,
            message,
            kind: Rejection::BadCredentials,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_bytes_floors_and_never_goes_negative() {
        let code = |mb| AuthorizedCode {
            remaining_mb: mb,
            total_mb: 500.0,
            redeemed_by: None,
        };
        assert_eq!(code(1.5).remaining_bytes(), 1_572_864);
        assert_eq!(code(0.0).remaining_bytes(), 0);
        assert_eq!(code(-0.004).remaining_bytes(), 0);
        assert_eq!(code(f64::NAN).remaining_bytes(), 0);
        assert_eq!(code(1e-7).remaining_bytes(), 0);
    }

    #[test]
    fn a_null_expiry_is_a_code_that_never_expires_and_an_odd_item_costs_only_itself() {
        let items: CodeList = serde_json::from_str(
            r#"{"codes": [
                {"code": "ABCD2345", "totalMB": 20, "remainingMB": 19.5, "redeemedBy": null, "expireAt": null},
                {"code": "EFGH2345", "totalMB": 20, "remainingMB": 20, "expireAt": "2026-12-04T10:00:00.000Z"},
                {"code": "JKLM2345", "totalMB": "twenty", "remainingMB": 20, "expireAt": null},
                {"code": "NPQR2345", "totalMB": 5, "remainingMB": 5}
            ]}"#,
        )
        .unwrap();
        let codes = readable_codes(items.codes);
        let names: Vec<&str> = codes.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(names, ["ABCD2345", "EFGH2345", "NPQR2345"]);
        assert_eq!(codes[0].expire_at, None);
        assert_eq!(codes[0].expire_at_ms(), None);
        assert_eq!(codes[1].expire_at_ms(), Some(1_796_378_400_000));
        assert_eq!(
            codes[2].expire_at, None,
            "no expireAt at all: never expires"
        );
        let created: CreatedCode =
            serde_json::from_str(r#"{"code": "ABCD2345", "totalMB": 20, "expireAt": null}"#)
                .unwrap();
        assert_eq!(created.expire_at, None);
    }

    #[test]
    fn reports_send_bytes_as_a_number() {
        let report = UsageReport {
            code: AccessCode::parse("ABCD2345").unwrap(),
            bytes: 3_000_000,
            consumer_id: None,
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"code":"ABCD2345","bytes":3000000}"#
        );
    }
}
