//! Kernel counter readings turned into usage: the arithmetic between two readings of the
//! per-client byte counters, which only grow, except when the kernel starts one again at
//! zero (the client's element added again, the table restored after a flush). Pure code,
//! property-tested; the daemon reads the kernel and hands the readings here.
//!
//! A restart is told by a counter below its baseline. One that has already passed its
//! baseline by the next reading would pass for growth, losing the baseline's bytes; the
//! daemon therefore never lets the kernel restart a counter unseen: it re-adds elements
//! itself ([`Baselines::started`]) and reads the counters afresh after restoring the table.

use std::collections::HashMap;

use crate::core::Usage;
use crate::firewall::ClientCounters;
use crate::net::Client;

/// The bytes of a kernel listing, per client.
pub fn reading(counters: &[ClientCounters]) -> Vec<(Client, Usage)> {
    counters
        .iter()
        .map(|c| {
            let counted = Usage {
                up: c.up_bytes,
                down: c.down_bytes,
            };
            (c.client, counted)
        })
        .collect()
}

/// Each client's counters at the last reading (or zero since it was let through): what the
/// next reading is compared with. The clients here are those the kernel holds, as far as
/// the daemon knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baselines {
    last: HashMap<Client, Usage>,
}

impl Baselines {
    /// Baselines as saved with the session state.
    pub fn from_saved(saved: impl IntoIterator<Item = (Client, Usage)>) -> Self {
        Baselines {
            last: saved.into_iter().collect(),
        }
    }

    /// What to save with the session state, sorted by client.
    pub fn to_saved(&self) -> Vec<(Client, Usage)> {
        let mut saved: Vec<(Client, Usage)> = self.last.iter().map(|(c, u)| (*c, *u)).collect();
        saved.sort_by_key(|(client, _)| *client);
        saved
    }

    /// A reading of every client's counters: what each client used since the last reading
    /// (only the clients that used something, sorted by client). A counter below its
    /// baseline was started again and counts from zero. From now on the reading is the
    /// baseline; a client missing from it is gone from the kernel.
    pub fn read(&mut self, reading: &[(Client, Usage)]) -> Vec<(Client, Usage)> {
        let mut deltas = Vec::new();
        let mut next = HashMap::with_capacity(reading.len());
        for &(client, counted) in reading {
            let before = self.last.get(&client).copied().unwrap_or_default();
            let restarted = counted.up < before.up || counted.down < before.down;
            let delta = if restarted {
                counted
            } else {
                Usage {
                    up: counted.up - before.up,
                    down: counted.down - before.down,
                }
            };
            if delta.total() > 0 {
                deltas.push((client, delta));
            }
            next.insert(client, counted);
        }
        self.last = next;
        deltas.sort_by_key(|(client, _)| *client);
        deltas
    }

    /// Takes a reading as it is, counting nothing: what the counters hold is accounted for
    /// elsewhere (the kernel's session quotas, when the saved state is lost).
    pub fn adopt(&mut self, reading: &[(Client, Usage)]) {
        self.last = reading.iter().copied().collect();
    }

    /// The client was let through: its counters start at zero.
    pub fn started(&mut self, client: Client) {
        self.last.insert(client, Usage::default());
    }

    /// The client is gone from the kernel, its counters with it.
    pub fn removed(&mut self, client: &Client) {
        self.last.remove(client);
    }

    /// Whether the kernel holds the client, as far as the last reading and changes since
    /// tell.
    pub fn contains(&self, client: &Client) -> bool {
        self.last.contains_key(client)
    }

    pub fn clients(&self) -> impl Iterator<Item = &Client> {
        self.last.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_client as client;
    use proptest::prelude::*;

    fn usage(up: u64, down: u64) -> Usage {
        Usage { up, down }
    }

    #[test]
    fn growth_is_counted_once_and_a_restart_from_zero() {
        let mut baselines = Baselines::default();
        baselines.started(client(2));
        assert_eq!(
            baselines.read(&[(client(2), usage(100, 900))]),
            [(client(2), usage(100, 900))]
        );
        assert_eq!(baselines.read(&[(client(2), usage(100, 900))]), []);
        // Started again behind our back: 30 + 40 since.
        assert_eq!(
            baselines.read(&[(client(2), usage(30, 40))]),
            [(client(2), usage(30, 40))]
        );
        // Gone from the kernel: no longer held, and back from zero.
        assert_eq!(baselines.read(&[]), []);
        assert!(!baselines.contains(&client(2)));
        assert_eq!(
            baselines.read(&[(client(2), usage(5, 0))]),
            [(client(2), usage(5, 0))]
        );
    }

    #[test]
    fn adopted_readings_count_nothing_and_saved_ones_come_back() {
        let mut baselines = Baselines::default();
        baselines.adopt(&[(client(3), usage(7, 8)), (client(2), usage(1, 2))]);
        assert_eq!(baselines.read(&[(client(2), usage(1, 2))]), []);
        baselines.adopt(&[(client(3), usage(7, 8)), (client(2), usage(1, 2))]);
        let saved = baselines.to_saved();
        assert_eq!(saved[0].0, client(2), "sorted");
        assert_eq!(Baselines::from_saved(saved), baselines);
    }

    /// One client's counters over time: each step either grows the counters or restarts
    /// them at a (small) value, as the kernel does when the element is added again.
    fn steps() -> impl Strategy<Value = Vec<(bool, u64, u64)>> {
        proptest::collection::vec((any::<bool>(), 0..1_000_000u64, 0..1_000_000u64), 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The deltas add up to every byte the counters counted: the growth between
        /// readings, plus each restarted counter's value at its first reading.
        #[test]
        fn deltas_add_up_to_what_the_counters_counted(steps in steps()) {
            let mut baselines = Baselines::default();
            baselines.started(client(2));
            let (mut up, mut down) = (0u64, 0u64);
            let (mut counted, mut summed) = (0u64, 0u64);
            for (restart, more_up, more_down) in steps {
                if restart && (more_up < up || more_down < down) {
                    // A restart the arithmetic can tell: some counter went back.
                    (up, down) = (more_up, more_down);
                    counted += up + down;
                } else {
                    up += more_up;
                    down += more_down;
                    counted += more_up + more_down;
                }
                for (_, delta) in baselines.read(&[(client(2), usage(up, down))]) {
                    summed += delta.total();
                }
            }
            prop_assert_eq!(summed, counted);
        }

        /// Whatever the readings, a delta never exceeds the counter it came from, and only
        /// clients in the reading get one.
        #[test]
        fn a_delta_never_exceeds_its_counter(
            readings in proptest::collection::vec(
                proptest::collection::vec((0u8..4, 0..1u64 << 40, 0..1u64 << 40), 0..5),
                1..20,
            )
        ) {
            let mut baselines = Baselines::default();
            for reading in readings {
                let mut reading: Vec<(Client, Usage)> = reading
                    .into_iter()
                    .map(|(n, up, down)| (client(n), usage(up, down)))
                    .collect();
                reading.sort_by_key(|(c, _)| *c);
                reading.dedup_by_key(|(c, _)| *c);
                for (c, delta) in baselines.read(&reading) {
                    let counter = reading.iter().find(|(r, _)| *r == c).map(|(_, u)| *u);
                    prop_assert!(counter.is_some());
                    let counter = counter.unwrap_or_default();
                    prop_assert!(delta.up <= counter.up && delta.down <= counter.down);
                }
            }
        }
    }
}
