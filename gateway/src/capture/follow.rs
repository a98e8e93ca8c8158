//! When the capture starts judging packets by a new list of allowed clients.
//!
//! The capture thread reads frames some time after the kernel forwarded (and counted) them:
//! milliseconds, or seconds on a loaded Pi. Were a new list taken as soon as the thread sees
//! it, the frames still queued in its socket from before the kernel's change would be judged
//! by it: a cut-off client's last packets missed, a new client's dropped ones counted, and
//! the two meters apart by those bytes for good. So each list carries the time the kernel
//! took it, and each frame the time the kernel stamped it on arrival (`SIOCGSTAMP`): a list
//! applies from the first frame stamped at or after its time. Pure: times are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::net::Client;

/// A list still waiting this long is applied whatever the frames' stamps say: a wall clock
/// stepped back (NTP at a Pi's boot) must not hold it back for hours.
pub const LATE: Duration = Duration::from_secs(5);

/// The allowed clients from `at` on (the wall-clock time the kernel's table took them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsFrom {
    pub clients: Vec<Client>,
    pub at: SystemTime,
}

/// The lists waiting for their time, oldest first, each with when the thread received it.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: VecDeque<(ClientsFrom, Instant)>,
}

impl Pending {
    pub fn push(&mut self, list: ClientsFrom, received: Instant) {
        self.waiting.push_back((list, received));
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The newest list due for a frame the kernel stamped `stamp` (or, with the socket idle,
    /// for the time now: every list of the past), taking it and those before it out; `None`
    /// while none is due. Lists are due in order: a later one never applies before an
    /// earlier one.
    pub fn due(&mut self, stamp: SystemTime, now: Instant) -> Option<Vec<Client>> {
        let mut newest = None;
        while let Some((list, received)) = self.waiting.front() {
            if stamp < list.at && now.duration_since(*received) < LATE {
                break;
            }
            newest = self.waiting.pop_front().map(|(list, _)| list.clients);
        }
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_client as client;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    fn list(clients: &[u8], ms: u64) -> ClientsFrom {
        ClientsFrom {
            clients: clients.iter().map(|&n| client(n)).collect(),
            at: at(ms),
        }
    }

    #[test]
    fn a_list_applies_from_the_first_frame_stamped_at_its_time() {
        let start = Instant::now();
        let mut pending = Pending::default();
        pending.push(list(&[1], 100), start);
        // Frames that arrived before the kernel's change, read after the list came.
        assert_eq!(pending.due(at(40), start), None);
        assert_eq!(pending.due(at(99), start), None);
        assert!(!pending.is_empty());
        assert_eq!(pending.due(at(100), start), Some(vec![client(1)]));
        assert!(pending.is_empty());
        assert_eq!(pending.due(at(500), start), None);
    }

    #[test]
    fn lists_apply_in_order_and_only_the_newest_due_is_kept() {
        let start = Instant::now();
        let mut pending = Pending::default();
        pending.push(list(&[1], 100), start);
        pending.push(list(&[1, 2], 200), start);
        pending.push(list(&[2], 300), start);
        assert_eq!(
            pending.due(at(250), start),
            Some(vec![client(1), client(2)])
        );
        assert_eq!(pending.due(at(299), start), None);
        assert_eq!(pending.due(at(300), start), Some(vec![client(2)]));
    }

    #[test]
    fn a_list_waiting_too_long_applies_whatever_the_stamps_say() {
        let start = Instant::now();
        let mut pending = Pending::default();
        // The wall clock stepped back an hour after the kernel's change.
        pending.push(list(&[1], 3_600_000), start);
        assert_eq!(pending.due(at(0), start + LATE / 2), None);
        assert_eq!(pending.due(at(0), start + LATE), Some(vec![client(1)]));
    }
}
