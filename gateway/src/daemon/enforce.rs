//! The enforcer: keeps the kernel in step with what the core allows. Every tick the counter
//! reading (`State::settle`) also tells which clients the kernel lets through; a client
//! the core allows but the kernel lacks is added, one the kernel has but the core does not
//! allow is removed, so an `allow` or `revoke` that failed heals itself at the next tick.
//! Session quotas follow each session's devices; a vanished table is installed again.

use std::collections::{HashMap, HashSet};

use edgeshare_shared::code::AccessCode;

use super::quota_id;
use super::state::State;
use crate::codes::CodeStore;
use crate::net::{Client, LARGEST_PACKET, Millis};

impl State {
    /// Keeps each session's kernel quota in step with its devices: set to the session's quota
    /// and what it has used when they change, cleared when the session has none or has ended. A
    /// quota left behind would block a captive device's DNS and portal too. Setting restarts
    /// the kernel's count, so callers settle the counters first (they do before any action).
    pub(super) fn sync_quotas(&mut self) {
        let wanted = self.core.wanted_quotas();
        let live: HashSet<&AccessCode> = wanted.iter().map(|q| &q.code).collect();
        let gone: Vec<AccessCode> = self
            .quotas
            .keys()
            .filter(|code| !live.contains(code))
            .cloned()
            .collect();
        for quota in &wanted {
            if self.quotas.get(&quota.code) == Some(&quota.clients) {
                continue;
            }
            let id = quota_id(&quota.code);
            match self
                .firewall
                .set_quota(&id, &quota.clients, quota.limit_bytes, quota.used_bytes)
            {
                Ok(()) => {
                    self.quotas
                        .insert(quota.code.clone(), quota.clients.clone());
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot set a session's kernel quota; retrying at the next tick")
                }
            }
        }
        for code in gone {
            match self.firewall.clear_quota(&quota_id(&code)) {
                Ok(()) => {
                    self.quotas.remove(&code);
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot clear a session's kernel quota; retrying at the next tick")
                }
            }
        }
    }

    /// Ends the sessions whose kernel quota is used up; the kernel is asked only about those
    /// less than a packet short of it (see [`crate::core::Core::near_quota`]; most ticks,
    /// none).
    pub(super) fn end_used_up(&mut self, now: Millis, store: Option<&CodeStore>) {
        let near: Vec<AccessCode> = self
            .core
            .near_quota(LARGEST_PACKET)
            .into_iter()
            .filter(|code| self.quotas.contains_key(code))
            .collect();
        if near.is_empty() {
            return;
        }
        let listed = match self.firewall.list_quotas() {
            Ok(listed) => listed,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the session quotas");
                return;
            }
        };
        let used_up: Vec<AccessCode> = near
            .into_iter()
            .filter(|code| {
                listed
                    .get(&quota_id(code))
                    .is_some_and(|q| q.used_bytes >= q.limit_bytes)
            })
            .collect();
        if used_up.is_empty() {
            return;
        }
        // Packets forwarded since the last reading are in the counters, not yet in the
        // sessions: read them before the cut takes the counters away.
        self.settle(now, store);
        for code in used_up {
            let actions = self.core.quota_reached(&code, now);
            self.apply(actions, now, store);
        }
    }

    /// Puts the kernel in step with the core, as the last counter reading saw it (the
    /// baselines hold a client for each element the kernel had then, plus those allowed
    /// since): clients the core does not allow are cut off, clients it allows but the kernel
    /// lacks are added. Clients already there are left alone: re-adding would restart their
    /// counters and lose what they hold. Runs every tick, so a failed change heals itself;
    /// it costs no kernel call while the two agree.
    pub(super) fn enforce(&mut self, now: Millis) {
        let allowed: HashMap<Client, Millis> = self.core.allowed().into_iter().collect();
        let strangers: Vec<Client> = self
            .baselines
            .clients()
            .filter(|client| !allowed.contains_key(*client))
            .copied()
            .collect();
        let mut changed = false;
        let mut cut = Vec::new();
        for client in strangers {
            tracing::info!(%client, "removing a client the sessions do not allow");
            match self.firewall.revoke(&client) {
                Ok(()) => {
                    self.baselines.removed(&client);
                    cut.push(client);
                }
                Err(err) => {
                    tracing::error!(%client, error = %err, "cannot remove a client; retrying at the next tick")
                }
            }
            changed = true;
        }
        for (client, until) in allowed {
            if !self.baselines.contains(&client) {
                tracing::info!(%client, "adding a client the kernel lacks");
                self.allow(client, until, now);
                changed = true;
            }
        }
        self.end_connections(&cut);
        if changed {
            self.meters_follow_clients();
        }
    }

    /// Removes the kernel quotas of sessions without devices: those that ended while the
    /// daemon was down or before its state was saved. A quota left behind, used up, would
    /// keep a device from DNS and the portal.
    pub(super) fn clear_stale_quotas(&mut self) {
        let listed = match self.firewall.list_quotas() {
            Ok(listed) => listed,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the session quotas");
                return;
            }
        };
        let live: HashSet<String> = self.quotas.keys().map(quota_id).collect();
        for id in listed.keys().filter(|id| !live.contains(*id)) {
            if let Err(err) = self.firewall.clear_quota(id) {
                tracing::error!(error = %err, "cannot clear a stale session quota");
            }
        }
    }

    /// Restores our table if someone removed it (a firewall reload, `nft flush ruleset`),
    /// with every online client back in it. Their counters restart at zero, which
    /// [`State::settle`] treats as a reset; what they used since the last read is lost.
    pub(super) fn repair(&mut self, now: Millis, store: Option<&CodeStore>) {
        match self.firewall.is_installed() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("our nftables table is gone (a firewall reload?); restoring it");
                match self.firewall.install() {
                    Ok(()) => {
                        // A fresh reading: the clients went with the table.
                        self.settle(now, store);
                        self.enforce(now);
                        // The quota objects went with the table.
                        self.quotas.clear();
                        self.sync_quotas();
                    }
                    Err(err) => tracing::error!(error = %err, "cannot restore the nftables table"),
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot check the nftables table"),
        }
    }
}
