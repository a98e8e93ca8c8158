//! Neighbour spoofing cannot move an online device's address. Any device on the LAN can
//! rewrite the kernel's entry for any address: an unsolicited Neighbour Advertisement with
//! the override flag, or a gratuitous ARP, naming the address with its own MAC. Taken as
//! it is, the table would then tell the core that the online device no longer uses the
//! address (its learned addresses are cut, their connections reset), and the kernel would
//! send the device's downstream traffic to the other MAC.
//!
//! So an address an online device holds moves to another MAC only when the holder no longer
//! answers, or when the other MAC is a device of the same session (a phone with a second
//! MAC, the same code). Until then the [`Guard`] shows the core the holder with the address
//! and asks the shell to point the kernel's entry back at the holder in the PROBE state
//! ([`super::NeighbourTable::probe`]): the kernel sends its unicast solicitations to the
//! holder's MAC, which an online device answers within milliseconds (REACHABLE), while a
//! device that left does not (the entry stays in PROBE, then FAILED after about 3 s).
//!
//! Why the kernel probes rather than a raw socket of ours: the entry must point at the
//! holder again anyway, or its downstream traffic keeps going to the claimant; the kernel
//! then probes by itself, with its own retries and timing (`ucast_solicit`, `retrans_time`),
//! and its verdict shows in the table read every tick, so nothing of ours has to send,
//! capture and match answers.
//!
//! The holder failed its probe when the guard sees, after pointing the entry at it, the
//! entry without a MAC (FAILED or INCOMPLETE) or gone, or when it saw the kernel still
//! probing the holder [`SILENT_AFTER`] after the probe began (no answer to its first
//! solicitations) and another MAC claims the address afterwards (the kernel gave up and
//! whoever answers now took the entry). A claim that overrides the entry while the holder
//! has not been seen silent (an attacker repeating its advertisements) is no evidence: the
//! entry is pointed back and probed again. Each device claiming addresses it does not hold
//! is logged once per [`ALERT_EVERY`], with both MACs.
//!
//! Pure: the table, who holds what and the time come in; what the core may learn, the
//! probes to make and what to log go out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::{Entry, Reach};
use crate::net::{Client, Mac, Millis};

/// How long after a probe began an entry still probing the holder shows that the holder is
/// silent: the kernel sends its first solicitation at once and its second after 1 s; a
/// device on the LAN answers in milliseconds, a phone dozing on Wi-Fi within a beacon
/// interval or two (some hundred ms).
pub const SILENT_AFTER: Duration = Duration::from_secs(2);

/// A device claiming online devices' addresses is logged at most once in this long.
pub const ALERT_EVERY: Duration = Duration::from_secs(10 * 60);

/// The most claimant devices remembered as logged: past it, new ones are not logged until
/// old ones are forgotten, so that a flood of made-up MACs neither grows the memory nor the
/// log.
const MAX_ALERTED: usize = 1024;

/// Who holds what on the LAN now: each address of an online device with the device's MAC,
/// and each online MAC's session.
#[derive(Debug, Clone, Default)]
pub struct Online {
    held: HashMap<IpAddr, Mac>,
    session: HashMap<Mac, usize>,
}

impl Online {
    /// From every address of every online device, each with a number for its session (the
    /// same number, the same session).
    pub fn new(devices: impl IntoIterator<Item = (usize, Client)>) -> Online {
        let mut online = Online::default();
        for (session, client) in devices {
            online.held.insert(client.ip, client.mac);
            online.session.insert(client.mac, session);
        }
        online
    }

    /// [`Online::new`] cut down to what [`Guard::notified`] looks at for `entries`: the
    /// holders of their addresses and every address of those holders and of the entries'
    /// MACs, so each lookup finds what the whole would give. Notifications come in small
    /// batches, many a second while a full LAN's entries go stale, and building the whole
    /// for each cost more than the rest of an idle gateway's work.
    pub fn for_entries(devices: &[(usize, Client)], entries: &[Entry]) -> Online {
        let holders: Vec<Mac> = devices
            .iter()
            .filter(|(_, client)| entries.iter().any(|entry| entry.ip == client.ip))
            .map(|(_, client)| client.mac)
            .collect();
        Online::new(devices.iter().copied().filter(|(_, client)| {
            holders.contains(&client.mac)
                || entries
                    .iter()
                    .any(|entry| entry.ip == client.ip || entry.mac == Some(client.mac))
        }))
    }

    fn same_session(&self, a: Mac, b: Mac) -> bool {
        match (self.session.get(&a), self.session.get(&b)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// What to do after reading the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The table as the core may learn from it: an online address another MAC claims stays
    /// its holder's until the holder failed its probe.
    pub seen: Vec<Client>,
    /// Point the kernel's entry for each address back at its holder and probe it.
    pub probes: Vec<Client>,
    pub events: Vec<Event>,
}

/// Something to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A device claimed an address an online device of another session holds (logged once
    /// per claimant per [`ALERT_EVERY`]).
    Claimed {
        ip: IpAddr,
        holder: Mac,
        claimant: Mac,
    },
    /// The holder did not answer its probe: the address goes to whichever MAC the table
    /// names for it (`None`: none yet).
    Released {
        ip: IpAddr,
        holder: Mac,
        claimant: Option<Mac>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The entry was pointed back at the holder at `since`; `silent`: it was then seen still
    /// probing the holder [`SILENT_AFTER`] later.
    Probing { since: Millis, silent: bool },
    /// The holder failed its probe: the table is believed for this address while it still
    /// holds it in the core (a login address stays its device's until another logs in
    /// with it, or the device idles out).
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contest {
    holder: Mac,
    phase: Phase,
}

/// The guard's memory between two readings of the table (see the module documentation).
/// It holds at most one contest per online address, and at most [`MAX_ALERTED`] claimants.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    contests: HashMap<IpAddr, Contest>,
    /// When each claimant was last logged.
    alerted: HashMap<Mac, Millis>,
}

impl Guard {
    /// One reading of the LAN's neighbour table (`entries`, at `now`) against who holds what
    /// (`online`).
    pub fn observe(&mut self, entries: &[Entry], online: &Online, now: Millis) -> Verdict {
        let mut verdict = Verdict::default();
        self.alerted.retain(|_, at| at.until(now) < ALERT_EVERY);
        // An address its holder no longer holds (logged out, moved by a login) is no longer
        // contested.
        self.contests
            .retain(|ip, contest| online.held.get(ip) == Some(&contest.holder));
        let mut present = Vec::with_capacity(entries.len());
        for entry in entries {
            present.push(entry.ip);
            let Some(&holder) = online.held.get(&entry.ip) else {
                verdict.seen.extend(entry.client());
                continue;
            };
            let contest = self.contests.get(&entry.ip).copied();
            match entry.mac {
                Some(mac) if mac == holder => {
                    match contest.map(|c| c.phase) {
                        // Still no answer: silent once that has lasted.
                        Some(Phase::Probing { since, .. }) if entry.reach == Reach::Probing => {
                            let silent = since.until(now) >= SILENT_AFTER;
                            self.contests.insert(
                                entry.ip,
                                Contest {
                                    holder,
                                    phase: Phase::Probing { since, silent },
                                },
                            );
                        }
                        // It answered (or spoke up itself): the claim is turned down.
                        Some(_) => {
                            self.contests.remove(&entry.ip);
                        }
                        None => {}
                    }
                    verdict.seen.extend(entry.client());
                }
                None => match contest.map(|c| c.phase) {
                    // The kernel gave up on the holder.
                    Some(Phase::Probing { .. }) => {
                        self.release(entry.ip, holder, None, &mut verdict);
                    }
                    Some(Phase::Released) | None => {}
                },
                Some(claimant) if online.same_session(claimant, holder) => {
                    self.contests.remove(&entry.ip);
                    verdict.seen.extend(entry.client());
                }
                Some(claimant) => match contest.map(|c| c.phase) {
                    Some(Phase::Released) => verdict.seen.extend(entry.client()),
                    Some(Phase::Probing { silent: true, .. }) => {
                        self.release(entry.ip, holder, Some(claimant), &mut verdict);
                        verdict.seen.extend(entry.client());
                    }
                    Some(Phase::Probing { silent: false, .. }) | None => {
                        self.turn_down(entry.ip, holder, claimant, now, &mut verdict);
                        verdict.seen.push(Client {
                            mac: holder,
                            ip: entry.ip,
                        });
                    }
                },
            }
        }
        // An entry pointed back at its holder is only ever removed once it failed.
        let gone: Vec<(IpAddr, Mac)> = self
            .contests
            .iter()
            .filter(|(ip, contest)| {
                matches!(contest.phase, Phase::Probing { .. }) && !present.contains(ip)
            })
            .map(|(ip, contest)| (*ip, contest.holder))
            .collect();
        for (ip, holder) in gone {
            self.release(ip, holder, None, &mut verdict);
        }
        verdict
    }

    /// Entries the kernel says changed since the last reading (its notifications): a claim
    /// on an online address is turned down at once, not at the next reading, so that a
    /// device repeating its advertisements diverts the holder's downstream traffic for
    /// milliseconds at a time rather than for most of each second. Only claims are handled
    /// here: whether the holder answered or failed is for the readings ([`Guard::observe`])
    /// to tell, so a contest whose holder was found silent, or released, is left to them.
    pub fn notified(&mut self, entries: &[Entry], online: &Online, now: Millis) -> Verdict {
        let mut verdict = Verdict::default();
        for entry in entries {
            let (Some(&holder), Some(claimant)) = (online.held.get(&entry.ip), entry.mac) else {
                continue;
            };
            if claimant == holder || online.same_session(claimant, holder) {
                continue;
            }
            let decided = self.contests.get(&entry.ip).is_some_and(|contest| {
                contest.holder == holder
                    && matches!(
                        contest.phase,
                        Phase::Released | Phase::Probing { silent: true, .. }
                    )
            });
            if !decided {
                self.turn_down(entry.ip, holder, claimant, now, &mut verdict);
            }
        }
        verdict
    }

    /// Whether `holder`'s address `ip` is contested and its probe not decided yet: the
    /// table's MAC for it may then be either device's.
    pub fn probing(&self, ip: IpAddr, holder: Mac) -> bool {
        self.contests.get(&ip).is_some_and(|contest| {
            contest.holder == holder && matches!(contest.phase, Phase::Probing { .. })
        })
    }

    /// `claimant` claims `ip`, which `holder` holds: the entry is pointed back at the holder
    /// and probed (from now), the claimant logged.
    fn turn_down(
        &mut self,
        ip: IpAddr,
        holder: Mac,
        claimant: Mac,
        now: Millis,
        verdict: &mut Verdict,
    ) {
        self.alert(ip, holder, claimant, now, verdict);
        self.contests.insert(
            ip,
            Contest {
                holder,
                phase: Phase::Probing {
                    since: now,
                    silent: false,
                },
            },
        );
        verdict.probes.push(Client { mac: holder, ip });
    }

    /// A device (`claimant`) logs in with an address that `holder`, a device of another
    /// session, holds online (a login binds the address to the claimant's MAC at once, so
    /// it follows the same rule): let through once the holder failed its probe; until then
    /// refused, with the claim contested like one seen in the table (the holder probed
    /// unless a probe is under way, the claimant logged). The device tries again.
    pub fn login(&mut self, claimant: Client, holder: Mac, now: Millis) -> Result<(), Verdict> {
        let mut verdict = Verdict::default();
        match self.contests.get(&claimant.ip) {
            Some(contest) if contest.holder == holder && contest.phase == Phase::Released => {
                return Ok(());
            }
            Some(contest) if contest.holder == holder => {}
            _ => {
                self.contests.insert(
                    claimant.ip,
                    Contest {
                        holder,
                        phase: Phase::Probing {
                            since: now,
                            silent: false,
                        },
                    },
                );
                verdict.probes.push(Client {
                    mac: holder,
                    ip: claimant.ip,
                });
            }
        }
        self.alert(claimant.ip, holder, claimant.mac, now, &mut verdict);
        Err(verdict)
    }

    fn release(&mut self, ip: IpAddr, holder: Mac, claimant: Option<Mac>, verdict: &mut Verdict) {
        self.contests.insert(
            ip,
            Contest {
                holder,
                phase: Phase::Released,
            },
        );
        verdict.events.push(Event::Released {
            ip,
            holder,
            claimant,
        });
    }

    fn alert(
        &mut self,
        ip: IpAddr,
        holder: Mac,
        claimant: Mac,
        now: Millis,
        verdict: &mut Verdict,
    ) {
        if self.alerted.contains_key(&claimant) || self.alerted.len() >= MAX_ALERTED {
            return;
        }
        self.alerted.insert(claimant, now);
        verdict.events.push(Event::Claimed {
            ip,
            holder,
            claimant,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const T0: Millis = Millis(1_700_000_000_000);

    fn at(ms: u64) -> Millis {
        Millis(T0.0 + ms)
    }

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn ip(n: u8) -> IpAddr {
        if n % 2 == 0 {
            IpAddr::V4(std::net::Ipv4Addr::new(10, 66, 0, n))
        } else {
            IpAddr::V6(format!("fd00:66::{n:x}").parse().unwrap())
        }
    }

    fn client(m: u8, i: u8) -> Client {
        Client {
            mac: mac(m),
            ip: ip(i),
        }
    }

    fn entry(m: u8, i: u8, reach: Reach) -> Entry {
        Entry {
            ip: ip(i),
            mac: Some(mac(m)),
            reach,
        }
    }

    fn unanswered(i: u8) -> Entry {
        Entry {
            ip: ip(i),
            mac: None,
            reach: Reach::Unanswered,
        }
    }

    /// Device 1 (session 0) holds addresses 1 and 2; device 3 is in the same session;
    /// device 4 is online in session 1 with address 4.
    fn online() -> Online {
        Online::new([
            (0, client(1, 1)),
            (0, client(1, 2)),
            (0, client(3, 3)),
            (1, client(4, 4)),
        ])
    }

    use Reach::{Answered, Probing};

    #[test]
    fn a_spoofed_claim_is_turned_down_and_the_holder_probed_and_logged_once() {
        let mut guard = Guard::default();
        let online = online();
        // Device 9 (not logged in) claims address 1 (and, later, 2).
        let first = guard.observe(
            &[entry(9, 1, Answered), entry(1, 2, Answered)],
            &online,
            at(0),
        );
        assert_eq!(
            first.seen,
            [client(1, 1), client(1, 2)],
            "the core still sees the holder"
        );
        assert_eq!(first.probes, [client(1, 1)]);
        assert_eq!(
            first.events,
            [Event::Claimed {
                ip: ip(1),
                holder: mac(1),
                claimant: mac(9)
            }]
        );
        // The holder answers the probe: the contest ends.
        let answered = guard.observe(&[entry(1, 1, Answered)], &online, at(1_000));
        assert_eq!(
            answered,
            Verdict {
                seen: vec![client(1, 1)],
                ..Verdict::default()
            }
        );
        // The claimant tries again, on both addresses: probed again, not logged again.
        let again = guard.observe(
            &[entry(9, 1, Answered), entry(9, 2, Answered)],
            &online,
            at(2_000),
        );
        assert_eq!(again.seen, [client(1, 1), client(1, 2)]);
        assert_eq!(again.probes, [client(1, 1), client(1, 2)]);
        assert!(again.events.is_empty(), "{:?}", again.events);
        // Past the alert interval it is logged again.
        let later = guard.observe(
            &[entry(9, 1, Answered), entry(1, 2, Answered)],
            &online,
            at(2_000).plus(ALERT_EVERY),
        );
        assert_eq!(later.events.len(), 1, "{later:?}");
    }

    #[test]
    fn a_claim_repeated_while_the_holder_answers_never_moves_the_address() {
        let mut guard = Guard::default();
        let online = online();
        // The attacker overrides the entry between every two readings, for a minute: the
        // holder answers each probe in between, so it is never seen silent.
        for second in 0..60 {
            let verdict = guard.observe(&[entry(9, 1, Answered)], &online, at(second * 1_000));
            assert_eq!(verdict.seen, [client(1, 1)]);
            assert_eq!(verdict.probes, [client(1, 1)]);
            assert!(
                verdict
                    .events
                    .iter()
                    .all(|e| matches!(e, Event::Claimed { .. })),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_holder_that_left_loses_the_address_after_its_probe_fails() {
        let online = online();
        // The kernel's course for a holder that is gone: PROBE for 3 s, then FAILED, then
        // the new device answers the next resolution.
        let mut guard = Guard::default();
        assert_eq!(
            guard
                .observe(&[entry(9, 1, Answered)], &online, at(0))
                .probes,
            [client(1, 1)]
        );
        for ms in [1_000, 2_000, 3_000] {
            let verdict = guard.observe(&[entry(1, 1, Probing)], &online, at(ms));
            assert_eq!(
                verdict,
                Verdict {
                    seen: vec![client(1, 1)],
                    ..Verdict::default()
                }
            );
        }
        let failed = guard.observe(&[unanswered(1)], &online, at(4_000));
        assert!(failed.seen.is_empty());
        assert_eq!(
            failed.events,
            [Event::Released {
                ip: ip(1),
                holder: mac(1),
                claimant: None
            }]
        );
        let moved = guard.observe(&[entry(9, 1, Answered)], &online, at(5_000));
        assert_eq!(
            moved,
            Verdict {
                seen: vec![client(9, 1)],
                ..Verdict::default()
            }
        );

        // The kernel's FAILED missed between two readings: still probing 2 s on, then the
        // new device's MAC.
        let mut guard = Guard::default();
        guard.observe(&[entry(9, 1, Answered)], &online, at(0));
        guard.observe(&[entry(1, 1, Probing)], &online, at(2_000));
        let moved = guard.observe(&[entry(9, 1, Answered)], &online, at(4_000));
        assert_eq!(moved.seen, [client(9, 1)]);
        assert!(moved.probes.is_empty());
        assert_eq!(moved.events.len(), 1);

        // The entry gone altogether.
        let mut guard = Guard::default();
        guard.observe(&[entry(9, 1, Answered)], &online, at(0));
        let gone = guard.observe(&[], &online, at(4_000));
        assert_eq!(gone.events.len(), 1, "{gone:?}");
    }

    #[test]
    fn a_device_of_the_same_session_or_a_free_address_is_no_claim() {
        let mut guard = Guard::default();
        let online = online();
        let verdict = guard.observe(
            &[entry(3, 1, Answered), entry(9, 7, Answered), unanswered(8)],
            &online,
            at(0),
        );
        assert_eq!(
            verdict,
            Verdict {
                seen: vec![client(3, 1), client(9, 7)],
                ..Verdict::default()
            }
        );
        // Device 4 is online, but in another session: a claim like any other.
        let verdict = guard.observe(&[entry(4, 2, Answered)], &online, at(0));
        assert_eq!(verdict.seen, [client(1, 2)]);
    }

    #[test]
    fn a_contest_ends_with_the_holding() {
        let mut guard = Guard::default();
        guard.observe(&[entry(9, 1, Answered)], &online(), at(0));
        // Device 1 logged out meanwhile: its address is free, the table believed.
        let gone = Online::new([(0, client(3, 3))]);
        let verdict = guard.observe(&[entry(9, 1, Answered)], &gone, at(1_000));
        assert_eq!(
            verdict,
            Verdict {
                seen: vec![client(9, 1)],
                ..Verdict::default()
            }
        );
        assert!(guard.contests.is_empty());
    }

    #[test]
    fn made_up_claimants_are_logged_up_to_a_bound() {
        let mut guard = Guard::default();
        let online = Online::new((0..=255).map(|n| (0, client(1, n))));
        let mut logged = 0;
        for round in 0..8u64 {
            let entries: Vec<Entry> = (0..=255u8)
                .map(|n| Entry {
                    ip: ip(n),
                    mac: Some(Mac([6, round as u8, 0, 0, 0, n])),
                    reach: Answered,
                })
                .collect();
            logged += guard.observe(&entries, &online, at(round)).events.len();
        }
        assert_eq!(logged, MAX_ALERTED);
        assert!(guard.contests.len() <= 256);
    }

    #[test]
    fn a_login_with_a_held_address_waits_for_the_holders_failed_probe() {
        let online = online();
        let mut guard = Guard::default();
        // Device 9 logs in with device 1's address: refused, device 1 probed, 9 logged.
        let refused = guard.login(client(9, 1), mac(1), at(0)).unwrap_err();
        assert_eq!(refused.probes, [client(1, 1)]);
        assert_eq!(refused.events.len(), 1);
        // Again while the probe runs: refused, no second probe, no second log line.
        let again = guard.login(client(9, 1), mac(1), at(500)).unwrap_err();
        assert_eq!(again, Verdict::default());
        assert!(guard.probing(ip(1), mac(1)));
        assert!(!guard.probing(ip(2), mac(1)));
        // Device 1 answers: the next login starts a new probe.
        guard.observe(&[entry(1, 1, Answered)], &online, at(1_000));
        let probed = guard.login(client(9, 1), mac(1), at(1_500)).unwrap_err();
        assert_eq!(probed.probes, [client(1, 1)]);
        // Device 1 stays silent: the kernel probes it in vain, then gives up.
        guard.observe(&[entry(1, 1, Probing)], &online, at(3_600));
        let failed = guard.observe(&[unanswered(1)], &online, at(4_600));
        assert_eq!(failed.events.len(), 1, "{failed:?}");
        assert!(!guard.probing(ip(1), mac(1)), "decided");
        assert_eq!(guard.login(client(9, 1), mac(1), at(5_000)), Ok(()));
    }

    #[test]
    fn a_claim_notified_is_turned_down_at_once_but_only_readings_release() {
        let online = online();
        let mut guard = Guard::default();
        // Between two readings the kernel tells of the claimant's advertisements, each one.
        for ms in [100, 150, 200] {
            let verdict = guard.notified(&[entry(9, 1, Answered)], &online, at(ms));
            assert_eq!(verdict.probes, [client(1, 1)]);
            assert!(verdict.seen.is_empty());
        }
        // The holder's own entries, the same session's device and free addresses: nothing.
        let quiet = guard.notified(
            &[
                entry(1, 1, Answered),
                entry(3, 2, Answered),
                entry(9, 7, Answered),
                unanswered(1),
            ],
            &online,
            at(300),
        );
        assert_eq!(quiet, Verdict::default());
        // A holder found silent by the readings is theirs to release: a claim notified then
        // is not probed again (which would start its silence over).
        guard.observe(&[entry(1, 1, Probing)], &online, at(2_300));
        let left = guard.notified(&[entry(9, 1, Answered)], &online, at(2_400));
        assert_eq!(left, Verdict::default());
        let released = guard.observe(&[entry(9, 1, Answered)], &online, at(3_300));
        assert_eq!(released.seen, [client(9, 1)]);
    }

    /// What the table may show for address `i` at one reading.
    #[derive(Debug, Clone, Copy)]
    enum Shown {
        Absent,
        Unanswered,
        Holder(Reach),
        /// Another MAC (0: the same session's device 3; else a stranger).
        Other(u8),
    }

    fn shown() -> impl Strategy<Value = Shown> {
        prop_oneof![
            Just(Shown::Absent),
            Just(Shown::Unanswered),
            Just(Shown::Holder(Answered)),
            Just(Shown::Holder(Probing)),
            (0u8..4).prop_map(Shown::Other),
        ]
    }

    fn entries_of(step: &[Shown]) -> Vec<Entry> {
        step.iter()
            .enumerate()
            .filter_map(|(i, shown)| {
                let i = u8::try_from(i).unwrap() + 1;
                match *shown {
                    Shown::Absent => None,
                    Shown::Unanswered => Some(unanswered(i)),
                    Shown::Holder(reach) => Some(entry(1, i, reach)),
                    Shown::Other(0) => Some(entry(3, i, Answered)),
                    Shown::Other(n) => Some(entry(10 + n, i, Answered)),
                }
            })
            .collect()
    }

    proptest! {
        /// An online address never shows another MAC to the core (but the same session's),
        /// nor lets another session's device log in with it, without a failed probe of its
        /// holder: a probe was made, and after it the entry was seen without a MAC, gone,
        /// or still probing the holder SILENT_AFTER later.
        #[test]
        fn an_online_address_never_moves_without_a_failed_probe(
            steps in prop::collection::vec(
                (
                    0u64..2_500,
                    prop::collection::vec(shown(), 2),
                    prop::option::of((1u8..3, 1u8..4)),
                    prop::option::of((1u8..3, 0u8..4)),
                ),
                1..60,
            )
        ) {
            let online = online();
            let mut guard = Guard::default();
            let mut now = T0;
            let mut probed: HashMap<IpAddr, Millis> = HashMap::new();
            let mut failed: HashSet<IpAddr> = HashSet::new();
            for (advance, step, login, notified) in steps {
                now = now.plus(Duration::from_millis(advance));
                for (i, shown) in step.iter().enumerate() {
                    let ip = ip(u8::try_from(i).unwrap() + 1);
                    let Some(&since) = probed.get(&ip) else { continue };
                    let silent = matches!(shown, Shown::Holder(Probing))
                        && since.until(now) >= SILENT_AFTER;
                    if matches!(shown, Shown::Absent | Shown::Unanswered) || silent {
                        failed.insert(ip);
                    }
                }
                let verdict = guard.observe(&entries_of(&step), &online, now);
                for seen in &verdict.seen {
                    if online.held.get(&seen.ip).is_some_and(|&h| h != seen.mac) {
                        prop_assert!(seen.mac == mac(3) || failed.contains(&seen.ip),
                            "{seen} shown with no failed probe: {verdict:?}");
                    }
                }
                for probe in &verdict.probes {
                    prop_assert_eq!(Some(&probe.mac), online.held.get(&probe.ip));
                    probed.insert(probe.ip, now);
                    failed.remove(&probe.ip);
                }
                // At most one reading of each address reaches the core.
                let ips: HashSet<IpAddr> = verdict.seen.iter().map(|c| c.ip).collect();
                prop_assert_eq!(ips.len(), verdict.seen.len());
                // A claim of address i notified between two readings (0: the same session's).
                if let Some((i, n)) = notified {
                    let m = if n == 0 { 3 } else { 10 + n };
                    let verdict = guard.notified(&[entry(m, i, Answered)], &online, now);
                    prop_assert!(verdict.seen.is_empty());
                    for probe in &verdict.probes {
                        prop_assert_eq!(*probe, client(1, i));
                        probed.insert(probe.ip, now);
                        failed.remove(&probe.ip);
                    }
                }
                // A stranger logs in with address i between two readings.
                if let Some((i, n)) = login {
                    match guard.login(client(10 + n, i), mac(1), now) {
                        Ok(()) => prop_assert!(failed.contains(&ip(i)), "login let through"),
                        Err(refused) => {
                            for probe in &refused.probes {
                                prop_assert_eq!(*probe, client(1, i));
                                probed.insert(probe.ip, now);
                                failed.remove(&probe.ip);
                            }
                        }
                    }
                }
            }
        }

        /// Notifications judged against the devices that concern them only come out as
        /// against all of them: the same probes, log lines and contests, whoever holds what
        /// (a MAC even in two sessions).
        #[test]
        fn notified_against_the_concerned_devices_as_against_all(
            devices in prop::collection::vec((0usize..3, 1u8..6, 1u8..8), 0..12),
            batches in prop::collection::vec(
                (0u64..2_500, prop::collection::vec((1u8..8, 1u8..8), 1..4)),
                1..12,
            ),
        ) {
            let devices: Vec<(usize, Client)> =
                devices.into_iter().map(|(s, m, i)| (s, client(m, i))).collect();
            let all = Online::new(devices.iter().copied());
            let mut whole = Guard::default();
            let mut cut = Guard::default();
            let mut now = T0;
            for (advance, batch) in batches {
                now = now.plus(Duration::from_millis(advance));
                let entries: Vec<Entry> =
                    batch.into_iter().map(|(m, i)| entry(m, i, Answered)).collect();
                let concerned = Online::for_entries(&devices, &entries);
                prop_assert_eq!(
                    whole.notified(&entries, &all, now),
                    cut.notified(&entries, &concerned, now)
                );
            }
        }

        /// A holder that answers every probe (the kernel's course for a device online:
        /// REACHABLE before the next reading, unless a claimant overrides it again) keeps
        /// its address for good, and each claimant is logged once.
        #[test]
        fn a_holder_that_answers_keeps_its_address(
            steps in prop::collection::vec(
                (0u64..2_500, prop::collection::vec(prop_oneof![
                    Just(Shown::Holder(Answered)),
                    (1u8..4).prop_map(Shown::Other),
                ], 2)),
                1..60,
            )
        ) {
            let online = online();
            let mut guard = Guard::default();
            let mut now = T0;
            let mut logged: HashMap<Mac, usize> = HashMap::new();
            for (advance, step) in steps {
                now = now.plus(Duration::from_millis(advance));
                let verdict = guard.observe(&entries_of(&step), &online, now);
                for seen in &verdict.seen {
                    prop_assert_eq!(seen.mac, mac(1));
                }
                for event in &verdict.events {
                    match event {
                        Event::Claimed { claimant, holder, .. } => {
                            prop_assert_eq!(*holder, mac(1));
                            *logged.entry(*claimant).or_default() += 1;
                        }
                        Event::Released { .. } => prop_assert!(false, "released: {verdict:?}"),
                    }
                }
            }
            // 60 readings of at most 2.5 s are within one alert interval.
            prop_assert!(logged.values().all(|&n| n == 1), "{logged:?}");
        }
    }
}
