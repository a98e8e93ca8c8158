//! The provider's own backend codes as last listed (`GET /api/provider/codes`), kept in the
//! state directory so that consumers still get online with them while the backend is
//! unreachable, for as long as a day, across restarts, and the rules for doing so.
//!
//! What a code may still carry offline. The list read at `synced_at` says `remaining` =
//! `total` - everything reported by then (by any gateway). Since then this gateway has used
//! more of the code (its ledger and live sessions know how much: `used_here`), none of which
//! the list reflects; the rule takes it off. Usage counted before the list was read but
//! reported after it is not in `remaining` either; the second cap, `total - used_here`
//! (everything this gateway ever used of the code), keeps a code used on this gateway alone
//! within what it had whatever the agent had reported. Only another gateway's use of the
//! same code while the backend is down is out of sight (see the README).
//!
//! The rules are pure (time passed in); the file is replaced atomically and is mode 0600
//! (codes are secrets).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeshare_shared::backend::crowd::{MB, ProviderCode};
use edgeshare_shared::code::AccessCode;
use serde::{Deserialize, Serialize};

use crate::codes::{Verdict, grant_before_expiry};
use crate::net::Millis;
use crate::refusal::Refusal;

/// One of the provider's codes as the list gave it, with this gateway's usage of it then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCode {
    pub code: AccessCode,
    pub total_bytes: u64,
    /// What the backend said was left when the list was read.
    pub remaining_bytes: u64,
    /// The code's own expiry; `None`: it never expires.
    pub expires_at: Option<Millis>,
    /// What this gateway had used of the code (ledger and live sessions) just before the
    /// list was read: usage after that is not in `remaining_bytes`.
    pub used_here_at_sync: u64,
}

/// The list as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCodes {
    /// Whose list it is (the backend's URL and the account's email): a list kept for
    /// another account, before `[backend]` changed, admits no one.
    #[serde(default)]
    pub account: String,
    /// When it was read; `Millis(0)`: never.
    pub synced_at: Millis,
    pub codes: Vec<OwnCode>,
}

impl OwnCodes {
    /// The list read at `now` from `listed`, with this gateway's usage of each code just
    /// before (`used_here`, by code).
    pub fn from_list(
        account: &str,
        listed: &[ProviderCode],
        used_here: &HashMap<AccessCode, u64>,
        now: Millis,
    ) -> OwnCodes {
        OwnCodes {
            account: account.to_owned(),
            synced_at: now,
            codes: listed
                .iter()
                .map(|c| OwnCode {
                    code: c.code.clone(),
                    total_bytes: whole_bytes(c.total_mb),
                    remaining_bytes: whole_bytes(c.remaining_mb),
                    expires_at: c.expire_at_ms().map(Millis),
                    used_here_at_sync: used_here.get(&c.code).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    pub fn find(&self, code: &AccessCode) -> Option<&OwnCode> {
        self.codes.iter().find(|c| &c.code == code)
    }
}

/// Megabytes to whole bytes, rounded down: a code must never be given a byte it lacked.
fn whole_bytes(mb: f64) -> u64 {
    // Saturating, NaN to 0.
    (mb.max(0.0) * MB).floor() as u64
}

/// What `entry` may carry from `now` while the backend is unreachable, this gateway having
/// used `used_here` of it in all (ledger and live sessions): the grant, or why not.
pub fn offline_verdict(entry: &OwnCode, used_here: u64, margin: Duration, now: Millis) -> Verdict {
    let since_sync = used_here.saturating_sub(entry.used_here_at_sync);
    let left = entry
        .remaining_bytes
        .saturating_sub(since_sync)
        .min(entry.total_bytes.saturating_sub(used_here));
    match grant_before_expiry(
        &entry.code,
        left,
        entry.expires_at.map(|at| at.0),
        margin,
        now,
    ) {
        Verdict::Granted(_) if left == 0 => Verdict::Refused(Refusal::UsedUp),
        verdict => verdict,
    }
}

/// Where the list is kept: `own-codes.json` in the state directory.
#[derive(Debug, Clone)]
pub struct OwnCodesFile(PathBuf);

impl OwnCodesFile {
    pub fn new(state_dir: &Path) -> Self {
        OwnCodesFile(state_dir.join("own-codes.json"))
    }

    /// The list last saved for `account`; empty if there is none, it cannot be read or it
    /// is another account's (said in the log: offline admission then waits for the next
    /// successful read).
    pub fn load(&self, account: &str) -> OwnCodes {
        match std::fs::read(&self.0) {
            Ok(bytes) => match serde_json::from_slice::<OwnCodes>(&bytes) {
                Ok(list) if list.account == account => list,
                Ok(_) => {
                    tracing::warn!(file = %self.0.display(), "the saved code list is another backend account's ([backend] changed): not used");
                    OwnCodes::default()
                }
                Err(err) => {
                    tracing::warn!(file = %self.0.display(), error = %err, "the saved code list is damaged; it is replaced at the next read of the backend's list");
                    OwnCodes::default()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => OwnCodes::default(),
            Err(err) => {
                tracing::warn!(file = %self.0.display(), error = %err, "cannot read the saved code list");
                OwnCodes::default()
            }
        }
    }

    /// Saves `codes` (temp file, fsync, rename; mode 0600).
    pub fn save(&self, codes: &OwnCodes) -> std::io::Result<()> {
        let json = serde_json::to_vec(codes)?;
        edgeshare_shared::secret::write_private(&self.0, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Grant;
    use proptest::prelude::*;

    const MARGIN: Duration = Duration::from_secs(15);

    fn code() -> AccessCode {
        AccessCode::parse("ABCD2345").unwrap()
    }

    fn entry(total: u64, remaining: u64, used_at_sync: u64, expires: Option<u64>) -> OwnCode {
        OwnCode {
            code: code(),
            total_bytes: total,
            remaining_bytes: remaining,
            expires_at: expires.map(Millis),
            used_here_at_sync: used_at_sync,
        }
    }

    fn granted(verdict: Verdict) -> u64 {
        match verdict {
            Verdict::Granted(Grant {
                remaining_bytes, ..
            }) => remaining_bytes,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_listed_code_admits_what_it_had_less_what_was_used_here_since() {
        let e = entry(1000, 600, 100, None);
        assert_eq!(granted(offline_verdict(&e, 100, MARGIN, Millis(0))), 600);
        // 150 more used here after the list was read: not in it.
        assert_eq!(granted(offline_verdict(&e, 250, MARGIN, Millis(0))), 450);
        assert_eq!(
            offline_verdict(&e, 700, MARGIN, Millis(0)),
            Verdict::Refused(Refusal::UsedUp)
        );
    }

    #[test]
    fn usage_here_not_yet_reported_when_listed_is_capped_by_the_total() {
        // The list says 900 left, but this gateway had used 400 that the agent had not yet
        // reported: the code has 600 at most.
        let e = entry(1000, 900, 400, None);
        assert_eq!(granted(offline_verdict(&e, 400, MARGIN, Millis(0))), 600);
    }

    #[test]
    fn expiry_and_its_margin_are_kept() {
        let e = entry(1000, 1000, 0, Some(100_000));
        match offline_verdict(&e, 0, MARGIN, Millis(50_000)) {
            Verdict::Granted(grant) => assert_eq!(grant.expires_at, Some(Millis(85_000))),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            offline_verdict(&e, 0, MARGIN, Millis(85_000)),
            Verdict::Refused(Refusal::Expired)
        );
        assert_eq!(
            offline_verdict(&entry(10, 0, 0, Some(1)), 0, MARGIN, Millis(5)),
            Verdict::Refused(Refusal::Expired),
            "expired before used up"
        );
    }

    #[test]
    fn the_list_is_read_in_whole_bytes_rounded_down() {
        let listed: Vec<ProviderCode> = serde_json::from_value(serde_json::json!([
            {"code": "ABCD2345", "totalMB": 2.0, "remainingMB": 0.9999999, "expireAt": null},
        ]))
        .unwrap();
        let used = HashMap::from([(code(), 7)]);
        let list = OwnCodes::from_list("me", &listed, &used, Millis(9));
        assert_eq!(list.synced_at, Millis(9));
        let e = list.find(&code()).unwrap();
        assert_eq!(e.total_bytes, 2 * 1_048_576);
        assert_eq!(e.remaining_bytes, 1_048_575);
        assert_eq!(e.used_here_at_sync, 7);
        assert_eq!(e.expires_at, None);
    }

    #[test]
    fn the_file_is_private_and_survives_a_reload() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = OwnCodesFile::new(dir.path());
        assert_eq!(file.load("me"), OwnCodes::default());
        let list = OwnCodes {
            account: "me".to_owned(),
            synced_at: Millis(5),
            codes: vec![entry(10, 5, 1, Some(99))],
        };
        file.save(&list).unwrap();
        assert_eq!(file.load("me"), list);
        assert_eq!(
            file.load("someone else"),
            OwnCodes::default(),
            "another account's list admits no one"
        );
        let mode = std::fs::metadata(dir.path().join("own-codes.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("own-codes.json"), "{oops").unwrap();
        assert_eq!(file.load("me"), OwnCodes::default());
    }

    proptest! {
        /// However the usage here and elsewhere falls before and after the list is read,
        /// and however much of this gateway's had been reported by then, the grant never
        /// lets the code carry more than it had when it is used on this gateway alone, or
        /// when what this gateway had used was reported by the time the list was read (and
        /// every other gateway's usage too: theirs is out of sight while the backend is
        /// down). Otherwise it is over by at most what this gateway had not yet reported
        /// when the list was read (the agent holds back less than 1 MiB per code between
        /// reports while the backend answers).
        #[test]
        fn never_beyond_what_the_code_had(
            total in 1u64..1_000_000,
            elsewhere_pct in 0u64..=100,
            here_before_pct in 0u64..=100,
            reported_pct in 0u64..=100,
            here_after_pct in 0u64..=100,
        ) {
            let elsewhere = total * elsewhere_pct / 100;
            let here_before = (total - elsewhere) * here_before_pct / 100;
            let reported_here = here_before * reported_pct / 100;
            let here_after = (total - elsewhere - here_before) * here_after_pct / 100;
            let e = entry(total, total - elsewhere - reported_here, here_before, None);
            let used_here = here_before + here_after;
            let truly_left = total - elsewhere - used_here;
            let unreported_at_sync = here_before - reported_here;
            let given = match offline_verdict(&e, used_here, MARGIN, Millis(0)) {
                Verdict::Granted(grant) => {
                    prop_assert!(grant.remaining_bytes > 0);
                    grant.remaining_bytes
                }
                Verdict::Refused(Refusal::UsedUp) => 0,
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            if elsewhere == 0 || unreported_at_sync == 0 {
                prop_assert!(given <= truly_left, "{} > {}", given, truly_left);
            }
            prop_assert!(given <= truly_left + unreported_at_sync);
            // Not stingy: when everything here had been reported, all that is left.
            if unreported_at_sync == 0 {
                prop_assert_eq!(given, truly_left);
            }
        }
    }
}
