//! Where access codes are checked: the crowdsourced-internet backend, or a store of codes
//! made on this device (the standalone default). Both answer with a [`Verdict`]. With the
//! backend, a consumer may also sign in with their network account ([`BackendCodes::sign_in`]).
//!
//! The local store is one JSON file in the state directory, replaced atomically (temp file,
//! fsync, rename) and guarded by an advisory lock, so `edgeshare-gateway codes create` can
//! write it while the daemon runs. Codes are secrets: the file is mode 0600.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgeshare_shared::backend::crowd::{CrowdClient, MB, Role};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::code::{ALPHABET, AccessCode, LENGTH, redact};
use edgeshare_shared::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::core::Grant;
use crate::net::{LARGEST_PACKET, Millis};

/// What a code source says about a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted(Grant),
    Invalid,
    Expired,
    UsedUp,
    Revoked,
    /// Another account's code, on a gateway set to `codes.own_codes_only`.
    NotOurs,
    /// The source could not be asked (backend down, misconfigured account); the reason is
    /// for the log, not for the consumer.
    Unreachable(String),
}

/// What signing a consumer in with the backend came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// A consumer's account: its id, all the gateway keeps of it.
    Consumer(String),
    /// The backend refused the email and password.
    WrongCredentials,
    /// The account is a provider's or an admin's (or of a role this gateway does not know).
    NotConsumer,
    /// The backend could not be asked, or answered something unusable; the reason is for
    /// the log (it holds neither the password nor the token).
    Unreachable(String),
}

/// The longest account id kept: the backend's are 24 hex digits (MongoDB ids). It goes into
/// every ledger record of the session, so a backend answering something odd must not bloat
/// them.
pub const MAX_CONSUMER_ID_CHARS: usize = 128;

/// A code in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCode {
    pub code: AccessCode,
    pub total_bytes: u64,
    /// Bytes used so far, as the daemon last recorded it.
    pub used_bytes: u64,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked: bool,
}

impl LocalCode {
    pub fn remaining_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.used_bytes)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    codes: Vec<LocalCode>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the code store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the code store {} is damaged ({source}); move it away to start a new one", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no code {0} in the local store")]
    NotFound(AccessCode),
    #[error("{0}")]
    BadRequest(String),
}

/// The local code store.
#[derive(Debug, Clone)]
pub struct CodeStore {
    path: PathBuf,
    lock_path: PathBuf,
}

/// At most this many codes per `codes create`.
pub const MAX_CREATE: u32 = 1000;

impl CodeStore {
    pub fn new(state_dir: &Path) -> Self {
        CodeStore {
            path: state_dir.join("codes.json"),
            lock_path: state_dir.join("codes.lock"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `change` on the store's contents under the lock, and saves the result.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<LocalCode>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let result = change(&mut file.codes)?;
        file.version = 1;
        let json = serde_json::to_vec_pretty(&file).map_err(|e| self.io(e.into()))?;
        edgeshare_shared::secret::write_private(&self.path, &json).map_err(|e| self.io(e))?;
        Ok(result)
    }

    fn lock(&self) -> Result<File, StoreError> {
        if let Some(dir) = self.lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io(e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io(e.into()))?;
        Ok(file)
    }

    fn read(&self) -> Result<StoreFile, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Damaged {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile::default()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Makes `count` new codes of `total_bytes` each, valid for `valid_for` from `now`.
    pub fn create(
        &self,
        total_bytes: u64,
        valid_for: Duration,
        count: u32,
        now: Millis,
    ) -> Result<Vec<LocalCode>, StoreError> {
        if total_bytes == 0 {
            return Err(StoreError::BadRequest("a code needs more than 0 MB".into()));
        }
        if count == 0 || count > MAX_CREATE {
            return Err(StoreError::BadRequest(format!(
                "make between 1 and {MAX_CREATE} codes at a time"
            )));
        }
        self.update(|codes| {
            let mut made = Vec::new();
            while made.len() < count as usize {
                let code = random_code()?;
                if codes
                    .iter()
                    .chain(&made)
                    .any(|c: &LocalCode| c.code == code)
                {
                    continue;
                }
                made.push(LocalCode {
                    code,
                    total_bytes,
                    used_bytes: 0,
                    created_at: now,
                    expires_at: now.plus(valid_for),
                    revoked: false,
                });
            }
            codes.extend(made.iter().cloned());
            Ok(made)
        })
    }

    pub fn list(&self) -> Result<Vec<LocalCode>, StoreError> {
        let _lock = self.lock()?;
        Ok(self.read()?.codes)
    }

    /// Marks a code revoked. Returns an error if there is no such code.
    pub fn revoke(&self, code: &AccessCode) -> Result<(), StoreError> {
        self.update(|codes| {
            let found = codes
                .iter_mut()
                .find(|c| &c.code == code)
                .ok_or_else(|| StoreError::NotFound(code.clone()))?;
            found.revoked = true;
            Ok(())
        })
    }

    /// Records how many bytes a code has used in all (never lowers the figure, so a stale
    /// writer cannot give bytes back).
    pub fn record_usage(&self, usage: &[(AccessCode, u64)]) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        self.update(|codes| {
            for (code, used) in usage {
                if let Some(c) = codes.iter_mut().find(|c| &c.code == code) {
                    c.used_bytes = c.used_bytes.max(*used);
                }
            }
            Ok(())
        })
    }

    /// The verdict on a code a consumer entered.
    pub fn check(&self, code: &AccessCode, now: Millis) -> Verdict {
        let codes = match self.list() {
            Ok(codes) => codes,
            Err(e) => return Verdict::Unreachable(e.to_string()),
        };
        match codes.into_iter().find(|c| &c.code == code) {
            None => Verdict::Invalid,
            Some(c) if c.revoked => Verdict::Revoked,
            Some(c) if c.expires_at <= now => Verdict::Expired,
            Some(c) if used_up(c.remaining_bytes()) => Verdict::UsedUp,
            Some(c) => Verdict::Granted(Grant {
                remaining_bytes: c.remaining_bytes(),
                expires_at: Some(c.expires_at),
                code: c.code,
                consumer: None,
            }),
        }
    }
}

/// A code from the OS's random source: codes are bearer secrets, so a predictable generator
/// would let a neighbour guess them.
fn random_code() -> Result<AccessCode, StoreError> {
    let mut bytes = [0u8; LENGTH];
    os_random(&mut bytes)
        .map_err(|e| StoreError::BadRequest(format!("no random numbers from the OS: {e}")))?;
    // The alphabet has 32 symbols, so the low 5 bits pick one uniformly.
    let text: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    AccessCode::parse(&text).map_err(|e| StoreError::BadRequest(e.to_string()))
}

/// Fills `buf` from the OS's random source (getrandom), for secrets: codes, the dashboard's
/// session and CSRF tokens.
pub(crate) fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

/// Checks codes against the backend's authorize-code (contract 1).
#[derive(Debug)]
pub struct BackendCodes {
    /// Shared with the dashboard's code book: one login with the backend, not two.
    client: Arc<CrowdClient>,
    /// See `codes.expiry_margin`.
    expiry_margin: Duration,
    /// See `codes.own_codes_only`.
    own_codes_only: bool,
}

impl BackendCodes {
    pub fn new(client: CrowdClient, expiry_margin: Duration, own_codes_only: bool) -> Self {
        BackendCodes {
            client: Arc::new(client),
            expiry_margin,
            own_codes_only,
        }
    }

    /// The client this checks codes with, to make and list them with as well.
    pub fn client(&self) -> Arc<CrowdClient> {
        Arc::clone(&self.client)
    }

    /// Signs a consumer in with their network account (`POST /api/auth/login`), beside this
    /// gateway's own login, which it leaves alone. Only a consumer's account is taken; of it
    /// only the id is kept, the token the backend answers with is dropped unread.
    pub async fn sign_in(&self, email: &str, password: &Secret) -> SignIn {
        match self.client.sign_in(email, password).await {
            Ok(user) if user.role != Role::Consumer => SignIn::NotConsumer,
            Ok(user) => match usable_id(&user.id) {
                true => SignIn::Consumer(user.id),
                false => SignIn::Unreachable(format!(
                    "POST /api/auth/login: the backend answered an account id that cannot be used ({} characters)",
                    user.id.chars().count()
                )),
            },
            Err(err) if err.rejection() == Some(Rejection::BadCredentials) => {
                SignIn::WrongCredentials
            }
            // A reply not in the contract's shape is quoted in the error's text, and a
            // login's reply holds the consumer's token: only its status is kept.
            Err(BackendError::BadReply {
                endpoint, status, ..
            }) => SignIn::Unreachable(format!("{endpoint}: unexpected reply ({status})")),
            Err(err) => SignIn::Unreachable(err.to_string()),
        }
    }

    /// The verdict on a code at `now`. authorize-code does not say when a code expires; the
    /// provider's code list does, for the provider's own codes, so it is read as well. A
    /// code not in it is another account's (roaming): the backend accepts it and bills its
    /// usage to this account, but its expiry is unknown, so its session lasts
    /// `session.max_duration` (as for a code that never expires, `expireAt: null`).
    pub async fn check(&self, code: &AccessCode, now: Millis) -> Verdict {
        let authorized = match self.client.authorize_code(code).await {
            Ok(authorized) => authorized,
            Err(err) => return refusal(err),
        };
        let remaining_bytes = authorized.remaining_bytes();
        if used_up(remaining_bytes) {
            // The backend says ok to a code with nothing left; a gateway must not.
            return Verdict::UsedUp;
        }
        let expire_at_ms = match self.client.list_codes().await {
            Ok(list) => match list.into_iter().find(|c| &c.code == code) {
                Some(own) => own.expire_at_ms(),
                None if self.own_codes_only => return Verdict::NotOurs,
                None => {
                    tracing::info!(
                        code = %redact(code.as_str()),
                        "another account's code (roaming): served and billed to this gateway's account; its expiry is unknown"
                    );
                    None
                }
            },
            Err(err) if self.own_codes_only => return Verdict::Unreachable(err.to_string()),
            // Without the list, refusing the code would turn a hiccup into an outage: it is
            // served as a code whose expiry is unknown.
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the code list for the expiry; using session.max_duration");
                None
            }
        };
        grant_before_expiry(code, remaining_bytes, expire_at_ms, self.expiry_margin, now)
    }
}

/// The grant for a code the backend accepted, its session ending `margin` before the code
/// expires (`expire_at_ms`, Unix ms; `None`: never, or not known).
fn grant_before_expiry(
    code: &AccessCode,
    remaining_bytes: u64,
    expire_at_ms: Option<u64>,
    margin: Duration,
    now: Millis,
) -> Verdict {
    let margin = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX);
    let expires_at = expire_at_ms.map(|at| Millis(at.saturating_sub(margin)));
    if expires_at.is_some_and(|at| at <= now) {
        return Verdict::Expired;
    }
    Verdict::Granted(Grant {
        code: code.clone(),
        remaining_bytes,
        expires_at,
        consumer: None,
    })
}

/// An account id fit for the ledger and the reports: some printable characters.
fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_CONSUMER_ID_CHARS
        && !id.chars().any(char::is_control)
}

fn refusal(err: BackendError) -> Verdict {
    match err.rejection() {
        // An expired code answers 400 "Code expired" until the database deletes it, then 404.
        Some(Rejection::NotFound) => Verdict::Invalid,
        Some(Rejection::CodeExpired) => Verdict::Expired,
        _ => {
            tracing::warn!(error = %err, "cannot check a code with the backend");
            Verdict::Unreachable(err.to_string())
        }
    }
}

/// Whether a code with `remaining_bytes` left is used up: the one rule of the portal (each code
/// source's verdict) and of the code list (`codes list`, the dashboard). The kernel's quota
/// stops a session up to one packet short of it (the packet that would pass it is dropped,
/// never billed), and that session's code is then refused as used up, so what is left, at
/// most one packet ([`LARGEST_PACKET`]), is nothing: no session could use it either.
pub fn used_up(remaining_bytes: u64) -> bool {
    remaining_bytes <= LARGEST_PACKET
}

/// Megabytes (2^20 bytes, as the backend counts) to bytes.
pub fn mb_to_bytes(mb: f64) -> u64 {
    // Saturating, NaN to 0: a bad figure makes a code of nothing, never a huge one.
    (mb.max(0.0) * MB).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_codes_session_ends_a_margin_before_the_code() {
        let code = AccessCode::parse("ABCD2345").unwrap();
        let margin = Duration::from_secs(15);
        let granted = |expiry| grant_before_expiry(&code, 5, expiry, margin, Millis(100_000));
        assert_eq!(
            granted(Some(200_000)),
            Verdict::Granted(Grant {
                code: code.clone(),
                remaining_bytes: 5,
                expires_at: Some(Millis(185_000)),
                consumer: None,
            })
        );
        assert_eq!(
            granted(Some(115_000)),
            Verdict::Expired,
            "inside the margin"
        );
        assert_eq!(granted(Some(90_000)), Verdict::Expired);
        assert_eq!(
            granted(None),
            Verdict::Granted(Grant {
                code: code.clone(),
                remaining_bytes: 5,
                expires_at: None,
                consumer: None,
            }),
            "a code that never expires (expireAt null)"
        );
    }

    fn store() -> (tempfile::TempDir, CodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        (dir, store)
    }

    #[test]
    fn created_codes_are_granted_with_their_quota_and_expiry() {
        let (_dir, store) = store();
        let now = Millis(1_000_000);
        let made = store
            .create(mb_to_bytes(10.0), Duration::from_secs(3600), 3, now)
            .unwrap();
        assert_eq!(made.len(), 3);
        let verdict = store.check(&made[0].code, now);
        assert_eq!(
            verdict,
            Verdict::Granted(Grant {
                code: made[0].code.clone(),
                remaining_bytes: 10 * 1_048_576,
                expires_at: Some(Millis(1_000_000 + 3_600_000)),
                consumer: None,
            })
        );
        assert_eq!(store.list().unwrap().len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "codes are secrets");
    }

    #[test]
    fn refusals() {
        let (_dir, store) = store();
        let now = Millis(1_000_000);
        let made = store.create(1000, Duration::from_secs(60), 3, now).unwrap();
        assert_eq!(
            store.check(&AccessCode::parse("ZZZZ9999").unwrap(), now),
            Verdict::Invalid
        );
        assert_eq!(
            store.check(&made[0].code, Millis(1_060_000)),
            Verdict::Expired
        );
        store.revoke(&made[1].code).unwrap();
        assert_eq!(store.check(&made[1].code, now), Verdict::Revoked);
        store.record_usage(&[(made[2].code.clone(), 1000)]).unwrap();
        assert_eq!(store.check(&made[2].code, now), Verdict::UsedUp);
        assert!(matches!(
            store.revoke(&AccessCode::parse("ZZZZ9999").unwrap()),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn usage_never_goes_down() {
        let (_dir, store) = store();
        let made = store
            .create(1000, Duration::from_secs(60), 1, Millis(0))
            .unwrap();
        store.record_usage(&[(made[0].code.clone(), 600)]).unwrap();
        store.record_usage(&[(made[0].code.clone(), 200)]).unwrap();
        assert_eq!(store.list().unwrap()[0].used_bytes, 600);
    }

    #[test]
    fn bad_requests_and_a_damaged_file_are_clear_errors() {
        let (_dir, store) = store();
        assert!(matches!(
            store.create(0, Duration::from_secs(1), 1, Millis(0)),
            Err(StoreError::BadRequest(_))
        ));
        assert!(matches!(
            store.create(1, Duration::from_secs(1), 0, Millis(0)),
            Err(StoreError::BadRequest(_))
        ));
        std::fs::write(store.path(), "{not json").unwrap();
        let err = store.list().unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(matches!(
            store.check(&AccessCode::parse("ABCD2345").unwrap(), Millis(0)),
            Verdict::Unreachable(_)
        ));
    }

    #[test]
    fn random_codes_are_well_formed_and_differ() {
        let codes: std::collections::HashSet<_> =
            (0..200).map(|_| random_code().unwrap()).collect();
        assert_eq!(codes.len(), 200);
    }

    fn backend_at(url: &str) -> BackendCodes {
        use edgeshare_shared::backend::crowd::CrowdConfig;
        use edgeshare_shared::backend::{HttpClient, HttpSettings};
        let http = HttpClient::new(&HttpSettings {
            timeout: Duration::from_secs(5),
            ..HttpSettings::default()
        })
        .unwrap();
        let config = CrowdConfig {
            url: url.parse().unwrap(),
            email: "provider@example.com".to_owned(),
            password: Secret::new("Provider@123"),
        };
        BackendCodes::new(
            CrowdClient::new(&http, &config),
            Duration::from_secs(15),
            false,
        )
    }

    #[tokio::test]
    async fn only_a_consumers_account_signs_in() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = edgeshare_standin::StandinConfig::default();
        let standin = edgeshare_standin::start(listener, config).await.unwrap();
        let backend = backend_at(&standin.base_url());
        let sign_in = |email: &'static str, password: &'static str| {
            let backend = &backend;
            async move { backend.sign_in(email, &Secret::new(password)).await }
        };
        let consumer = standin.user("consumer@example.com").unwrap();
        assert_eq!(
            sign_in("consumer@example.com", "Consumer@123").await,
            SignIn::Consumer(consumer.id)
        );
        assert_eq!(
            sign_in("consumer@example.com", "Consumer@124").await,
            SignIn::WrongCredentials
        );
        assert_eq!(
            sign_in("Consumer@example.com", "Consumer@123").await,
            SignIn::WrongCredentials,
            "the backend compares emails exactly"
        );
        assert_eq!(
            sign_in("provider@example.com", "Provider@123").await,
            SignIn::NotConsumer
        );
        assert_eq!(
            sign_in("admin@example.com", "Admin@123").await,
            SignIn::NotConsumer
        );
        standin.shutdown().await;
        match sign_in("consumer@example.com", "Consumer@123").await {
            SignIn::Unreachable(reason) => {
                assert!(reason.contains("cannot reach"), "{reason}");
                assert!(!reason.contains("Consumer@123"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A login reply not in the contract's shape holds a token: the reason keeps it out.
    #[tokio::test]
    async fn an_odd_login_reply_is_unreachable_and_keeps_its_token_out_of_the_reason() {
        let long_id = "9".repeat(MAX_CONSUMER_ID_CHARS + 1);
        let replies = [
            r#"{"token":"eyJ.SECRET.TOKEN","user":{"id":"1","email":"c@example.com"}}"#.to_owned(),
            format!(
                r#"{{"token":"eyJ.SECRET.TOKEN","user":{{"id":"{long_id}","email":"c@example.com","role":"consumer"}}}}"#
            ),
        ];
        for reply in replies {
            let app = axum::Router::new().route(
                "/api/auth/login",
                axum::routing::post(move || async move { reply }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            let backend = backend_at(&format!("http://{addr}"));
            match backend
                .sign_in("c@example.com", &Secret::new("hunter2"))
                .await
            {
                SignIn::Unreachable(reason) => {
                    assert!(!reason.contains("SECRET"), "{reason}");
                    assert!(!reason.contains("hunter2"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            server.abort();
        }
    }

    #[test]
    fn account_ids_are_short_and_printable() {
        assert!(usable_id("665f1c2ab3d4e5f601234567"));
        assert!(usable_id("42"));
        assert!(!usable_id(""));
        assert!(!usable_id("a\nb"));
        assert!(!usable_id(&"x".repeat(MAX_CONSUMER_ID_CHARS + 1)));
    }

    #[test]
    fn megabytes_are_binary() {
        assert_eq!(mb_to_bytes(1.0), 1_048_576);
        assert_eq!(mb_to_bytes(0.5), 524_288);
        assert_eq!(mb_to_bytes(-3.0), 0);
        assert_eq!(mb_to_bytes(f64::NAN), 0);
    }
}
