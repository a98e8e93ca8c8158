//! What the daemon keeps asking the backend, off the state owner's thread (a backend call
//! takes up to `http.timeout`; the owner must never wait on one):
//! - the provider's own code list, every `codes.list_refresh`, kept for when the backend is
//!   unreachable (see [`crate::own_codes`]); it is also how the gateway notices the backend
//!   is back;
//! - each served code of another account, every `codes.recheck_every`: authorize-code does
//!   not say when a code expires, so asking again is the only way to end its session near
//!   its expiry. One check per code at a time, [`MAX_IN_FLIGHT`] in all; the answers go to
//!   the owner, which ends the session by the usual path (counters read, devices cut off,
//!   usage to the ledger).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgeshare_shared::code::AccessCode;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Codes;
use super::owner::Owner;
use crate::codes::{BackendCodes, Recheck};
use crate::net::Millis;

/// Checks of other accounts' codes running at once, at most: a crowd of roaming consumers
/// must not turn into a burst of calls.
pub(super) const MAX_IN_FLIGHT: usize = 8;
/// How often the schedule is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// When each served code of another account is asked about next. Pure: time passed in.
#[derive(Debug)]
pub(super) struct Rechecks {
    every: Duration,
    /// A code not confirmed for this long (the backend does not answer) has its devices
    /// logged out: its expiry may have passed unseen.
    lapse: Duration,
    codes: HashMap<AccessCode, Watched>,
}

#[derive(Debug, Clone, Copy)]
struct Watched {
    /// When it is to be asked next.
    next: Millis,
    /// When the backend last answered about it (or it was first seen).
    confirmed: Millis,
    in_flight: bool,
    /// Its devices were logged out for a lapse, not yet confirmed since.
    released: bool,
}

impl Rechecks {
    pub(super) fn new(every: Duration) -> Self {
        Rechecks {
            every,
            lapse: every * 2,
            codes: HashMap::new(),
        }
    }

    /// The codes `live` now: those to ask at `now` (at most `room`, each marked as asked),
    /// and those whose confirmation lapsed (to log their devices out, once per lapse).
    /// Codes no longer live are forgotten. A code seen for the first time is asked at once:
    /// after a restart nothing says when it was last asked.
    pub(super) fn due(
        &mut self,
        live: &[AccessCode],
        now: Millis,
        room: usize,
    ) -> (Vec<AccessCode>, Vec<AccessCode>) {
        self.codes.retain(|code, _| live.contains(code));
        let mut ask = Vec::new();
        let mut lapsed = Vec::new();
        for code in live {
            let watched = self.codes.entry(code.clone()).or_insert(Watched {
                next: now,
                confirmed: now,
                in_flight: false,
                released: false,
            });
            if !watched.released && watched.confirmed.plus(self.lapse) <= now {
                watched.released = true;
                lapsed.push(code.clone());
            }
            if !watched.in_flight && watched.next <= now && ask.len() < room {
                watched.in_flight = true;
                watched.next = now.plus(self.every);
                ask.push(code.clone());
            }
        }
        (ask, lapsed)
    }

    /// The answer about `code` at `now`: what the owner is to be told, if anything (an
    /// answer that says nothing waits for the next check, or the lapse).
    pub(super) fn answered(
        &mut self,
        code: &AccessCode,
        outcome: Recheck,
        now: Millis,
    ) -> Option<Recheck> {
        let watched = self.codes.get_mut(code)?;
        watched.in_flight = false;
        match outcome {
            Recheck::Unknown => None,
            known => {
                watched.confirmed = now;
                watched.released = false;
                Some(known)
            }
        }
    }
}

/// Runs both until `stop` turns true; nothing to do with local codes.
pub(super) async fn watch_backend(
    codes: Arc<Codes>,
    owner: Owner,
    recheck_every: Duration,
    list_refresh: Duration,
    stop: watch::Receiver<bool>,
) {
    tokio::join!(
        refresh_list(
            Arc::clone(&codes),
            owner.clone(),
            list_refresh,
            stop.clone()
        ),
        recheck_other_accounts(codes, owner, recheck_every, stop),
    );
}

fn backend(codes: &Codes) -> Option<&BackendCodes> {
    match codes {
        Codes::Backend(backend) => Some(backend),
        Codes::Local(_) => None,
    }
}

/// Reads the provider's code list now and every `every`, with this gateway's usage of each
/// code read just before it.
async fn refresh_list(
    codes: Arc<Codes>,
    owner: Owner,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Some(backend) = backend(&codes) else {
        return;
    };
    loop {
        let Some(used) = owner.used_by_code().await else {
            return;
        };
        match backend.refresh_own(&used).await {
            Ok(count) => tracing::debug!(codes = count, "the provider's code list kept"),
            // The link logs the start of an outage; the rest is noise while it lasts.
            Err(err) => tracing::debug!(error = %err, "cannot read the provider's code list"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Asks authorize-code about each served code of another account every `every`.
async fn recheck_other_accounts(
    codes: Arc<Codes>,
    owner: Owner,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut rechecks = Rechecks::new(every);
    let mut running: JoinSet<(AccessCode, Recheck)> = JoinSet::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stop's guard must not live across the awaits below (it is not `Send`).
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            // The checks under way are cut short (their answers would come too late to
            // matter) and joined.
            () = &mut stopped => break,
            Some(done) = running.join_next() => {
                let Ok((code, outcome)) = done else { continue };
                if let Some(tell) = rechecks.answered(&code, outcome, Millis::now()) {
                    owner.rechecked(code, tell).await;
                }
            }
            _ = look.tick() => {
                let Some(live) = owner.other_account_codes().await else {
                    break;
                };
                let room = MAX_IN_FLIGHT.saturating_sub(running.len());
                let (ask, lapsed) = rechecks.due(&live, Millis::now(), room);
                for code in lapsed {
                    owner.rechecked(code, Recheck::Unknown).await;
                }
                for code in ask {
                    let codes = Arc::clone(&codes);
                    running.spawn(async move {
                        let outcome = match backend(&codes) {
                            Some(backend) => backend.recheck(&code).await,
                            None => Recheck::Unknown,
                        };
                        (code, outcome)
                    });
                }
            }
        }
    }
    running.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(n: usize) -> AccessCode {
        AccessCode::parse(["ABCD2345", "EFGH6789", "JKLM2345"][n]).unwrap()
    }

    fn at(ms: u64) -> Millis {
        Millis(ms)
    }

    const EVERY: Duration = Duration::from_secs(20);

    #[test]
    fn each_code_is_asked_at_once_then_every_interval_one_at_a_time() {
        let mut r = Rechecks::new(EVERY);
        let live = [code(0)];
        assert_eq!(r.due(&live, at(0), 8), (vec![code(0)], vec![]));
        // Still in flight: not asked again, even when due.
        assert_eq!(r.due(&live, at(25_000), 8), (vec![], vec![]));
        assert_eq!(
            r.answered(&code(0), Recheck::Left(5), at(25_500)),
            Some(Recheck::Left(5))
        );
        // Due 20 s after it was asked, not after the slow answer.
        assert_eq!(r.due(&live, at(25_600), 8), (vec![code(0)], vec![]));
        r.answered(&code(0), Recheck::Left(5), at(26_000));
        assert_eq!(r.due(&live, at(45_000), 8).0, vec![]);
        assert_eq!(r.due(&live, at(45_600), 8).0, vec![code(0)]);
    }

    #[test]
    fn at_most_room_checks_start_and_the_rest_wait() {
        let mut r = Rechecks::new(EVERY);
        let live = [code(0), code(1), code(2)];
        let (first, _) = r.due(&live, at(0), 2);
        assert_eq!(first.len(), 2);
        let (rest, _) = r.due(&live, at(1_000), 1);
        assert_eq!(rest.len(), 1);
        assert!(!first.contains(&rest[0]));
    }

    #[test]
    fn unanswered_codes_lapse_once_and_an_answer_clears_it() {
        let mut r = Rechecks::new(EVERY);
        let live = [code(0)];
        r.due(&live, at(0), 8);
        assert_eq!(r.answered(&code(0), Recheck::Unknown, at(1_000)), None);
        assert_eq!(r.due(&live, at(20_000), 8).1, vec![]);
        r.answered(&code(0), Recheck::Unknown, at(21_000));
        assert_eq!(r.due(&live, at(40_000), 8).1, vec![code(0)]);
        // Once per lapse.
        assert_eq!(r.due(&live, at(60_000), 8).1, vec![]);
        r.answered(&code(0), Recheck::Left(1), at(61_000));
        assert_eq!(r.due(&live, at(100_000), 8).1, vec![]);
        assert_eq!(r.due(&live, at(101_000), 8).1, vec![code(0)]);
    }

    #[test]
    fn codes_no_longer_served_are_forgotten_and_answers_about_them_ignored() {
        let mut r = Rechecks::new(EVERY);
        r.due(&[code(0)], at(0), 8);
        r.due(&[], at(1_000), 8);
        assert_eq!(r.answered(&code(0), Recheck::Expired, at(2_000)), None);
        // Served again later: a new watch, asked at once.
        assert_eq!(r.due(&[code(0)], at(3_000), 8).0, vec![code(0)]);
    }
}
