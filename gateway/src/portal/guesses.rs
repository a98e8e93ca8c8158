//! How fast codes may be guessed at the portal: a pure sliding-window limiter, per device
//! (see `devices.rs`: its MAC, all its addresses together) and over all devices. No clock
//! reads and no locks here; the portal passes the time in and keeps it behind a mutex. (The
//! dashboard's password limiter, per address, is `limiter.rs`.)
//!
//! The device comes first: an attempt takes a slot in its device's window *before* the code
//! is checked, so a burst of concurrent requests from one device cannot overshoot its limit
//! while the first checks are still in flight. Outcomes that are not failed guesses (the code
//! worked; the backend was down; the device is unknown) hand the slot back with
//! [`Guesses::refund`]; a failed guess is recorded with [`Guesses::failed`], in the device's
//! window and in the global one. A wrong account password is a failed guess like a wrong
//! code, so passwords are tried no faster than codes.
//!
//! The global limit holds back devices that keep guessing, not consumers who mistyped: once
//! the window holds `global` failed guesses, a device is checked only while it has fewer
//! than [`TYPO_ALLOWANCE`] failed (or pending) guesses of its own in the window. A consumer
//! with a typo or two is never refused because others guess (12 of 12 such consumers were
//! refused while 30 addresses guessed, before), a crowd of devices logging in at once (500
//! valid codes at the same moment) is not an attack, and a device guessing on is held to
//! what is left under `global`. Those first guesses of each device are still bounded in
//! all: past [`CEILING_FACTOR`] times `global` failed guesses in the window, no code is
//! checked (plus at most the checks in flight at that moment, each one connection's). That
//! ceiling is the most wrong guesses the portal checks per window, however many devices
//! (made-up MACs) guess.
//!
//! Memory is bounded: a device's window holds at most `per_device` timestamps, the global
//! one at most the ceiling (and the checks in flight), never past [`MAX_GLOBAL`], stale entries are dropped on the way, and at most
//! [`MAX_TRACKED`] devices are tracked (only devices with an attempt in the current window
//! are tracked at all).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::devices::Device;
use super::limiter::{MAX_GLOBAL, MAX_TRACKED, Wait, prune, remove_latest};
use crate::net::Millis;

/// Past the global limit, a device with fewer failed (or pending) guesses than this in the
/// window is still checked: a consumer's own typos never lock them out because of others.
pub const TYPO_ALLOWANCE: usize = 3;
/// Failed guesses of all devices per window are at most this many times the global limit:
/// the guesses of devices within [`TYPO_ALLOWANCE`] have room above the global limit, and
/// a bound.
pub const CEILING_FACTOR: usize = 4;

/// A slot taken by [`Guesses::begin`]: give it to [`Guesses::failed`] for a failed guess, to
/// [`Guesses::refund`] otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a guess must end in Guesses::failed or Guesses::refund"]
pub struct Guess {
    device: Device,
    at: Millis,
}

#[derive(Debug)]
pub struct Guesses {
    per_device: usize,
    global: usize,
    ceiling: usize,
    window: u64,
    /// Each device's failed and pending guesses in the window.
    devices: HashMap<Device, VecDeque<Millis>>,
    /// Every device's failed guesses in the window.
    all: VecDeque<Millis>,
}

impl Guesses {
    /// `per_device` failed attempts per device and `global` over all devices that keep
    /// guessing, within any `window`. Limits below 1 are taken as 1 (a portal that refuses
    /// every attempt is a configuration mistake, not a policy); the ceiling, `global` times
    /// [`CEILING_FACTOR`], is at most [`MAX_GLOBAL`].
    pub fn new(per_device: u32, global: u32, window: Duration) -> Self {
        let as_count = |n: u32| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        let global = as_count(global).min(MAX_GLOBAL);
        Guesses {
            per_device: as_count(per_device),
            global,
            ceiling: global.saturating_mul(CEILING_FACTOR).min(MAX_GLOBAL),
            window: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            devices: HashMap::new(),
            all: VecDeque::new(),
        }
    }

    /// The most failed guesses checked per window over all devices.
    #[cfg(test)]
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Takes a slot for an attempt by `device` at `now`, or says how long to wait: the
    /// device's own limit first; then the global limit, for a device past its typo
    /// allowance; then the ceiling, for all.
    pub fn begin(&mut self, device: Device, now: Millis) -> Result<Guess, Wait> {
        let window = self.window;
        prune(&mut self.all, window, now);
        let own = match self.devices.get_mut(&device) {
            Some(times) => {
                prune(times, window, now);
                times.len()
            }
            None => 0,
        };
        let empty = VecDeque::new();
        let times = self.devices.get(&device).unwrap_or(&empty);
        if own >= self.per_device {
            return Err(wait(window, &[(times, self.per_device)], now, false));
        }
        if self.all.len() >= self.ceiling {
            return Err(wait(window, &[(&self.all, self.ceiling)], now, true));
        }
        if own >= TYPO_ALLOWANCE && self.all.len() >= self.global {
            // Free again once the window is under the global limit, or the device back
            // within its allowance.
            let until = [(&self.all, self.global), (times, TYPO_ALLOWANCE)];
            return Err(wait(window, &until, now, true));
        }
        if !self.devices.contains_key(&device) && self.devices.len() >= MAX_TRACKED {
            self.make_room(now);
        }
        self.devices.entry(device).or_default().push_back(now);
        Ok(Guess { device, at: now })
    }

    /// Records a failed guess: its device keeps the slot, and it counts for all devices.
    pub fn failed(&mut self, attempt: Guess) {
        if self.all.len() >= MAX_GLOBAL {
            self.all.pop_front();
        }
        // In time order, for `prune`: an attempt that began before others may end after them.
        let later = self
            .all
            .iter()
            .rev()
            .take_while(|t| **t > attempt.at)
            .count();
        self.all.insert(self.all.len() - later, attempt.at);
    }

    /// Gives back the slot of an attempt that was not a failed guess.
    pub fn refund(&mut self, attempt: Guess) {
        if let Some(times) = self.devices.get_mut(&attempt.device) {
            remove_latest(times, attempt.at);
            if times.is_empty() {
                self.devices.remove(&attempt.device);
            }
        }
    }

    /// Drops devices with nothing left in the window; if that is not enough, the device
    /// whose last attempt is oldest.
    fn make_room(&mut self, now: Millis) {
        let window = self.window;
        self.devices.retain(|_, times| {
            prune(times, window, now);
            !times.is_empty()
        });
        if self.devices.len() >= MAX_TRACKED {
            let stalest = self
                .devices
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(device, _)| *device);
            if let Some(device) = stalest {
                self.devices.remove(&device);
            }
        }
    }
}

/// How long until any of `(times, limit)` holds fewer than `limit` entries (each oldest
/// first, none stale at `now`): the first moment the refused attempt could pass.
fn wait(window: u64, until: &[(&VecDeque<Millis>, usize)], now: Millis, global: bool) -> Wait {
    let ms = until
        .iter()
        .map(|(times, limit)| {
            // The entry whose leaving brings the count under the limit.
            let leaving = times.len().saturating_sub(*limit);
            let at = times.get(leaving).copied().unwrap_or(now);
            at.0.saturating_add(window).saturating_sub(now.0)
        })
        .min()
        .unwrap_or(0);
    Wait {
        seconds: ms.div_ceil(1000).max(1),
        global,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::net::Mac;

    fn dev(n: u32) -> Device {
        let [a, b, c, d] = n.to_be_bytes();
        Device::Mac(Mac([2, 0, a, b, c, d]))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// `device` guesses wrong at `at`; whether the guess was checked.
    fn guess(limiter: &mut Guesses, device: Device, at: u64) -> bool {
        match limiter.begin(device, Millis(at)) {
            Ok(attempt) => {
                limiter.failed(attempt);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn a_device_gets_its_attempts_then_waits_for_the_oldest_to_leave() {
        let mut limiter = Guesses::new(3, 100, MINUTE);
        let _ = limiter.begin(dev(2), Millis(0)).unwrap();
        let _ = limiter.begin(dev(2), Millis(10_000)).unwrap();
        let _ = limiter.begin(dev(2), Millis(20_000)).unwrap();
        assert_eq!(
            limiter.begin(dev(2), Millis(30_000)),
            Err(Wait {
                seconds: 30,
                global: false
            })
        );
        // Rounded up: never tell someone to come back too early.
        assert_eq!(
            limiter.begin(dev(2), Millis(59_500)).unwrap_err().seconds,
            1
        );
        // The first attempt has left the window; one slot is free again, then none.
        let _ = limiter.begin(dev(2), Millis(60_000)).unwrap();
        assert_eq!(
            limiter.begin(dev(2), Millis(60_001)).unwrap_err().seconds,
            10
        );
        // Other devices are not affected.
        let _ = limiter.begin(dev(3), Millis(60_001)).unwrap();
    }

    #[test]
    fn refused_attempts_do_not_extend_the_wait() {
        let mut limiter = Guesses::new(1, 100, MINUTE);
        let _ = limiter.begin(dev(2), Millis(0)).unwrap();
        for t in (1_000..59_000).step_by(1_000) {
            assert!(limiter.begin(dev(2), Millis(t)).is_err());
        }
        assert!(limiter.begin(dev(2), Millis(60_000)).is_ok());
    }

    #[test]
    fn successes_are_refunded_and_never_count() {
        let mut limiter = Guesses::new(2, 100, MINUTE);
        for t in 0..50 {
            let attempt = limiter.begin(dev(2), Millis(t)).unwrap();
            limiter.refund(attempt);
        }
        assert_eq!(limiter.devices.len(), 0);
        let _ = limiter.begin(dev(2), Millis(100)).unwrap();
        let _ = limiter.begin(dev(2), Millis(100)).unwrap();
        assert!(limiter.begin(dev(2), Millis(100)).is_err());
    }

    #[test]
    fn refunding_one_of_two_equal_timestamps_keeps_the_other() {
        let mut limiter = Guesses::new(2, 100, MINUTE);
        let first = limiter.begin(dev(2), Millis(5)).unwrap();
        let _second = limiter.begin(dev(2), Millis(5)).unwrap();
        limiter.refund(first);
        let _ = limiter.begin(dev(2), Millis(6)).unwrap();
        assert!(limiter.begin(dev(2), Millis(7)).is_err());
    }

    #[test]
    fn the_global_limit_holds_back_devices_that_keep_guessing() {
        let mut limiter = Guesses::new(5, 4, MINUTE);
        for at in [0, 1_000, 2_000] {
            assert!(guess(&mut limiter, dev(2), at));
        }
        assert!(guess(&mut limiter, dev(3), 3_000));
        // Device 2 has guessed 3 times and the window holds 4: held back until its first
        // guess leaves (then both the window and its own count are under their limits).
        assert_eq!(
            limiter.begin(dev(2), Millis(4_000)),
            Err(Wait {
                seconds: 56,
                global: true
            })
        );
        // Device 3 mistyped once, device 4 not at all: both are checked.
        assert!(guess(&mut limiter, dev(3), 4_000));
        assert!(limiter.begin(dev(4), Millis(4_000)).is_ok());
        // Device 3 now has 2 failures and the window 5: one more within the allowance,
        // then it is held back as well.
        assert!(guess(&mut limiter, dev(3), 5_000));
        assert!(!guess(&mut limiter, dev(3), 6_000));

        // A device over its own limit hears about its own wait first.
        let mut limiter = Guesses::new(1, 2, MINUTE);
        assert!(guess(&mut limiter, dev(2), 0));
        assert!(guess(&mut limiter, dev(3), 0));
        assert!(!limiter.begin(dev(2), Millis(1)).unwrap_err().global);
        assert!(limiter.begin(dev(2), Millis(60_000)).is_ok());
    }

    #[test]
    fn the_ceiling_holds_every_device() {
        // Global 2, ceiling 8: fresh devices (made-up MACs) are checked until the window
        // holds 8 failed guesses, then nobody is, until the oldest leaves.
        let mut limiter = Guesses::new(5, 2, MINUTE);
        assert_eq!(limiter.ceiling(), 2 * CEILING_FACTOR);
        let checked = (0..100)
            .filter(|n| guess(&mut limiter, dev(*n), 1_000))
            .count();
        assert_eq!(checked, 8);
        assert_eq!(
            limiter.begin(dev(500), Millis(2_000)),
            Err(Wait {
                seconds: 59,
                global: true
            })
        );
        assert!(limiter.begin(dev(500), Millis(61_000)).is_ok());
    }

    #[test]
    fn a_typo_is_never_refused_because_others_guess() {
        // 30 devices guess as fast as they are let while 12 consumers mistype once, then
        // type their code: the consumers are never refused, and the checked guesses stay
        // under the ceiling in every window.
        let mut limiter = Guesses::new(5, 60, MINUTE);
        let mut refused = 0;
        let mut checked: Vec<u64> = Vec::new();
        for t in 0..3_000_u64 {
            let at = t * 100;
            if guess(&mut limiter, dev(1_000 + (t % 30) as u32), at) {
                checked.push(at);
            }
            if t % 200 == 17 {
                let consumer = dev(100_000 + t as u32);
                match limiter.begin(consumer, Millis(at)) {
                    Ok(typo) => {
                        limiter.failed(typo);
                        checked.push(at);
                    }
                    Err(_) => refused += 1,
                }
                match limiter.begin(consumer, Millis(at + 5_000)) {
                    Ok(right) => limiter.refund(right),
                    Err(_) => refused += 1,
                }
            }
        }
        assert_eq!(refused, 0);
        for (index, start) in checked.iter().enumerate() {
            let in_window = checked[index..]
                .iter()
                .take_while(|at| **at < start + 60_000)
                .count();
            assert!(in_window <= limiter.ceiling(), "{in_window} from {start}");
        }
    }

    #[test]
    fn a_crowd_of_valid_logins_is_not_an_attack() {
        let mut limiter = Guesses::new(5, 60, MINUTE);
        let attempts: Vec<Guess> = (0..500_u32)
            .map(|n| {
                limiter
                    .begin(dev(n), Millis(5))
                    .expect("a device's first attempt")
            })
            .collect();
        for attempt in attempts {
            limiter.refund(attempt);
        }
        assert!(limiter.devices.is_empty() && limiter.all.is_empty());
    }

    #[test]
    fn zero_limits_are_taken_as_one() {
        let mut limiter = Guesses::new(0, 0, MINUTE);
        let _ = limiter.begin(dev(2), Millis(0)).unwrap();
        assert!(limiter.begin(dev(2), Millis(1)).is_err());
    }

    #[test]
    fn a_zero_window_does_not_limit() {
        let mut limiter = Guesses::new(1, 1, Duration::ZERO);
        for t in 0..10 {
            let _ = limiter.begin(dev(2), Millis(t)).unwrap();
        }
    }

    #[test]
    fn times_far_apart_do_not_overflow() {
        let mut limiter = Guesses::new(1, 1, Duration::MAX);
        let _ = limiter.begin(dev(2), Millis(u64::MAX)).unwrap();
        let wait = limiter.begin(dev(2), Millis(u64::MAX)).unwrap_err();
        assert!(wait.seconds >= 1);
        let mut limiter = Guesses::new(1, 1, MINUTE);
        let _ = limiter.begin(dev(2), Millis(0)).unwrap();
        assert!(limiter.begin(dev(2), Millis(u64::MAX)).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        // A global limit as large as the tracking cap lets every device in; the cap holds.
        let mut limiter = Guesses::new(5, u32::MAX, MINUTE);
        for n in 0..(MAX_TRACKED as u32 + 500) {
            let _ = limiter.begin(dev(n), Millis(u64::from(n))).unwrap();
            assert!(limiter.devices.len() <= MAX_TRACKED);
        }
        assert_eq!(limiter.devices.len(), MAX_TRACKED);
        // Once the window has passed, stale devices make room for new ones.
        let _ = limiter.begin(dev(u32::MAX), Millis(1_000_000)).unwrap();
        assert_eq!(limiter.devices.len(), 1);
    }

    #[test]
    fn table_of_limits() {
        // (per device, global, failed guesses by one device in a burst, expected to pass):
        // the device's own limit, else the global one past the typo allowance.
        for (per_device, global, burst, passed) in [
            (5, 60, 10, 5),
            (5, 3, 10, 3),
            (5, 1, 10, TYPO_ALLOWANCE),
            (1, 60, 3, 1),
            (60, 60, 100, 60),
        ] {
            let mut limiter = Guesses::new(per_device, global, MINUTE);
            let ok = (0..burst)
                .filter(|_| guess(&mut limiter, dev(2), 0))
                .count();
            assert_eq!(ok, passed, "{per_device} {global} {burst}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// `device` asks `after` ms after the previous step; the attempt fails, succeeds or
        /// stays pending.
        Begin {
            device: u32,
            after: u64,
            outcome: u8,
        },
        /// A pending attempt ends, as a failed guess or not.
        Resolve { pick: usize, failed: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..10_u32, 0..4_000_u64, 0..3_u8)
                .prop_map(|(device, after, outcome)| Op::Begin { device, after, outcome }),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, failed)| Op::Resolve { pick, failed }),
        ]
    }

    proptest! {
        /// Every decision is the rule, computed here from the log of attempts: refused
        /// exactly when the device has its own limit's worth (failed or pending) in the
        /// window, or the window holds the ceiling's worth of failed guesses, or the device
        /// is past its typo allowance and the window holds the global limit's worth.
        #[test]
        fn decisions_follow_the_rule(
            per_device in 1..8_u32,
            global in 1..12_u32,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            const WINDOW: u64 = 10_000;
            let mut limiter = Guesses::new(per_device, global, Duration::from_millis(WINDOW));
            // (device, at, failed?) of every attempt not refunded; pending ones aside.
            let mut log: Vec<(u32, u64, bool)> = Vec::new();
            let mut pending: Vec<(Guess, u32, u64)> = Vec::new();
            let mut now = 0_u64;
            for op in ops {
                match op {
                    Op::Begin { device, after, outcome } => {
                        now += after;
                        let live = |&&(_, at, _): &&(u32, u64, bool)| now - at < WINDOW;
                        let own = log.iter().filter(live).filter(|(d, _, _)| *d == device).count()
                            + pending.iter().filter(|(_, d, at)| *d == device && now - at < WINDOW).count();
                        let all = log.iter().filter(live).filter(|(_, _, failed)| *failed).count();
                        let refuse = own >= per_device as usize
                            || all >= limiter.ceiling()
                            || (own >= TYPO_ALLOWANCE && all >= global as usize);
                        let decision = limiter.begin(dev(device), Millis(now));
                        prop_assert_eq!(decision.is_err(), refuse, "own {} all {}", own, all);
                        if let Ok(attempt) = decision {
                            match outcome {
                                0 => {
                                    limiter.failed(attempt);
                                    log.push((device, now, true));
                                }
                                1 => limiter.refund(attempt),
                                _ => pending.push((attempt, device, now)),
                            }
                        }
                    }
                    Op::Resolve { pick, failed } if !pending.is_empty() => {
                        let (attempt, device, at) = pending.swap_remove(pick % pending.len());
                        if failed {
                            limiter.failed(attempt);
                            log.push((device, at, true));
                        } else {
                            limiter.refund(attempt);
                        }
                    }
                    Op::Resolve { .. } => {}
                }
                prop_assert!(limiter.devices.values().all(|t| t.len() <= per_device as usize));
            }
        }
    }
}
