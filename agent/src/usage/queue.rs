//! Which of a round's reports may be sent now: at most one report in flight per account.
//!
//! The backend credits a report by reading the account's user record, adding, and saving it
//! (contract 1, "Credit is read-modify-write per account"): two reports in flight at once
//! that credit one owner (its `points`, `bytesShared`) or name one consumer (its
//! `bytesConsumed`) can overwrite each other's credit, though both codes are debited and both
//! answer 200. So a report waits while another one touching one of its accounts is in flight.
//!
//! The owner of a code of this provider's own list is this account. The owner of another
//! account's code is unknown (authorize-code does not say), and two such codes may have the
//! same owner: they all count as one account, "other owners", never this one (a code of this
//! account is in its list). A consumer is a consumer account (the portal signs in no other
//! role), which cannot make codes, so it is never an owner.
//!
//! Reports touching an account go in the order the round planned them (first come, first
//! sent, per account), so none waits behind later ones; a round plans one report per code,
//! so a code's own order is kept by the rounds. No I/O here: the shell starts what
//! [`Queue::start`] gives and calls [`Queue::done`] when a report's outcome is in.

use super::core::{Owner, Send};

/// An account a report's credit is read, modified and written back on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Account<'a> {
    /// This provider (its own codes).
    This,
    /// The owners of other accounts' codes, unknown, so all one.
    OtherOwners,
    /// A consumer account (`consumerId`).
    Consumer(&'a str),
}

/// The accounts `send` credits.
fn accounts(send: &Send) -> impl Iterator<Item = Account<'_>> {
    let owner = match send.owner {
        Owner::This => Account::This,
        Owner::Other => Account::OtherOwners,
    };
    std::iter::once(owner).chain(send.consumer.as_deref().map(Account::Consumer))
}

fn share_an_account(a: &Send, b: &Send) -> bool {
    accounts(a).any(|x| accounts(b).any(|y| x == y))
}

/// A round's reports: waiting, in flight, done.
#[derive(Debug, Default)]
pub struct Queue {
    /// In the round's order.
    waiting: Vec<Send>,
    in_flight: Vec<Send>,
}

impl Queue {
    pub fn new(sends: Vec<Send>) -> Self {
        Queue {
            waiting: sends,
            in_flight: Vec::new(),
        }
    }

    /// The reports to send now, taken from the waiting ones: each one no report in flight
    /// and no report waiting before it shares an account with.
    pub fn start(&mut self) -> Vec<Send> {
        let mut started = Vec::new();
        let mut kept: Vec<Send> = Vec::new();
        for send in std::mem::take(&mut self.waiting) {
            let blocked = self
                .in_flight
                .iter()
                .chain(&kept)
                .any(|other| share_an_account(&send, other));
            if blocked {
                kept.push(send);
            } else {
                self.in_flight.push(send.clone());
                started.push(send);
            }
        }
        self.waiting = kept;
        started
    }

    /// The report for `code` is settled (whatever its outcome): its accounts are free.
    pub fn done(&mut self, code: &str) {
        self.in_flight.retain(|s| s.code != code);
    }

    /// True once nothing waits and nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn send(code: usize, owner: Owner, consumer: Option<usize>) -> Send {
        Send {
            code: format!("CODE{code:04}"),
            bytes: 1,
            consumer: consumer.map(|c| format!("consumer-{c}")),
            owner,
        }
    }

    #[test]
    fn own_codes_go_one_at_a_time_beside_one_other_accounts_code() {
        let mut q = Queue::new(vec![
            send(1, Owner::This, None),
            send(2, Owner::This, None),
            send(3, Owner::Other, None),
            send(4, Owner::Other, None),
        ]);
        let codes = |sends: Vec<Send>| sends.into_iter().map(|s| s.code).collect::<Vec<_>>();
        assert_eq!(codes(q.start()), ["CODE0001", "CODE0003"]);
        assert!(q.start().is_empty(), "both accounts busy");
        q.done("CODE0003");
        assert_eq!(codes(q.start()), ["CODE0004"]);
        q.done("CODE0001");
        assert_eq!(codes(q.start()), ["CODE0002"]);
        q.done("CODE0002");
        q.done("CODE0004");
        assert!(q.is_empty());
    }

    #[test]
    fn a_consumer_holds_back_reports_of_any_owner_naming_it() {
        let mut q = Queue::new(vec![
            send(1, Owner::This, Some(7)),
            send(2, Owner::Other, Some(7)),
            send(3, Owner::Other, Some(8)),
        ]);
        let started = q.start();
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0].code, "CODE0001");
        // The second waits for consumer 7; the third, behind it for the other owners, too.
        q.done("CODE0001");
        assert_eq!(q.start()[0].code, "CODE0002");
    }

    fn owner() -> impl Strategy<Value = Owner> {
        prop_oneof![Just(Owner::This), Just(Owner::Other)]
    }

    proptest! {
        /// Whatever the round and the order outcomes come in: never two reports in flight
        /// that share an account (this one, the other owners, a consumer); reports sharing an
        /// account are started in the round's order; every report is started exactly once;
        /// and something is always in flight while reports wait (no deadlock).
        #[test]
        fn one_report_in_flight_per_account_in_order(
            plan in prop::collection::vec((owner(), prop::option::of(0usize..4)), 0..40),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
        ) {
            let sends: Vec<Send> = plan
                .iter()
                .enumerate()
                .map(|(i, (o, c))| send(i, *o, *c))
                .collect();
            let mut q = Queue::new(sends.clone());
            let mut flying: Vec<Send> = Vec::new();
            let mut order: Vec<usize> = Vec::new();
            let mut picks = picks.into_iter();
            loop {
                for s in q.start() {
                    prop_assert!(
                        !flying.iter().any(|f| share_an_account(f, &s)),
                        "{s:?} started beside {flying:?}"
                    );
                    order.push(sends.iter().position(|x| x.code == s.code).unwrap());
                    flying.push(s);
                }
                if flying.is_empty() {
                    break;
                }
                // An outcome comes in: any report in flight may be the first to settle.
                let i = picks.next().map_or(0, |p| p.index(flying.len()));
                let done = flying.remove(i);
                q.done(&done.code);
            }
            prop_assert!(q.is_empty(), "reports left waiting with nothing in flight");
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..sends.len()).collect::<Vec<_>>(), "each started once");
            for (a, &i) in order.iter().enumerate() {
                for &j in &order[a + 1..] {
                    if share_an_account(&sends[i], &sends[j]) {
                        prop_assert!(i < j, "report {} started before {} though planned after", i, j);
                    }
                }
            }
        }
    }
}
