//! The enforcer: keeps the kernel in step with what the core allows. The kernel as the
//! daemon knows it ([`Kernel`](crate::reconcile::Kernel): every counter reading and every change applied) and what the
//! core wants give a plan ([`crate::reconcile`]); applying it changes only what differs, so a
//! change that failed is planned again at the next tick and a tick where the two agree costs
//! no kernel call. Session quotas follow each session's devices; a vanished table is
//! installed again.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use edgeshare_shared::code::AccessCode;

use super::quota_id;
use super::state::State;
use crate::codes::CodeStore;
use crate::firewall::{Change, FirewallError};
use crate::net::{Client, LARGEST_PACKET, Millis};
use crate::reconcile::{Applied, Desired, Plan};

/// How long the kernel keeps a client after its code's expiry. While the daemon runs, its
/// tick (at most [`super::TICK`] after expiry) reads the client's last bytes and cuts it off;
/// the kernel's own timeout, which would delete the element and its counter unread, is only
/// the safety net for a daemon that is down.
const KERNEL_GRACE: Duration = Duration::from_secs(2);
/// Most changes in one netlink batch. The kernel acknowledges every message of a batch, and
/// each acknowledgement takes about 768 bytes of the socket's receive buffer (208 KiB by
/// default) until read: a change is up to ten messages (a session quota with its devices'
/// keys), and 64 changes overflowed it (ENOBUFS, measured with a crowd of 80 logins).
const BATCH_CHANGES: usize = 16;

/// A plan's steps in the order they are applied: removals, additions, quotas set, cleared.
fn plan_steps(plan: &Plan) -> Vec<Applied<'_>> {
    let removed = plan.remove.iter().map(Applied::Removed);
    let added = plan
        .add
        .iter()
        .map(|(client, until)| Applied::Added(client, *until));
    let set = plan.set_quotas.iter().map(Applied::QuotaSet);
    let cleared = plan.clear_quotas.iter().map(Applied::QuotaCleared);
    removed.chain(added).chain(set).chain(cleared).collect()
}

/// The firewall's change for a plan's step.
fn change_of(step: &Applied<'_>, now: Millis) -> Change {
    match *step {
        Applied::Removed(client) => Change::Revoke(*client),
        Applied::Added(client, until) => Change::Allow {
            client: *client,
            timeout: now.until(until) + KERNEL_GRACE,
        },
        Applied::QuotaSet(quota) => Change::SetQuota {
            session: quota_id(&quota.code),
            clients: quota.clients.clone(),
            limit_bytes: quota.limit_bytes,
            used_bytes: quota.used_bytes,
        },
        Applied::QuotaCleared(code) => Change::ClearQuota(quota_id(code)),
    }
}

/// A change the kernel refused, logged as what it meant; it is planned again at the next
/// tick.
fn log_refused(step: &Applied<'_>, err: &FirewallError) {
    match step {
        Applied::Removed(client) => {
            tracing::error!(%client, error = %err, "cannot cut a client off; retrying at the next tick")
        }
        Applied::Added(client, _) => {
            tracing::error!(%client, error = %err, "cannot let a client through; retrying at the next tick")
        }
        Applied::QuotaSet(_) => {
            tracing::error!(error = %err, "cannot set a session's kernel quota; retrying at the next tick")
        }
        Applied::QuotaCleared(_) => {
            tracing::error!(error = %err, "cannot clear a session's kernel quota; retrying at the next tick")
        }
    }
}

impl State {
    /// What the core wants the kernel to hold.
    fn desired(&self) -> Desired {
        Desired {
            allowed: self.core.allowed().into_iter().collect(),
            quotas: self.core.wanted_quotas(),
        }
    }

    /// Puts the kernel in step with the core. A change to a client the kernel holds waits
    /// for its counter to be read (the plan says so): the counters are read first, which
    /// books its last bytes. Nothing is planned while the kernel is known to be in step
    /// with the core's revision (see [`crate::reconcile::Kernel::in_step`]): an idle tick
    /// of a full gateway costs no walk over its sessions.
    pub(super) fn enforce(&mut self, now: Millis, store: Option<&CodeStore>) {
        if self.kernel.in_step(self.core.revision()) {
            return;
        }
        let mut desired = self.desired();
        let mut plan = self.kernel.plan(&desired, now);
        if plan.needs_reading {
            self.settle(now, store);
            // The reading may have ended sessions (and enforced them already).
            desired = self.desired();
            plan = self.kernel.plan(&desired, now);
        }
        if plan.needs_reading {
            tracing::warn!(
                "the kernel counters could not be read: clients to cut off stay until the next tick"
            );
        }
        self.kernel.planned(self.core.revision(), &plan);
        self.carry_out(plan, &desired, now);
    }

    /// Applies a plan as netlink batches of up to [`BATCH_CHANGES`] changes, each atomic (a
    /// batch the kernel refuses is applied again change by change, so that one bad change
    /// holds back no other), telling the kernel's record each change that went through; one
    /// that fails is logged and planned again at the next tick. The connections of clients
    /// taken out are reset after the quotas are set: a used-up quota still in place would
    /// drop the challenge ACKs that bring the resets.
    fn carry_out(&mut self, plan: Plan, desired: &Desired, now: Millis) {
        if plan.is_empty() {
            return;
        }
        let steps = plan_steps(&plan);
        let changes: Vec<Change> = steps.iter().map(|step| change_of(step, now)).collect();
        let mut cut = Vec::new();
        for (batch, changes) in steps
            .chunks(BATCH_CHANGES)
            .zip(changes.chunks(BATCH_CHANGES))
        {
            match self.firewall.apply(changes) {
                Ok(()) => {
                    for step in batch {
                        self.applied(step, &mut cut);
                    }
                }
                Err(err) if changes.len() > 1 => {
                    tracing::warn!(error = %err, "a batch of kernel changes was refused; applying them one by one");
                    for (step, change) in batch.iter().zip(changes) {
                        match self.firewall.apply(std::slice::from_ref(change)) {
                            Ok(()) => self.applied(step, &mut cut),
                            Err(err) => log_refused(step, &err),
                        }
                    }
                }
                Err(err) => log_refused(&batch[0], &err),
            }
        }
        let applied_at = SystemTime::now();
        self.end_connections(&cut);
        self.meters
            .follow(desired.allowed.keys().copied().collect(), applied_at);
    }

    /// A step of a plan the kernel took.
    fn applied(&mut self, step: &Applied<'_>, cut: &mut Vec<Client>) {
        if let Applied::Removed(client) = step {
            tracing::debug!(%client, "client taken out of the kernel");
            cut.push(**client);
        }
        self.kernel.applied(*step);
    }

    /// Resets the TCP connections of `clients`, just cut off (see [`crate::cutoff`]): the
    /// plan's removals that the kernel took.
    fn end_connections(&self, clients: &[Client]) {
        let Some(cutoff) = self.cutoff.as_ref().filter(|_| !clients.is_empty()) else {
            return;
        };
        let ips: Vec<IpAddr> = clients.iter().map(|c| c.ip).collect();
        match cutoff.end_connections(&ips) {
            Ok(connections) => {
                tracing::info!(?ips, connections, "connections of clients cut off reset")
            }
            Err(err) => {
                tracing::warn!(?ips, error = %err, "cannot reset the connections of clients cut off; each ends at its next segment")
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
            .filter(|code| self.kernel.has_quota(code))
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
        let live: HashSet<String> = self.kernel.quota_codes().map(quota_id).collect();
        for id in listed.keys().filter(|id| !live.contains(*id)) {
            if let Err(err) = self.firewall.clear_quota(id) {
                tracing::error!(error = %err, "cannot clear a stale session quota");
            }
        }
    }

    /// Restores our table if someone removed it (a firewall reload, `nft flush ruleset`),
    /// with every online client back in it. Their counters restart at zero, which
    /// [`crate::reconcile::Kernel::read`] treats as a reset; what they used since the last read is lost.
    pub(super) fn repair(&mut self, now: Millis, store: Option<&CodeStore>) {
        match self.firewall.is_installed() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("our nftables table is gone (a firewall reload?); restoring it");
                match self.firewall.install() {
                    Ok(()) => {
                        // The clients and the quota objects went with the table.
                        self.kernel.emptied();
                        self.settle(now, store);
                        self.enforce(now, store);
                    }
                    Err(err) => tracing::error!(error = %err, "cannot restore the nftables table"),
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot check the nftables table"),
        }
    }
}
