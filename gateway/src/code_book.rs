//! What a provider does with codes: make them, list them, revoke them, wherever they live (the
//! local code store or the backend). The command line (`codes …`) and the dashboard both come
//! through here, so the two cannot disagree about what a code's state is or what an order
//! may ask for.

use std::sync::Arc;

use edgeshare_shared::backend::crowd::{CreateCodes, CrowdClient};
use edgeshare_shared::code::AccessCode;
use serde::Serialize;
use time::OffsetDateTime;

use crate::codes::{CodeStore, mb_to_bytes, used_up};
use crate::net::Millis;
use crate::vouchers::Voucher;

/// The longest validity an order may ask for.
const MAX_HOURS: f64 = 24.0 * 366.0;
/// The backend makes at most this many codes per call (contract 1).
pub const MAX_BACKEND_COUNT: u32 = 50;
/// The local store is asked for at most this many at once: a sheet of vouchers, not a
/// print run that fills the disk.
pub const MAX_LOCAL_COUNT: u32 = 1000;

/// Where a provider's codes live.
#[derive(Debug)]
pub enum CodeBook {
    Local(CodeStore),
    Backend(Arc<CrowdClient>),
}

/// Codes to make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    /// Data allowance of each code, in MB (2^20 bytes).
    pub mb: f64,
    /// Hours each stays valid; `None`: it never expires (backend codes only).
    pub hours: Option<f64>,
    pub count: u32,
}

/// A code as a provider sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeRow {
    pub code: AccessCode,
    pub total_mb: f64,
    pub remaining_mb: f64,
    /// `None`: never expires.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    /// Revoked in the local store (the backend cannot revoke).
    pub revoked: bool,
}

/// A code's state, in the words of the code list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    Valid,
    UsedUp,
    Expired,
    Revoked,
}

impl CodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeState::Valid => "valid",
            CodeState::UsedUp => "used up",
            CodeState::Expired => "expired",
            CodeState::Revoked => "revoked",
        }
    }
}

impl CodeRow {
    pub fn state(&self, now: OffsetDateTime) -> CodeState {
        if self.revoked {
            CodeState::Revoked
        } else if self.expires.is_some_and(|at| at <= now) {
            CodeState::Expired
        } else if used_up(mb_to_bytes(self.remaining_mb)) {
            CodeState::UsedUp
        } else {
            CodeState::Valid
        }
    }

    /// The code on a printable voucher.
    pub fn voucher(&self) -> Voucher {
        Voucher {
            code: self.code.clone(),
            mb: self.total_mb,
            expires: self.expires,
        }
    }
}

fn from_millis(at: Millis) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000).ok()
}

const BYTES_PER_MB: f64 = 1_048_576.0;

impl Order {
    /// Whether `book` can make these codes; the message names the field at fault, as the
    /// command line's flags and the dashboard's form both call them.
    pub fn check(&self, book: &CodeBook) -> Result<(), String> {
        if !(self.mb.is_finite() && self.mb > 0.0) {
            return Err("mb: the data of each code must be a number above 0".to_owned());
        }
        if used_up(mb_to_bytes(self.mb)) {
            return Err(
                "mb: the data of each code must be more than 0.0625 (64 KiB, one packet)"
                    .to_owned(),
            );
        }
        match (self.hours, book) {
            (None, CodeBook::Local(_)) => {
                return Err(
                    "hours: codes of the local store always expire; give their validity in hours (at most a year)"
                        .to_owned(),
                );
            }
            (Some(hours), _) if !(hours.is_finite() && hours > 0.0 && hours <= MAX_HOURS) => {
                return Err("hours: must be above 0 and at most a year".to_owned());
            }
            _ => {}
        }
        let most = match book {
            CodeBook::Local(_) => MAX_LOCAL_COUNT,
            CodeBook::Backend(_) => MAX_BACKEND_COUNT,
        };
        if self.count == 0 || self.count > most {
            return Err(format!("count: 1 to {most} codes at a time"));
        }
        Ok(())
    }
}

impl CodeBook {
    /// Makes the codes of `order` (checked first).
    pub async fn create(&self, order: &Order) -> anyhow::Result<Vec<CodeRow>> {
        order.check(self).map_err(anyhow::Error::msg)?;
        match self {
            CodeBook::Local(store) => {
                let store = store.clone();
                let hours = order.hours.unwrap_or(MAX_HOURS);
                let (mb, count) = (order.mb, order.count);
                let made = tokio::task::spawn_blocking(move || {
                    let valid_for = std::time::Duration::from_secs_f64(hours * 3600.0);
                    store.create(mb_to_bytes(mb), valid_for, count, Millis::now())
                })
                .await??;
                Ok(made
                    .into_iter()
                    .map(|code| CodeRow {
                        code: code.code,
                        total_mb: order.mb,
                        remaining_mb: order.mb,
                        expires: from_millis(code.expires_at),
                        revoked: false,
                    })
                    .collect())
            }
            CodeBook::Backend(client) => {
                let made = client
                    .create_codes(&CreateCodes {
                        total_mb: order.mb,
                        count: order.count,
                        expire_hours: order.hours,
                    })
                    .await?;
                Ok(made
                    .into_iter()
                    .map(|code| CodeRow {
                        code: code.code,
                        total_mb: code.total_mb,
                        remaining_mb: code.total_mb,
                        expires: code.expire_at,
                        revoked: false,
                    })
                    .collect())
            }
        }
    }

    /// Every code with what is left on it (the backend lists only this account's own).
    pub async fn list(&self) -> anyhow::Result<Vec<CodeRow>> {
        match self {
            CodeBook::Local(store) => {
                let store = store.clone();
                let codes = tokio::task::spawn_blocking(move || store.list()).await??;
                Ok(codes
                    .into_iter()
                    .map(|c| CodeRow {
                        total_mb: c.total_bytes as f64 / BYTES_PER_MB,
                        remaining_mb: c.remaining_bytes() as f64 / BYTES_PER_MB,
                        expires: from_millis(c.expires_at),
                        revoked: c.revoked,
                        code: c.code,
                    })
                    .collect())
            }
            CodeBook::Backend(client) => Ok(client
                .list_codes()
                .await?
                .into_iter()
                .map(|c| CodeRow {
                    code: c.code,
                    total_mb: c.total_mb,
                    remaining_mb: c.remaining_mb,
                    expires: c.expire_at,
                    revoked: false,
                })
                .collect()),
        }
    }

    /// Marks `code` revoked where the codes live, so that it no longer works; the daemon
    /// cuts its devices off separately. The backend has no revoke call: there this does
    /// nothing and says so (`false`), and the code works elsewhere until it expires.
    pub async fn revoke(&self, code: &AccessCode) -> anyhow::Result<bool> {
        match self {
            CodeBook::Local(store) => {
                let store = store.clone();
                let code = code.clone();
                tokio::task::spawn_blocking(move || store.revoke(&code)).await??;
                Ok(true)
            }
            CodeBook::Backend(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(remaining_mb: f64, expires: Option<OffsetDateTime>, revoked: bool) -> CodeRow {
        CodeRow {
            code: AccessCode::parse("ABCD2345").unwrap(),
            total_mb: 10.0,
            remaining_mb,
            expires,
            revoked,
        }
    }

    #[test]
    fn a_codes_state_puts_revoked_before_expired_before_used_up() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let past = Some(now - time::Duration::seconds(1));
        let future = Some(now + time::Duration::hours(1));
        assert_eq!(row(0.0, past, true).state(now), CodeState::Revoked);
        assert_eq!(row(0.0, past, false).state(now), CodeState::Expired);
        assert_eq!(row(0.0, future, false).state(now), CodeState::UsedUp);
        assert_eq!(row(1.0, None, false).state(now), CodeState::Valid);
        assert_eq!(row(1.0, future, false).state(now), CodeState::Valid);
    }

    /// A session the kernel stopped at its quota is billed up to one packet short of it, and
    /// its code is refused as used up from then on; `codes list` (and the dashboard) said
    /// "valid, 0.1 MB left". The list and the portal (the source's verdict) now apply one
    /// rule: used up in both or in neither, whatever is left.
    #[test]
    fn the_list_and_the_portal_agree_on_what_is_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let book = CodeBook::Local(CodeStore::new(dir.path()));
        let CodeBook::Local(store) = &book else {
            unreachable!()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let now = Millis(1_000_000);
        let wall = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_000_000);
        let total = 10 * 1_048_576;
        let one_packet = crate::net::LARGEST_PACKET;
        for (left, is_used_up) in [
            (0, true),
            (1, true),
            (60 * 1024, true),
            (one_packet, true),
            (one_packet + 1, false),
            (1_048_576, false),
        ] {
            let made = store
                .create(total, std::time::Duration::from_secs(3600), 1, now)
                .unwrap();
            let code = made[0].code.clone();
            store.record_usage(&[(code.clone(), total - left)]).unwrap();
            let portal = store.check(&code, now);
            let rows = runtime.block_on(book.list()).unwrap();
            let listed = rows
                .iter()
                .find(|row| row.code == code)
                .unwrap()
                .state(wall);
            assert_eq!(
                (
                    portal == crate::codes::Verdict::Refused(crate::refusal::Refusal::UsedUp),
                    listed == CodeState::UsedUp
                ),
                (is_used_up, is_used_up),
                "{left} bytes left: the portal's verdict {portal:?}, listed {listed:?}"
            );
        }
    }

    #[test]
    fn orders_are_checked_field_by_field() {
        let local = CodeBook::Local(CodeStore::new(std::path::Path::new("/nonexistent")));
        let order = |mb, hours, count| Order { mb, hours, count };
        assert!(order(100.0, Some(24.0), 3).check(&local).is_ok());
        for (bad, field) in [
            (order(0.0, Some(1.0), 1), "mb:"),
            (order(0.0625, Some(1.0), 1), "mb:"),
            (order(f64::NAN, Some(1.0), 1), "mb:"),
            (order(1.0, None, 1), "hours:"),
            (order(1.0, Some(0.0), 1), "hours:"),
            (order(1.0, Some(MAX_HOURS + 1.0), 1), "hours:"),
            (order(1.0, Some(1.0), 0), "count:"),
            (order(1.0, Some(1.0), MAX_LOCAL_COUNT + 1), "count:"),
        ] {
            let err = bad.check(&local).unwrap_err();
            assert!(err.starts_with(field), "{bad:?}: {err}");
        }
    }
}
