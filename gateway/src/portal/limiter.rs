//! How fast codes may be guessed: a pure sliding-window limiter, per client IP and over all
//! clients. No clock reads and no locks here; the portal passes the time in and keeps the
//! limiter behind a mutex.
//!
//! The device comes first: an attempt takes a slot in its device's window *before* the code
//! is checked, so a burst of concurrent requests from one device cannot overshoot its limit
//! while the first checks are still in flight. Outcomes that are not failed guesses (the code
//! worked; the backend was down; the device is unknown) hand the slot back with
//! [`Limiter::refund`]; a failed guess is recorded with [`Limiter::failed`], in the device's
//! window and in the global one.
//!
//! The global window holds failed guesses only, and it holds back only devices that have a
//! guess of their own in the window (failed or in flight). A device with none always has its
//! code checked: guessing from other addresses must not lock out someone typing a valid
//! code, and a crowd of devices logging in at once (200 valid codes at the same moment) is
//! not an attack. An attacker gets one guess per fresh address and window before the global
//! limit holds it too.
//!
//! Memory is bounded: a client's window holds at most `per_client` timestamps, the global one
//! at most `global`, stale entries are dropped on the way, and at most [`MAX_TRACKED`] client
//! IPs are tracked (only clients with an attempt in the current window are tracked at all).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::net::Millis;

/// The most client IPs tracked at once, whatever the configured limits.
pub const MAX_TRACKED: usize = 4096;
/// The most attempts remembered over all clients; a larger global limit is this one. Every
/// client's timestamps are also in the global window, so this bounds them all (~1 MB).
pub const MAX_GLOBAL: usize = 65_536;

/// A slot taken by [`Limiter::begin`]: give it to [`Limiter::failed`] for a failed guess, to
/// [`Limiter::refund`] otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an attempt must end in Limiter::failed or Limiter::refund"]
pub struct Attempt {
    ip: IpAddr,
    at: Millis,
}

/// Why an attempt was refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Whole seconds until the next attempt can pass, at least 1.
    pub seconds: u64,
    /// Whether the limit over all clients (not this client's own) was reached.
    pub global: bool,
}

#[derive(Debug)]
pub struct Limiter {
    per_client: usize,
    global: usize,
    window: u64,
    clients: HashMap<IpAddr, VecDeque<Millis>>,
    all: VecDeque<Millis>,
}

impl Limiter {
    /// `per_client` failed attempts per client and `global` over all clients within any
    /// `window`. Limits below 1 are taken as 1 (a portal that refuses every attempt is a
    /// configuration mistake, not a policy) and `global` is capped at [`MAX_GLOBAL`].
    pub fn new(per_client: u32, global: u32, window: Duration) -> Self {
        let as_count = |n: u32| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        Limiter {
            per_client: as_count(per_client),
            global: as_count(global).min(MAX_GLOBAL),
            window: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            clients: HashMap::new(),
            all: VecDeque::new(),
        }
    }

    /// Takes a slot for an attempt by `ip` at `now`, or says how long to wait: the device's
    /// own limit first; the global limit only for a device with a guess in the window.
    pub fn begin(&mut self, ip: IpAddr, now: Millis) -> Result<Attempt, Wait> {
        let window = self.window;
        prune(&mut self.all, window, now);
        if let Some(times) = self.clients.get_mut(&ip) {
            prune(times, window, now);
            if times.len() >= self.per_client {
                return Err(wait(self.window, times, now, false));
            }
            if !times.is_empty() && self.all.len() >= self.global {
                return Err(wait(self.window, &self.all, now, true));
            }
        }
        if !self.clients.contains_key(&ip) && self.clients.len() >= MAX_TRACKED {
            self.make_room(now);
        }
        self.clients.entry(ip).or_default().push_back(now);
        Ok(Attempt { ip, at: now })
    }

    /// Records a failed guess: its device keeps the slot, and it counts for all clients.
    pub fn failed(&mut self, attempt: Attempt) {
        if self.all.len() >= MAX_GLOBAL {
            self.all.pop_front();
        }
        self.all.push_back(attempt.at);
    }

    /// Gives back the slot of an attempt that was not a failed guess.
    pub fn refund(&mut self, attempt: Attempt) {
        if let Some(times) = self.clients.get_mut(&attempt.ip) {
            remove_latest(times, attempt.at);
            if times.is_empty() {
                self.clients.remove(&attempt.ip);
            }
        }
    }

    /// Drops clients with nothing left in the window; if that is not enough, the client whose
    /// last attempt is oldest.
    fn make_room(&mut self, now: Millis) {
        let window = self.window;
        self.clients.retain(|_, times| {
            prune(times, window, now);
            !times.is_empty()
        });
        if self.clients.len() >= MAX_TRACKED {
            let stalest = self
                .clients
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(ip, _)| *ip);
            if let Some(ip) = stalest {
                self.clients.remove(&ip);
            }
        }
    }
}

/// How long until the oldest attempt in `times` leaves the window: the first slot to free up.
fn wait(window: u64, times: &VecDeque<Millis>, now: Millis, global: bool) -> Wait {
    let oldest = times.front().copied().unwrap_or(now);
    let ms = oldest.0.saturating_add(window).saturating_sub(now.0);
    Wait {
        seconds: ms.div_ceil(1000).max(1),
        global,
    }
}

/// Removes timestamps that have left the window at `now`.
pub(super) fn prune(times: &mut VecDeque<Millis>, window: u64, now: Millis) {
    while times
        .front()
        .is_some_and(|t| now.0.saturating_sub(t.0) >= window)
    {
        times.pop_front();
    }
}

/// Removes the latest timestamp equal to `at` (a refunded attempt's).
pub(super) fn remove_latest(times: &mut VecDeque<Millis>, at: Millis) {
    if let Some(index) = times.iter().rposition(|t| *t == at) {
        times.remove(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 66, 0, last])
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_client_gets_its_attempts_then_waits_for_the_oldest_to_leave() {
        let mut limiter = Limiter::new(3, 100, MINUTE);
        let _ = limiter.begin(ip(2), Millis(0)).unwrap();
        let _ = limiter.begin(ip(2), Millis(10_000)).unwrap();
        let _ = limiter.begin(ip(2), Millis(20_000)).unwrap();
        assert_eq!(
            limiter.begin(ip(2), Millis(30_000)),
            Err(Wait {
                seconds: 30,
                global: false
            })
        );
        // Rounded up: never tell someone to come back too early.
        assert_eq!(limiter.begin(ip(2), Millis(59_500)).unwrap_err().seconds, 1);
        // The first attempt has left the window; one slot is free again, then none.
        let _ = limiter.begin(ip(2), Millis(60_000)).unwrap();
        assert_eq!(
            limiter.begin(ip(2), Millis(60_001)).unwrap_err().seconds,
            10
        );
        // Other clients are not affected.
        let _ = limiter.begin(ip(3), Millis(60_001)).unwrap();
    }

    #[test]
    fn refused_attempts_do_not_extend_the_wait() {
        let mut limiter = Limiter::new(1, 100, MINUTE);
        let _ = limiter.begin(ip(2), Millis(0)).unwrap();
        for t in (1_000..59_000).step_by(1_000) {
            assert!(limiter.begin(ip(2), Millis(t)).is_err());
        }
        assert!(limiter.begin(ip(2), Millis(60_000)).is_ok());
    }

    #[test]
    fn successes_are_refunded_and_never_count() {
        let mut limiter = Limiter::new(2, 100, MINUTE);
        for t in 0..50 {
            let attempt = limiter.begin(ip(2), Millis(t)).unwrap();
            limiter.refund(attempt);
        }
        assert_eq!(limiter.clients.len(), 0);
        let _ = limiter.begin(ip(2), Millis(100)).unwrap();
        let _ = limiter.begin(ip(2), Millis(100)).unwrap();
        assert!(limiter.begin(ip(2), Millis(100)).is_err());
    }

    #[test]
    fn refunding_one_of_two_equal_timestamps_keeps_the_other() {
        let mut limiter = Limiter::new(2, 100, MINUTE);
        let first = limiter.begin(ip(2), Millis(5)).unwrap();
        let _second = limiter.begin(ip(2), Millis(5)).unwrap();
        limiter.refund(first);
        let _ = limiter.begin(ip(2), Millis(6)).unwrap();
        assert!(limiter.begin(ip(2), Millis(7)).is_err());
    }

    #[test]
    fn the_global_limit_holds_back_devices_that_guess() {
        let mut limiter = Limiter::new(5, 4, MINUTE);
        for last in 2..6 {
            let attempt = limiter.begin(ip(last), Millis(1_000)).unwrap();
            limiter.failed(attempt);
        }
        // Each guessing device is held back by the global limit (its own is not reached).
        assert_eq!(
            limiter.begin(ip(2), Millis(2_000)),
            Err(Wait {
                seconds: 59,
                global: true
            })
        );
        // A device over its own limit hears about its own wait first.
        let mut limiter = Limiter::new(1, 2, MINUTE);
        let first = limiter.begin(ip(2), Millis(0)).unwrap();
        limiter.failed(first);
        let second = limiter.begin(ip(3), Millis(0)).unwrap();
        limiter.failed(second);
        assert!(!limiter.begin(ip(2), Millis(1)).unwrap_err().global);
        assert!(limiter.begin(ip(2), Millis(60_000)).is_ok());
    }

    #[test]
    fn guessing_elsewhere_never_locks_out_a_device_that_has_not_guessed() {
        // 12 addresses guess as fast as they are let; meanwhile fresh devices log in.
        let mut limiter = Limiter::new(5, 60, MINUTE);
        let mut refused_valid = 0;
        for t in 0..600_u64 {
            let guesser = ip(10 + (t % 12) as u8);
            if let Ok(attempt) = limiter.begin(guesser, Millis(t * 100)) {
                limiter.failed(attempt);
            }
            if t % 50 == 0 {
                match limiter.begin(ip(100 + (t / 50) as u8), Millis(t * 100)) {
                    Ok(attempt) => limiter.refund(attempt),
                    Err(_) => refused_valid += 1,
                }
            }
        }
        assert_eq!(refused_valid, 0);
        assert!(limiter.all.len() <= 60, "{}", limiter.all.len());
    }

    #[test]
    fn a_crowd_of_valid_logins_is_not_an_attack() {
        let mut limiter = Limiter::new(5, 60, MINUTE);
        let attempts: Vec<Attempt> = (0..200_u32)
            .map(|n| {
                let addr = IpAddr::from((0x0a42_0000u32 + n).to_be_bytes());
                limiter
                    .begin(addr, Millis(5))
                    .expect("a device's first attempt")
            })
            .collect();
        for attempt in attempts {
            limiter.refund(attempt);
        }
        assert!(limiter.clients.is_empty() && limiter.all.is_empty());
    }

    #[test]
    fn zero_limits_are_taken_as_one() {
        let mut limiter = Limiter::new(0, 0, MINUTE);
        let _ = limiter.begin(ip(2), Millis(0)).unwrap();
        assert!(limiter.begin(ip(2), Millis(1)).is_err());
    }

    #[test]
    fn a_zero_window_does_not_limit() {
        let mut limiter = Limiter::new(1, 1, Duration::ZERO);
        for t in 0..10 {
            let _ = limiter.begin(ip(2), Millis(t)).unwrap();
        }
    }

    #[test]
    fn times_far_apart_do_not_overflow() {
        let mut limiter = Limiter::new(1, 1, Duration::MAX);
        let _ = limiter.begin(ip(2), Millis(u64::MAX)).unwrap();
        let wait = limiter.begin(ip(2), Millis(u64::MAX)).unwrap_err();
        assert!(wait.seconds >= 1);
        let mut limiter = Limiter::new(1, 1, MINUTE);
        let _ = limiter.begin(ip(2), Millis(0)).unwrap();
        assert!(limiter.begin(ip(2), Millis(u64::MAX)).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        // A global limit as large as the tracking cap lets every IP in; the cap still holds.
        let mut limiter = Limiter::new(5, u32::MAX, MINUTE);
        for n in 0..(MAX_TRACKED as u32 + 500) {
            let addr = IpAddr::from((0x0a00_0000u32 + n).to_be_bytes());
            let _ = limiter.begin(addr, Millis(u64::from(n))).unwrap();
            assert!(limiter.clients.len() <= MAX_TRACKED);
        }
        assert_eq!(limiter.clients.len(), MAX_TRACKED);
        // Once the window has passed, stale clients make room for new ones.
        let _ = limiter.begin(ip(2), Millis(1_000_000)).unwrap();
        assert_eq!(limiter.clients.len(), 1);
    }

    #[test]
    fn table_of_limits() {
        // (per client, global, failed guesses by one client in a burst, expected to pass):
        // the first guess always passes, the global limit holds the rest.
        for (per_client, global, burst, passed) in [
            (5, 60, 10, 5),
            (5, 3, 10, 3),
            (1, 60, 3, 1),
            (60, 60, 100, 60),
        ] {
            let mut limiter = Limiter::new(per_client, global, MINUTE);
            let ok = (0..burst)
                .filter(|_| match limiter.begin(ip(2), Millis(0)) {
                    Ok(attempt) => {
                        limiter.failed(attempt);
                        true
                    }
                    Err(_) => false,
                })
                .count();
            assert_eq!(ok, passed, "{per_client} {global} {burst}");
        }
    }
}
