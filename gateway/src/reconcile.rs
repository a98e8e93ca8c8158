//! The enforcer's plan: what must change in the kernel for it to hold exactly what the
//! sessions allow. Pure: the daemon keeps a [`Kernel`] (what it knows the kernel holds, in
//! step with every counter reading and every change it applies) and asks it for the [`Plan`]
//! that gets the kernel from there to what the core wants ([`Desired`]), then applies it.
//!
//! One rule is kept here, not by the callers: taking an element out of the kernel (a removal,
//! or a re-add, which restarts the element's counter at zero) drops whatever its counter
//! holds, so a plan changes an element the kernel already holds only on a counter reading
//! made at the same instant (the daemon's clock, in milliseconds, so within the command being
//! handled): the element's bytes are then booked. Without one, a plan adds only clients the
//! kernel does not hold yet and asks for a reading ([`Plan::needs_reading`]) for the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use edgeshare_shared::code::AccessCode;

use crate::core::{Usage, WantedQuota};
use crate::counters::Baselines;
use crate::net::{Client, Millis};

/// What the daemon knows the kernel holds: the clients it lets through with their counters at
/// the last reading, the deadline each element was given (when this run gave it), and the
/// clients of each session quota it set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    counters: Baselines,
    /// Deadlines this run gave elements; a held client without one was restored after a
    /// restart or found by a reading, and keeps the deadline it has.
    deadlines: HashMap<Client, Millis>,
    quotas: HashMap<AccessCode, Vec<Client>>,
    /// When the counters were last read.
    read_at: Option<Millis>,
    /// The revision of the desired state (see [`Kernel::in_step`]) the last plan was made
    /// for, if that plan changed nothing and nothing the daemon knows of the kernel changed
    /// since.
    in_step: Option<u64>,
}

/// What the core wants the kernel to hold: each allowed client with its session's deadline,
/// and each session's quota with its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub allowed: BTreeMap<Client, Millis>,
    pub quotas: Vec<WantedQuota>,
}

/// The kernel changes that make it hold what is desired, in the order they are applied:
/// removals first, then additions, then the session quotas (whose maps name the clients).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Clients to take out, their counters read at this instant: the sessions no longer
    /// allow them (a client whose deadline moves is added again instead), so each is cut
    /// off, and its TCP connections are reset once the plan's quotas are set.
    pub remove: Vec<Client>,
    /// Clients to let through (again) until their session's deadline. A client the kernel
    /// holds is added again only to move its deadline, on a reading at this instant (its
    /// counter restarts at zero).
    pub add: Vec<(Client, Millis)>,
    /// Session quotas to set (their devices changed).
    pub set_quotas: Vec<WantedQuota>,
    /// Session quotas to clear (the session has no device left, or ended).
    pub clear_quotas: Vec<AccessCode>,
    /// Some change to a held client waits for a counter reading.
    pub needs_reading: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.add.is_empty()
            && self.set_quotas.is_empty()
            && self.clear_quotas.is_empty()
    }
}

impl Kernel {
    /// The kernel as a saved state left it: the clients of `counters` are held, with
    /// deadlines this run did not set; no quota is known (the daemon clears the stale ones
    /// it finds).
    pub fn restored(counters: Baselines) -> Self {
        Kernel {
            counters,
            ..Kernel::default()
        }
    }

    pub fn holds(&self, client: &Client) -> bool {
        self.counters.contains(client)
    }

    /// The counters as of the last reading, to save with the sessions.
    pub fn counters(&self) -> &Baselines {
        &self.counters
    }

    pub fn has_quota(&self, code: &AccessCode) -> bool {
        self.quotas.contains_key(code)
    }

    /// The codes whose session quota is set.
    pub fn quota_codes(&self) -> impl Iterator<Item = &AccessCode> {
        self.quotas.keys()
    }

    /// A reading of every element's counters at `now`: what each client used since the last
    /// one (see [`Baselines::read`]). The kernel holds exactly the clients listed.
    pub fn read(&mut self, reading: &[(Client, Usage)], now: Millis) -> Vec<(Client, Usage)> {
        // The same clients as before (a reading lists each once): as many, each one held.
        let same_clients = reading.len() == self.counters.clients().count()
            && reading
                .iter()
                .all(|(client, _)| self.counters.contains(client));
        if !same_clients {
            self.in_step = None;
        }
        let deltas = self.counters.read(reading);
        self.deadlines
            .retain(|client, _| self.counters.contains(client));
        self.read_at = Some(now);
        deltas
    }

    /// Takes a reading as it is, counting nothing (see [`Baselines::adopt`]).
    pub fn adopt(&mut self, reading: &[(Client, Usage)], now: Millis) {
        self.in_step = None;
        self.counters.adopt(reading);
        self.deadlines
            .retain(|client, _| self.counters.contains(client));
        self.read_at = Some(now);
    }

    /// The table was installed afresh: it holds nothing.
    pub fn emptied(&mut self) {
        self.in_step = None;
        self.counters.adopt(&[]);
        self.deadlines.clear();
        self.quotas.clear();
    }

    /// One change of a plan went through.
    pub fn applied(&mut self, change: Applied<'_>) {
        self.in_step = None;
        match change {
            Applied::Removed(client) => {
                self.counters.removed(client);
                self.deadlines.remove(client);
            }
            Applied::Added(client, until) => {
                self.counters.started(*client);
                self.deadlines.insert(*client, until);
            }
            Applied::QuotaSet(quota) => {
                self.quotas
                    .insert(quota.code.clone(), quota.clients.clone());
            }
            Applied::QuotaCleared(code) => {
                self.quotas.remove(code);
            }
        }
    }

    /// Whether the kernel is known to hold what the desired state of `revision` wants, so
    /// that its plan would change nothing: the last plan was made for that revision and
    /// changed nothing nor waited for a reading, and since then no change was applied and no
    /// reading found other clients held. A revision names one desired state (the core's
    /// [`crate::core::Core::revision`]); a plan depends on the time only through whether a
    /// reading is fresh, which matters only to a plan that changes something. An idle
    /// gateway's tick thus skips building and comparing every session's desired state.
    pub fn in_step(&self, revision: u64) -> bool {
        self.in_step == Some(revision)
    }

    /// `plan` was made for the desired state of `revision`, and is about to be applied.
    pub fn planned(&mut self, revision: u64, plan: &Plan) {
        self.in_step = (plan.is_empty() && !plan.needs_reading).then_some(revision);
    }

    /// The plan that makes the kernel hold what is desired, at `now` (see the module doc).
    pub fn plan(&self, desired: &Desired, now: Millis) -> Plan {
        let fresh = self.read_at == Some(now);
        let mut plan = Plan::default();
        let mut strangers: Vec<Client> = self
            .counters
            .clients()
            .filter(|client| !desired.allowed.contains_key(client))
            .copied()
            .collect();
        strangers.sort();
        if fresh {
            plan.remove = strangers;
        } else {
            plan.needs_reading |= !strangers.is_empty();
        }
        for (client, &until) in &desired.allowed {
            if !self.counters.contains(client) {
                plan.add.push((*client, until));
                continue;
            }
            match self.deadlines.get(client) {
                // A deadline this run did not set is the one a restored session gave it.
                None => {}
                Some(set) if *set == until => {}
                Some(_) if fresh => plan.add.push((*client, until)),
                Some(_) => plan.needs_reading = true,
            }
        }
        let live: BTreeSet<&AccessCode> = desired.quotas.iter().map(|q| &q.code).collect();
        plan.set_quotas = desired
            .quotas
            .iter()
            .filter(|quota| self.quotas.get(&quota.code) != Some(&quota.clients))
            .cloned()
            .collect();
        let mut gone: Vec<AccessCode> = self
            .quotas
            .keys()
            .filter(|code| !live.contains(code))
            .cloned()
            .collect();
        gone.sort();
        plan.clear_quotas = gone;
        plan
    }
}

/// One change of a [`Plan`] the kernel took.
#[derive(Debug, Clone, Copy)]
pub enum Applied<'a> {
    Removed(&'a Client),
    Added(&'a Client, Millis),
    QuotaSet(&'a WantedQuota),
    QuotaCleared(&'a AccessCode),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_client as client;
    use proptest::prelude::*;

    fn code(n: u8) -> AccessCode {
        let letter = char::from(b'A' + n);
        AccessCode::parse(&format!("{letter}{letter}{letter}{letter}2222")).unwrap()
    }

    /// A kernel as the tests see it: each element's deadline, its counter and what the
    /// counter held at the last reading, each quota's clients. Applying a plan to it takes
    /// out the counters of removed and re-added elements, which the test checks were read.
    #[derive(Debug, Default)]
    struct ModelKernel {
        elements: BTreeMap<Client, (Millis, u64, u64)>,
        quotas: BTreeMap<AccessCode, Vec<Client>>,
    }

    impl ModelKernel {
        /// Applies a plan as the daemon does, each change telling `known`; returns the bytes
        /// the removed and re-added elements still held (counted, never read: lost).
        fn apply(&mut self, plan: &Plan, known: &mut Kernel) -> u64 {
            let mut dropped = 0;
            for client in &plan.remove {
                dropped += self
                    .elements
                    .remove(client)
                    .map_or(0, |(_, bytes, read)| bytes - read);
                known.applied(Applied::Removed(client));
            }
            for (client, until) in &plan.add {
                if let Some((_, bytes, read)) = self.elements.insert(*client, (*until, 0, 0)) {
                    dropped += bytes - read;
                }
                known.applied(Applied::Added(client, *until));
            }
            for quota in &plan.set_quotas {
                self.quotas
                    .insert(quota.code.clone(), quota.clients.clone());
                known.applied(Applied::QuotaSet(quota));
            }
            for code in &plan.clear_quotas {
                self.quotas.remove(code);
                known.applied(Applied::QuotaCleared(code));
            }
            dropped
        }

        /// A counter reading at `now`: the bytes `known` books from it.
        fn read(&mut self, known: &mut Kernel, now: Millis) -> u64 {
            let reading: Vec<(Client, Usage)> = self
                .elements
                .iter_mut()
                .map(|(client, (_, bytes, read))| {
                    *read = *bytes;
                    (
                        *client,
                        Usage {
                            up: 0,
                            down: *bytes,
                        },
                    )
                })
                .collect();
            known
                .read(&reading, now)
                .iter()
                .map(|(_, used)| used.total())
                .sum()
        }
    }

    fn desired_from(sessions: &[(u8, Vec<u8>, u64)]) -> Desired {
        let mut desired = Desired::default();
        let mut taken = BTreeSet::new();
        for (session, devices, until) in sessions {
            let mut clients: Vec<Client> = devices
                .iter()
                .filter(|d| taken.insert(**d))
                .map(|d| client(*d))
                .collect();
            clients.sort();
            for c in &clients {
                desired.allowed.insert(*c, Millis(*until));
            }
            if !clients.is_empty() && !desired.quotas.iter().any(|q| q.code == code(*session)) {
                desired.quotas.push(WantedQuota {
                    code: code(*session),
                    clients,
                    limit_bytes: 1_000_000,
                    used_bytes: 0,
                });
            }
        }
        desired
    }

    fn sessions() -> impl Strategy<Value = Vec<(u8, Vec<u8>, u64)>> {
        prop::collection::vec(
            (0u8..6, prop::collection::vec(1u8..12, 0..4), 1u64..4),
            0..6,
        )
    }

    proptest! {
        /// From any kernel, through any sequence of desired states with traffic between
        /// them: a plan made on a fresh reading leaves the kernel holding exactly what is
        /// desired (deadlines and quotas included), and no plan ever takes out an element
        /// whose bytes were not read.
        #[test]
        fn plans_reach_the_desired_kernel_and_drop_no_counted_byte(
            steps in prop::collection::vec((sessions(), prop::collection::vec((1u8..12, 1u64..5000), 0..8), any::<bool>()), 1..12),
            strangers in prop::collection::vec(1u8..12, 0..5),
        ) {
            let mut kernel = ModelKernel::default();
            for n in &strangers {
                kernel.elements.insert(client(*n), (Millis(9), 0, 0));
            }
            let mut known = Kernel::restored(Baselines::from_saved(
                kernel.elements.keys().map(|client| (*client, Usage::default())),
            ));
            let mut counted = 0u64;
            let mut booked = 0u64;
            for (step, (sessions, traffic, fresh)) in steps.into_iter().enumerate() {
                let now = Millis(step as u64 + 100);
                for (n, bytes) in traffic {
                    if let Some((_, held, _)) = kernel.elements.get_mut(&client(n)) {
                        *held += bytes;
                        counted += bytes;
                    }
                }
                let desired = desired_from(&sessions);
                if fresh {
                    booked += kernel.read(&mut known, now);
                }
                let plan = known.plan(&desired, now);
                // What is taken out is cut off (its connections reset): never a client the
                // sessions still allow.
                prop_assert!(plan.remove.iter().all(|c| !desired.allowed.contains_key(c)));
                prop_assert_eq!(kernel.apply(&plan, &mut known), 0, "a plan took out unread bytes: {:?}", plan);
                if fresh {
                    prop_assert!(!plan.needs_reading);
                    let held: BTreeSet<Client> = kernel.elements.keys().copied().collect();
                    let allowed: BTreeSet<Client> = desired.allowed.keys().copied().collect();
                    prop_assert_eq!(&held, &allowed);
                    for (client, until) in &desired.allowed {
                        // Restored elements keep the deadline they had.
                        if known.deadlines.contains_key(client) {
                            prop_assert_eq!(kernel.elements[client].0, *until);
                        }
                    }
                    let wanted: BTreeMap<AccessCode, Vec<Client>> = desired.quotas.iter().map(|q| (q.code.clone(), q.clients.clone())).collect();
                    prop_assert_eq!(&kernel.quotas, &wanted);
                    prop_assert!(known.plan(&desired, now).is_empty(), "a second plan changes nothing");
                } else {
                    // A stale plan reaches the desired state unless it says it needs a reading.
                    let held: BTreeSet<Client> = kernel.elements.keys().copied().collect();
                    let allowed: BTreeSet<Client> = desired.allowed.keys().copied().collect();
                    prop_assert!(plan.needs_reading || held == allowed);
                    prop_assert!(allowed.is_subset(&held), "stale plans still add new clients");
                }
            }
            booked += kernel.read(&mut known, Millis(1_000));
            prop_assert_eq!(booked, counted, "every counted byte is booked");
        }
    }

    proptest! {
        /// A kernel said to be in step with a desired state plans nothing for it, whatever
        /// came between: readings (fresh or not), elements the kernel dropped by itself (a
        /// timeout), other desired states planned and applied. And once a fresh plan is
        /// applied, the kernel is in step with its desired state.
        #[test]
        fn in_step_means_an_empty_plan(
            states in prop::collection::vec(sessions(), 3),
            steps in prop::collection::vec((0usize..3, any::<bool>(), prop::option::of(1u8..12)), 1..30),
        ) {
            let desired: Vec<Desired> = states.iter().map(|s| desired_from(s)).collect();
            // Equal states share a revision, as the core's may.
            let revision = |i: usize| desired.iter().position(|d| *d == desired[i]).unwrap_or(i) as u64;
            let mut kernel = ModelKernel::default();
            let mut known = Kernel::default();
            for (step, (wanted, fresh, dropped)) in steps.into_iter().enumerate() {
                let now = Millis(step as u64 + 100);
                if let Some(n) = dropped {
                    kernel.elements.remove(&client(n));
                }
                if fresh {
                    kernel.read(&mut known, now);
                }
                for (i, state) in desired.iter().enumerate() {
                    if known.in_step(revision(i)) {
                        let plan = known.plan(state, now);
                        prop_assert!(plan.is_empty() && !plan.needs_reading, "{:?}", plan);
                    }
                }
                let plan = known.plan(&desired[wanted], now);
                known.planned(revision(wanted), &plan);
                kernel.apply(&plan, &mut known);
                if fresh {
                    let again = known.plan(&desired[wanted], now);
                    known.planned(revision(wanted), &again);
                    prop_assert!(known.in_step(revision(wanted)));
                }
            }
        }
    }

    #[test]
    fn a_reading_of_other_clients_ends_the_step() {
        let mut known = Kernel::default();
        known.applied(Applied::Added(&client(1), Millis(10)));
        known.read(&[(client(1), Usage::default())], Millis(5));
        known.planned(7, &Plan::default());
        assert!(known.in_step(7));
        assert!(!known.in_step(8));
        // The same clients, other counters: still in step.
        known.read(&[(client(1), Usage { up: 5, down: 5 })], Millis(6));
        assert!(known.in_step(7));
        known.read(&[], Millis(7));
        assert!(!known.in_step(7));
        known.planned(7, &Plan::default());
        known.read(
            &[(client(1), Usage::default()), (client(2), Usage::default())],
            Millis(8),
        );
        assert!(!known.in_step(7));
    }

    #[test]
    fn a_stale_plan_adds_new_clients_and_holds_back_the_rest() {
        let mut known = Kernel::default();
        known.applied(Applied::Added(&client(1), Millis(10)));
        known.applied(Applied::Added(&client(2), Millis(10)));
        let desired = Desired {
            allowed: [(client(2), Millis(20)), (client(3), Millis(20))].into(),
            quotas: Vec::new(),
        };
        let stale = known.plan(&desired, Millis(5));
        assert_eq!(stale.add, vec![(client(3), Millis(20))]);
        assert!(stale.remove.is_empty());
        assert!(stale.needs_reading);
        known.read(
            &[(client(1), Usage::default()), (client(2), Usage::default())],
            Millis(6),
        );
        let fresh = known.plan(&desired, Millis(6));
        assert_eq!(fresh.remove, vec![client(1)]);
        assert_eq!(
            fresh.add,
            vec![(client(2), Millis(20)), (client(3), Millis(20))]
        );
        assert!(!fresh.needs_reading);
    }

    #[test]
    fn a_restored_client_keeps_its_element() {
        let mut known = Kernel::restored(Baselines::from_saved([(client(1), Usage::default())]));
        known.read(&[(client(1), Usage::default())], Millis(5));
        let desired = Desired {
            allowed: [(client(1), Millis(50))].into(),
            quotas: Vec::new(),
        };
        assert!(known.plan(&desired, Millis(5)).is_empty());
    }

    #[test]
    fn quotas_follow_their_sessions_devices() {
        let mut known = Kernel::default();
        let quota = |n: u8, clients: Vec<Client>| WantedQuota {
            code: code(n),
            clients,
            limit_bytes: 10,
            used_bytes: 0,
        };
        known.applied(Applied::QuotaSet(&quota(1, vec![client(1)])));
        known.applied(Applied::QuotaSet(&quota(2, vec![client(2)])));
        let desired = Desired {
            allowed: BTreeMap::new(),
            quotas: vec![
                quota(1, vec![client(1), client(3)]),
                quota(2, vec![client(2)]),
            ],
        };
        let plan = known.plan(&desired, Millis(5));
        assert_eq!(plan.set_quotas, vec![quota(1, vec![client(1), client(3)])]);
        assert!(plan.clear_quotas.is_empty());
        let plan = known.plan(&Desired::default(), Millis(5));
        assert_eq!(plan.clear_quotas, vec![code(1), code(2)]);
    }
}
