//! The LAN's neighbour table as the daemon uses it ([`Lan`]): where online devices' other
//! addresses are learned, behind the guard that keeps another MAC from taking an online
//! device's address while the device answers (see [`crate::neighbours::guard`]).

use std::net::IpAddr;

use crate::neighbours::guard::{self, Guard, Online};
use crate::neighbours::{Entry, NeighbourTable};
use crate::net::{Client, Mac, Millis};

/// The neighbour table and the LAN's interface index (`None` in tests, or when it cannot be
/// opened), and the guard.
#[derive(Default)]
pub(super) struct Lan {
    table: Option<(NeighbourTable, u32)>,
    guard: Guard,
}

impl Lan {
    pub(super) fn opened(table: Option<(NeighbourTable, u32)>) -> Self {
        Lan {
            table,
            guard: Guard::default(),
        }
    }

    /// The LAN's interface index, when its table is open.
    pub(super) fn index(&self) -> Option<u32> {
        self.table.as_ref().map(|(_, lan)| *lan)
    }

    /// Reads the table's entries; `None` without a table or if it cannot be read (learning
    /// waits for the next tick; nothing learned is dropped meanwhile).
    pub(super) fn entries(&mut self) -> Option<Vec<Entry>> {
        let (table, lan) = self.table.as_mut()?;
        table
            .entries(*lan)
            .inspect_err(
                |err| tracing::warn!(error = %err, "cannot read the LAN's neighbour table"),
            )
            .ok()
    }

    /// Entries read from the table, as the guard lets the core see them.
    pub(super) fn observed(
        &mut self,
        entries: &[Entry],
        online: &Online,
        now: Millis,
    ) -> Vec<Client> {
        let verdict = self.guard.observe(entries, online, now);
        self.carry_out(&verdict);
        verdict.seen
    }

    /// Entries the kernel says changed (see [`Guard::notified`]): a claim on an online
    /// address is turned down now, not at the next tick.
    pub(super) fn notified(&mut self, entries: &[Entry], online: &Online, now: Millis) {
        let verdict = self.guard.notified(entries, online, now);
        self.carry_out(&verdict);
    }

    /// Whether a login of `client` must wait for `holder`, the online device holding its
    /// address (see [`Guard::login`]); if so the holder is probed and the attempt logged.
    pub(super) fn login_waits(&mut self, client: Client, holder: Mac, now: Millis) -> bool {
        match self.guard.login(client, holder, now) {
            Ok(()) => false,
            Err(verdict) => {
                self.carry_out(&verdict);
                true
            }
        }
    }

    /// Whether `holder` is being probed for `ip`.
    pub(super) fn probing(&self, ip: IpAddr, holder: Mac) -> bool {
        self.guard.probing(ip, holder)
    }

    /// The guard's probes (on the table, if open) and log lines.
    fn carry_out(&mut self, verdict: &guard::Verdict) {
        if let Some((table, lan)) = &mut self.table {
            for client in &verdict.probes {
                if let Err(err) = table.probe(*lan, *client) {
                    // The guard sees the claim again at the next tick and probes again.
                    tracing::warn!(%client, error = %err, "cannot point the neighbour entry back at its online holder");
                }
            }
        }
        for event in &verdict.events {
            log_event(event);
        }
    }
}

fn log_event(event: &guard::Event) {
    match *event {
        guard::Event::Claimed {
            ip,
            holder,
            claimant,
        } => tracing::warn!(
            %ip,
            %holder,
            %claimant,
            "a device claims an online device's address (neighbour spoofing, or a device that took over its address): the address stays with its holder while the holder answers the probe sent to it; this device is not logged again for {} minutes",
            guard::ALERT_EVERY.as_secs() / 60
        ),
        guard::Event::Released {
            ip,
            holder,
            claimant,
        } => {
            let claimant = claimant.map_or_else(|| "none yet".to_owned(), |mac| mac.to_string());
            tracing::info!(
                %ip,
                %holder,
                %claimant,
                "the holder of an address did not answer its probe: the address goes to the device that answers for it now"
            );
        }
    }
}
