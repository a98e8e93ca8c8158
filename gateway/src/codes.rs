//! Where access codes are checked: the crowdsourced-internet backend, or a store of codes
//! made on this device (the standalone default). Both answer with a [`Verdict`]. With the
//! backend, a consumer may also sign in with their network account ([`BackendCodes::sign_in`]).
//!
//! The local store is one JSON file in the state directory, replaced atomically (temp file,
//! fsync, rename) and guarded by an advisory lock, so `edgeshare-gateway codes create` can
//! write it while the daemon runs. Codes are secrets: the file is mode 0600.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeshare_shared::backend::crowd::{CrowdClient, MB, Role};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::code::{ALPHABET, AccessCode, LENGTH, redact};
use edgeshare_shared::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::core::Grant;
use crate::net::{LARGEST_PACKET, Millis};
use crate::own_codes::{OwnCode, OwnCodes, OwnCodesFile};
use crate::refusal::Refusal;

/// What a code source says about a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted(Grant),
    /// Invalid, expired, used up, revoked; another account's on a gateway that does not
    /// serve them ([`Refusal::NotOurs`]); or, with the backend unreachable, not in the
    /// provider's last code list ([`Refusal::Unlisted`]: another account's, or made since).
    Refused(Refusal),
    /// The backend is unreachable, and the provider's last code list has this code: what
    /// it may carry depends on this gateway's usage of it (see [`crate::own_codes`]).
    Offline(OwnCode),
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
            None => Verdict::Refused(Refusal::Invalid),
            Some(c) if c.revoked => Verdict::Refused(Refusal::Revoked),
            Some(c) if c.expires_at <= now => Verdict::Refused(Refusal::Expired),
            Some(c) if used_up(c.remaining_bytes()) => Verdict::Refused(Refusal::UsedUp),
            Some(c) => Verdict::Granted(Grant {
                remaining_bytes: c.remaining_bytes(),
                expires_at: Some(c.expires_at),
                code: c.code,
                consumer: None,
                other_account: false,
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

/// Whether the backend answers: set by every call the gateway makes to it, read by the
/// portal (its notice), `status` and the dashboard.
#[derive(Debug, Default)]
pub struct BackendLink {
    /// Unix ms of the first failure of the current outage; 0 while it answers.
    down_since: AtomicU64,
}

impl BackendLink {
    /// Since when the backend has been unreachable, if it is.
    pub fn down_since(&self) -> Option<Millis> {
        match self.down_since.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Millis(at)),
        }
    }

    /// The backend answered (whatever it said).
    pub fn answered(&self) {
        let was = self.down_since.swap(0, Ordering::Relaxed);
        if was != 0 {
            tracing::info!(
                down_for_s = Millis(was).until(Millis::now()).as_secs(),
                "the backend answers again"
            );
        }
    }

    /// What a call's result says of the backend: down for the failures that mean it is
    /// unreachable (no connection, no reply, 5xx), up for any answer.
    pub fn heard<T>(&self, result: &Result<T, BackendError>, now: Millis) {
        match result {
            Err(err) if is_down(err) => {
                let first = self
                    .down_since
                    .compare_exchange(0, now.0.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
                if first {
                    tracing::warn!(error = %err, "the backend is unreachable: the provider's own codes admit consumers from its last code list, other accounts' codes are refused until it is back");
                }
            }
            _ => self.answered(),
        }
    }
}

/// A failure that means the backend cannot be reached now, as opposed to an answer.
fn is_down(err: &BackendError) -> bool {
    matches!(
        err,
        BackendError::Unreachable { .. } | BackendError::NoReply { .. }
    ) || err.rejection() == Some(Rejection::ServerError)
}

/// Checks codes against the backend's authorize-code (contract 1).
#[derive(Debug)]
pub struct BackendCodes {
    /// Shared with the dashboard's code book: one login with the backend, not two.
    client: Arc<CrowdClient>,
    /// See `codes.expiry_margin`.
    expiry_margin: Duration,
    /// See `codes.serve_other_accounts`.
    serve_other_accounts: bool,
    link: Arc<BackendLink>,
    /// The provider's own codes as last listed, and where they are kept.
    own: Mutex<OwnCodes>,
    own_file: OwnCodesFile,
    /// Whose codes they are: the backend's URL and the account's email.
    account: String,
}

/// What asking authorize-code again about a served code came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Still valid, with this much left.
    Left(u64),
    /// Expired, or gone (deleted by the database after its expiry).
    Expired,
    /// No answer: the backend is unreachable, or answered something unusable.
    Unknown,
}

impl BackendCodes {
    /// Checks codes with `client`, logged in as `account` (the backend's URL and the
    /// account's email, naming the list kept in `state_dir`).
    pub fn new(
        client: CrowdClient,
        account: String,
        expiry_margin: Duration,
        serve_other_accounts: bool,
        state_dir: &Path,
    ) -> Self {
        let own_file = OwnCodesFile::new(state_dir);
        BackendCodes {
            client: Arc::new(client),
            expiry_margin,
            serve_other_accounts,
            link: Arc::default(),
            own: Mutex::new(own_file.load(&account)),
            own_file,
            account,
        }
    }

    /// The client this checks codes with, to make and list them with as well.
    pub fn client(&self) -> Arc<CrowdClient> {
        Arc::clone(&self.client)
    }

    pub fn link(&self) -> Arc<BackendLink> {
        Arc::clone(&self.link)
    }

    fn own(&self) -> std::sync::MutexGuard<'_, OwnCodes> {
        // Plain data, whole after any panic.
        self.own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the provider's own code list and keeps it (in memory and on disk), with
    /// `used_here`: this gateway's usage of each code, read just before. On failure the
    /// list kept stays as it was.
    pub async fn refresh_own(
        &self,
        used_here: &std::collections::HashMap<AccessCode, u64>,
    ) -> Result<usize, BackendError> {
        let listed = self.client.list_codes().await;
        let now = Millis::now();
        self.link.heard(&listed, now);
        let list = OwnCodes::from_list(&self.account, &listed?, used_here, now);
        let count = list.codes.len();
        // Written only when what it says changed (its read time alone does not count): an
        // idle gateway costs the SD card no write a minute.
        let changed = {
            let kept = self.own();
            kept.account != list.account || kept.codes != list.codes
        };
        if changed && let Err(err) = self.own_file.save(&list) {
            tracing::warn!(error = %err, "cannot save the provider's code list in state.dir: a restart while the backend is unreachable would admit no one");
        }
        *self.own() = list;
        Ok(count)
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
    /// provider's code list does, for the provider's own codes, so it is read as well (the
    /// one kept from the last read if it cannot be). A code not in it is another
    /// account's: the backend accepts it, but credits its usage to its owner, never to this
    /// account, and its expiry is unknown, so it is served only with
    /// `codes.serve_other_accounts`, and then asked about again while it is used (see
    /// [`BackendCodes::recheck`]). With the backend unreachable, the verdict is the last
    /// list's ([`Verdict::Offline`]).
    pub async fn check(&self, code: &AccessCode, now: Millis) -> Verdict {
        let authorized = self.client.authorize_code(code).await;
        self.link.heard(&authorized, now);
        let authorized = match authorized {
            Ok(authorized) => authorized,
            Err(err) if is_down(&err) => {
                tracing::info!(error = %err, "cannot check a code with the backend: the provider's last code list decides");
                return match self.own().find(code) {
                    Some(own) => Verdict::Offline(own.clone()),
                    None => Verdict::Refused(Refusal::Unlisted),
                };
            }
            Err(err) => return refusal(err),
        };
        let remaining_bytes = authorized.remaining_bytes();
        if used_up(remaining_bytes) {
            // The backend says ok to a code with nothing left; a gateway must not.
            return Verdict::Refused(Refusal::UsedUp);
        }
        let listed = self.client.list_codes().await;
        self.link.heard(&listed, now);
        let own = match listed {
            Ok(list) => list
                .into_iter()
                .find(|c| &c.code == code)
                .map(|c| c.expire_at_ms()),
            // Without a fresh list, the kept one tells the provider's own codes; a code not
            // in it may be another account's or one made since.
            Err(err) => match self.own().find(code) {
                Some(own) => Some(own.expires_at.map(|at| at.0)),
                None if self.serve_other_accounts => {
                    tracing::warn!(error = %err, "cannot read the code list; the code is not in the last one: served as another account's");
                    None
                }
                None => return Verdict::Unreachable(err.to_string()),
            },
        };
        match own {
            Some(expire_at_ms) => {
                grant_before_expiry(code, remaining_bytes, expire_at_ms, self.expiry_margin, now)
            }
            None if !self.serve_other_accounts => Verdict::Refused(Refusal::NotOurs),
            None => {
                tracing::info!(
                    code = %redact(code.as_str()),
                    "another account's code: served (codes.serve_other_accounts), its bytes credited to the code's OWNER, not to this provider; its expiry is unknown, so authorize-code is asked again every codes.recheck_every while it is used"
                );
                Verdict::Granted(Grant {
                    code: code.clone(),
                    remaining_bytes,
                    expires_at: None,
                    consumer: None,
                    other_account: true,
                })
            }
        }
    }

    /// Asks authorize-code about `code` again (another account's, being served).
    pub async fn recheck(&self, code: &AccessCode) -> Recheck {
        let answer = self.client.authorize_code(code).await;
        self.link.heard(&answer, Millis::now());
        match answer {
            Ok(authorized) => Recheck::Left(authorized.remaining_bytes()),
            Err(err) => match err.rejection() {
                Some(Rejection::CodeExpired | Rejection::NotFound) => Recheck::Expired,
                _ => {
                    tracing::warn!(error = %err, code = %redact(code.as_str()), "cannot check another account's code again");
                    Recheck::Unknown
                }
            },
        }
    }
}

/// The grant for a code the backend accepted, its session ending `margin` before the code
/// expires (`expire_at_ms`, Unix ms; `None`: never).
pub(crate) fn grant_before_expiry(
    code: &AccessCode,
    remaining_bytes: u64,
    expire_at_ms: Option<u64>,
    margin: Duration,
    now: Millis,
) -> Verdict {
    let margin = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX);
    let expires_at = expire_at_ms.map(|at| Millis(at.saturating_sub(margin)));
    if expires_at.is_some_and(|at| at <= now) {
        return Verdict::Refused(Refusal::Expired);
    }
    Verdict::Granted(Grant {
        code: code.clone(),
        remaining_bytes,
        expires_at,
        consumer: None,
        other_account: false,
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
        Some(Rejection::NotFound) => Verdict::Refused(Refusal::Invalid),
        Some(Rejection::CodeExpired) => Verdict::Refused(Refusal::Expired),
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
                other_account: false,
            })
        );
        assert_eq!(
            granted(Some(115_000)),
            Verdict::Refused(Refusal::Expired),
            "inside the margin"
        );
        assert_eq!(granted(Some(90_000)), Verdict::Refused(Refusal::Expired));
        assert_eq!(
            granted(None),
            Verdict::Granted(Grant {
                code: code.clone(),
                remaining_bytes: 5,
                expires_at: None,
                consumer: None,
                other_account: false,
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
                other_account: false,
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
            Verdict::Refused(Refusal::Invalid)
        );
        assert_eq!(
            store.check(&made[0].code, Millis(1_060_000)),
            Verdict::Refused(Refusal::Expired)
        );
        store.revoke(&made[1].code).unwrap();
        assert_eq!(
            store.check(&made[1].code, now),
            Verdict::Refused(Refusal::Revoked)
        );
        store.record_usage(&[(made[2].code.clone(), 1000)]).unwrap();
        assert_eq!(
            store.check(&made[2].code, now),
            Verdict::Refused(Refusal::UsedUp)
        );
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

    /// Other accounts' codes are refused by default, served (flagged, re-checkable) with
    /// `serve_other_accounts`; with the backend unreachable the provider's kept list
    /// decides (own codes [`Verdict::Offline`], others [`Refusal::Unlisted`]), the
    /// link says since when, and the kept list survives a restart (a new `BackendCodes`).
    #[tokio::test]
    async fn other_accounts_codes_and_the_kept_list_when_the_backend_is_down() {
        use edgeshare_shared::backend::crowd::{CreateCodes, CrowdConfig};
        use edgeshare_shared::backend::{HttpClient, HttpSettings};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let standin = edgeshare_standin::start(listener, Default::default())
            .await
            .unwrap();
        let http = HttpClient::new(&HttpSettings {
            timeout: Duration::from_secs(5),
            ..HttpSettings::default()
        })
        .unwrap();
        let account = |email: &str, password: &str| {
            CrowdClient::new(
                &http,
                &CrowdConfig {
                    url: standin.base_url().parse().unwrap(),
                    email: email.to_owned(),
                    password: Secret::new(password),
                },
            )
        };
        let made = |client: CrowdClient, hours: Option<f64>| async move {
            let request = CreateCodes {
                total_mb: 10.0,
                count: 1,
                expire_hours: hours,
            };
            client.create_codes(&request).await.unwrap()[0].code.clone()
        };
        let foreign = made(account("admin@example.com", "Admin@123"), Some(1.0)).await;
        let own = made(account("provider@example.com", "Provider@123"), Some(1.0)).await;
        let dir = tempfile::tempdir().unwrap();
        let gateway = |serve: bool| {
            BackendCodes::new(
                account("provider@example.com", "Provider@123"),
                "provider".to_owned(),
                Duration::from_secs(15),
                serve,
                dir.path(),
            )
        };
        let now = Millis::now();
        assert_eq!(
            gateway(false).check(&foreign, now).await,
            Verdict::Refused(Refusal::NotOurs)
        );
        let serving = gateway(true);
        match serving.check(&foreign, now).await {
            Verdict::Granted(grant) => {
                assert!(grant.other_account);
                assert_eq!(grant.expires_at, None);
                assert_eq!(grant.remaining_bytes, 10 * 1_048_576);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            serving.recheck(&foreign).await,
            Recheck::Left(10 * 1_048_576)
        );
        assert_eq!(
            serving
                .recheck(&AccessCode::parse("ZZZZ9999").unwrap())
                .await,
            Recheck::Expired,
            "404: gone"
        );
        match serving.check(&own, now).await {
            Verdict::Granted(grant) => assert!(!grant.other_account),
            other => panic!("{other:?}"),
        }
        let used = std::collections::HashMap::from([(own.clone(), 42)]);
        assert!(serving.refresh_own(&used).await.unwrap() >= 1);
        assert_eq!(serving.link().down_since(), None);
        // Read again unchanged: the file is not rewritten (a rewrite is a new inode).
        let inode = || {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(dir.path().join("own-codes.json"))
                .unwrap()
                .ino()
        };
        let written = inode();
        serving.refresh_own(&used).await.unwrap();
        assert_eq!(inode(), written, "an unchanged list is not written again");
        let more = std::collections::HashMap::from([(own.clone(), 43)]);
        serving.refresh_own(&more).await.unwrap();
        assert_ne!(inode(), written, "a changed one is");
        serving.refresh_own(&used).await.unwrap();

        standin.refuse_connections().await;
        let after_restart = gateway(true);
        let before = Millis::now();
        match after_restart.check(&own, before).await {
            Verdict::Offline(entry) => {
                assert_eq!(entry.code, own);
                assert_eq!(entry.used_here_at_sync, 42);
                assert_eq!(entry.remaining_bytes, 10 * 1_048_576);
                assert!(entry.expires_at.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            after_restart.check(&foreign, before).await,
            Verdict::Refused(Refusal::Unlisted)
        );
        assert!(
            after_restart
                .link()
                .down_since()
                .is_some_and(|at| at >= before)
        );
        assert_eq!(after_restart.recheck(&foreign).await, Recheck::Unknown);
        // Back: the next answer clears it.
        standin.accept_connections().await.unwrap();
        assert!(after_restart.refresh_own(&used).await.is_ok());
        assert_eq!(after_restart.link().down_since(), None);
        standin.shutdown().await;
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
            "provider".to_owned(),
            Duration::from_secs(15),
            false,
            &std::env::temp_dir().join("edgeshare-no-state"),
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
