//! [`NetlinkFirewall`]: the daemon's per-login and per-tick firewall calls spoken to the
//! kernel directly over a `NETLINK_NETFILTER` socket, no `nft` process.
//!
//! Why: an `nft` run costs a process start plus nft's own cache fetch (it reads the table's
//! generation, tables, chains, sets and objects before every command), about 5 ms of CPU
//! here and much more on a Raspberry Pi, and a login took about ten of them (four set
//! listings, the allow batch, four map listings, the quota batch), every tick four or more.
//! Over netlink the same work is a handful of `send`/`recv` calls on one socket.
//!
//! What goes over netlink, each change one batch the kernel applies atomically, its
//! messages as nft sends them for the same change (`tests` compares recorded ones byte for
//! byte):
//! - `allow`, `revoke`: `NEWSETELEM`/`DELSETELEM` in one batch (`elements`).
//! - `clients`: four `GETSETELEM` dumps, keys and counters read back (`elements`).
//! - `set_quota`, `clear_quota`, `list_quotas`: quota objects (`objects`) and quota-map
//!   elements with an object reference (`elements`).
//! - `is_installed`: four small reads compared with what `install` puts there (`check`).
//!
//! What runs `nft -j` (through [`NftFirewall`]): `install` and `uninstall`, once per
//! start, stop, repair or garden update. The install batch holds every rule of the table:
//! payload offsets, meta keys, conntrack states, set lookups, quota maps, the port
//! redirect, masquerade, interval sets with merged prefixes. nft compiles those into kernel
//! expressions, picks set backends and sizes, and checks them; doing that ourselves would
//! be a large second compiler of nft's language that must track nft's and the kernel's
//! evolution, for a call that runs once. Keeping nft there keeps the rules readable in one
//! place (`rules`) and the table exactly what `nft list table` shows.
//!
//! The socket is opened at the first netlink call, in the network namespace of the thread
//! making it, and kept; [`NetlinkFirewall::open`] opens it earlier (a test does so from a
//! thread inside a test namespace).

mod check;
mod elements;
mod exchange;
mod message;
mod objects;
mod socket;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use super::listing::{self, Element};
use super::rules::{
    self, CLIENTS4_DOWN, CLIENTS4_UP, CLIENTS6_DOWN, CLIENTS6_UP, QUOTA_MAPS, QuotaElement,
    QuotaKey,
};
use super::{
    Change, ClientCounters, Firewall, FirewallConfig, FirewallError, NftFirewall, Operation,
    SessionQuota, batch_operation, kernel_timeout, session_quota_name,
};
use crate::net::Client;
use elements::Change as ElementChange;
use message::Message;
use socket::{Failure, Socket};

/// The firewall on the real kernel: netlink for everything the daemon does per login and
/// per tick, `nft -j` for `install` and `uninstall` (see the module doc for why).
///
/// Each call blocks until the kernel has answered (well under a millisecond for a change;
/// see [`Firewall::clients`] for listings).
#[derive(Debug)]
pub struct NetlinkFirewall {
    nft: NftFirewall,
    socket: Option<Socket>,
}

impl NetlinkFirewall {
    /// Installs and uninstalls with `nft` from `PATH`.
    pub fn new(config: FirewallConfig) -> Self {
        Self::with_nft(NftFirewall::new(config))
    }

    /// Installs and uninstalls through a command prefix (see [`NftFirewall::with_command`]).
    pub fn with_command(config: FirewallConfig, command: Vec<OsString>) -> Self {
        Self::with_nft(NftFirewall::with_command(config, command))
    }

    fn with_nft(nft: NftFirewall) -> Self {
        NetlinkFirewall { nft, socket: None }
    }

    pub fn config(&self) -> &FirewallConfig {
        self.nft.config()
    }

    /// Opens the netlink socket now, in the calling thread's network namespace (otherwise
    /// the first call that needs it does). A no-op if it is open.
    pub fn open(&mut self) -> Result<(), FirewallError> {
        self.socket(&Operation::OpenSocket).map(|_| ())
    }

    fn socket(&mut self, operation: &Operation) -> Result<&mut Socket, FirewallError> {
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => Socket::open().map_err(|f| failed(operation, f))?,
        };
        Ok(self.socket.insert(socket))
    }

    fn send_batch(
        &mut self,
        operation: Operation,
        messages: Vec<Message>,
    ) -> Result<(), FirewallError> {
        let applied = self.socket(&operation)?.apply(messages);
        if let Err(Failure::Errno(libc::ENOBUFS | libc::ETIMEDOUT)) = applied {
            // Answers were lost or are still on their way: a fresh socket at the next call,
            // so that they cannot be taken for the answers to it.
            self.socket = None;
        }
        applied.map_err(|f| failed(&operation, f))?;
        tracing::debug!(operation = %operation, "netlink batch applied");
        Ok(())
    }

    fn dump<T>(
        &mut self,
        operation: &Operation,
        request: &Message,
        parse: impl FnMut(&message::Attributes<'_>, &mut Vec<T>) -> Result<(), String>,
    ) -> Result<Vec<T>, FirewallError> {
        self.socket(operation)?
            .dump(request, parse)
            .map_err(|f| failed(operation, f))
    }

    fn set_elements<K>(
        &mut self,
        set: &'static str,
        key: impl Fn(&[u8]) -> Option<K> + Copy,
    ) -> Result<Vec<Element<K>>, FirewallError> {
        let request = elements::dump_request(&self.config().table, set);
        self.dump(&Operation::ListSet(set), &request, |message, out| {
            elements::parse_dump(message, set, out, |listed| {
                elements::client_element(listed, key)
            })
        })
    }

    fn clients_of(
        &mut self,
        up: &'static str,
        down: &'static str,
    ) -> Result<Vec<ClientCounters>, FirewallError> {
        Ok(listing::join(
            self.set_elements(up, elements::decode_mac_ip_key)?,
            self.set_elements(down, elements::decode_ip_key)?,
        ))
    }

    /// Every element of the four quota maps (a `GETSETELEM` dump each).
    fn quota_elements(&mut self) -> Result<Vec<QuotaElement>, FirewallError> {
        let mut all = Vec::new();
        for decl in &QUOTA_MAPS {
            let up = decl.name.ends_with("_up");
            let request = elements::dump_request(&self.config().table, decl.name);
            all.extend(
                self.dump(&Operation::ListMap(decl.name), &request, |message, out| {
                    elements::parse_dump(message, decl.name, out, |listed| {
                        let key = if up {
                            elements::decode_mac_ip_key(listed.key).map(QuotaKey::Up)
                        } else {
                            elements::decode_ip_key(listed.key).map(QuotaKey::Down)
                        };
                        match (key, listed.objref) {
                            (Some(key), Some(quota)) => Ok(QuotaElement {
                                key,
                                quota: quota.to_owned(),
                            }),
                            _ => Err(format!(
                                "unexpected element in {}: {listed:02x?}",
                                decl.name
                            )),
                        }
                    })
                })?,
            );
        }
        Ok(all)
    }
}

/// Did a read fail because the table (or a part of it) is not there?
fn missing<T>(result: &Result<T, FirewallError>) -> bool {
    matches!(
        result,
        Err(FirewallError::Netlink {
            errno: libc::ENOENT,
            ..
        })
    )
}

/// A netlink failure as a [`FirewallError`] naming what was being done.
fn failed(operation: &Operation, failure: Failure) -> FirewallError {
    match failure {
        Failure::Errno(errno) => FirewallError::Netlink {
            operation: operation.clone(),
            errno,
        },
        Failure::Malformed(detail) => FirewallError::Reply {
            operation: operation.clone(),
            detail,
        },
    }
}

/// One message per step and element: each `(add, timeout)` on the client's upload element,
/// then on its download element.
fn client_batch(table: &str, client: &Client, steps: &[(bool, Option<Duration>)]) -> Vec<Message> {
    let (up, down) = rules::client_sets(client.ip);
    steps
        .iter()
        .flat_map(|&(add, timeout)| {
            [
                (up, elements::mac_ip_key(client)),
                (down, elements::ip_key(client.ip)),
            ]
            .map(|(set, key)| {
                let change = ElementChange {
                    key,
                    timeout,
                    objref: None,
                };
                elements::change(table, set, add, &[change])
            })
        })
        .collect()
}

/// One request per quota map with keys among `keys`: deletions of the keys (`quota`
/// `None`), or additions pointing them at the quota object `quota`.
fn quota_elements(table: &str, keys: &[QuotaKey], quota: Option<&str>) -> Vec<Message> {
    QUOTA_MAPS
        .iter()
        .filter_map(|decl| {
            let changes: Vec<ElementChange<'_>> = keys
                .iter()
                .filter(|key| key.map() == decl.name)
                .map(|key| ElementChange {
                    key: elements::quota_key(key),
                    timeout: None,
                    objref: quota,
                })
                .collect();
            (!changes.is_empty())
                .then(|| elements::change(table, decl.name, quota.is_some(), &changes))
        })
        .collect()
}

/// Add (so the delete cannot fail), delete, add with the timeout: a replacement that
/// restarts the element counters at zero and does not depend on whether the kernel updates
/// the timeout of an element added twice (older kernels do not).
fn allow_batch(table: &str, client: &Client, timeout: Duration) -> Vec<Message> {
    let timeout = Some(kernel_timeout(timeout));
    client_batch(
        table,
        client,
        &[(true, timeout), (false, None), (true, timeout)],
    )
}

/// Add (a no-op if present) then delete, so revoking a client that is not there is not an
/// error on kernels without `DESTROYSETELEM`.
fn revoke_batch(table: &str, client: &Client) -> Vec<Message> {
    client_batch(
        table,
        client,
        &[(true, Some(Duration::from_secs(1))), (false, None)],
    )
}

/// Gives the session's quota object `name` a fresh limit of `bytes` with `used` already used,
/// and makes exactly `clients` count against it, in one batch: the object is added (updated
/// if there, so the delete cannot fail), the elements pointing at it or at the clients' keys
/// (`existing`, as just listed) are deleted, the object is deleted and added again (which
/// replaces what it has used), and the clients' elements are added.
fn set_quota_batch(
    table: &str,
    name: &str,
    clients: &[Client],
    (bytes, used): (u64, u64),
    existing: &[QuotaElement],
) -> Vec<Message> {
    let keys = rules::quota_keys(clients);
    let mut messages = vec![objects::add(table, name, bytes, used)];
    messages.extend(quota_elements(
        table,
        &rules::stale_keys(name, &keys, existing),
        None,
    ));
    messages.push(objects::delete(table, name));
    messages.push(objects::add(table, name, bytes, used));
    messages.extend(quota_elements(table, &keys, Some(name)));
    messages
}

/// Removes the session's quota object `name` and every element pointing at it (`existing`,
/// as just listed); not an error if there is none.
fn clear_quota_batch(table: &str, name: &str, existing: &[QuotaElement]) -> Vec<Message> {
    let mut messages = vec![objects::add(table, name, 0, 0)];
    messages.extend(quota_elements(
        table,
        &rules::stale_keys(name, &[], existing),
        None,
    ));
    messages.push(objects::delete(table, name));
    messages
}

/// What the quota maps hold once `change` is applied to `existing` (the elements as listed
/// before the batch): a batch of several quota changes builds each one's deletions from
/// the maps as the changes before it in the batch left them.
fn quota_elements_after(existing: &mut Vec<QuotaElement>, change: &Change) {
    match change {
        Change::SetQuota {
            session, clients, ..
        } => {
            let Some(name) = rules::quota_name(session) else {
                return;
            };
            let keys = rules::quota_keys(clients);
            existing.retain(|e| e.quota != name && !keys.contains(&e.key));
            existing.extend(keys.into_iter().map(|key| QuotaElement {
                key,
                quota: name.clone(),
            }));
        }
        Change::ClearQuota(session) => {
            if let Some(name) = rules::quota_name(session) {
                existing.retain(|e| e.quota != name);
            }
        }
        Change::Allow { .. } | Change::Revoke(_) => {}
    }
}

impl Firewall for NetlinkFirewall {
    /// `nft -j` (see the module doc).
    fn install(&mut self) -> Result<(), FirewallError> {
        self.nft.install()
    }

    /// A `GETTABLE`, then `GETSET`, `GETCHAIN` and `GETRULE` dumps of our table (see
    /// `check`): a missing table is `false`, not an error.
    fn is_installed(&mut self) -> Result<bool, FirewallError> {
        self.config().validate()?;
        let operation = Operation::CheckInstalled;
        let table = self.config().table.clone();
        let found = self.dump(
            &operation,
            &check::table_request(&table),
            check::parse_table,
        );
        if missing(&found) {
            return Ok(false);
        }
        found?;
        // The table can go between the reads: a read that then finds it missing says so.
        let sets = self.dump(&operation, &check::sets_request(&table), |m, out| {
            check::parse_set(m, &table, out)
        });
        let chains = self.dump(&operation, &check::chains_request(&table), |m, out| {
            check::parse_chain(m, &table, out)
        });
        let rules = self.dump(&operation, &check::rules_request(&table), |m, out| {
            check::parse_rule(m, &table, out)
        });
        if missing(&sets) || missing(&chains) || missing(&rules) {
            return Ok(false);
        }
        Ok(check::complete(
            &sets?,
            &chains?,
            &rules?,
            &rules::rules(self.config()),
        ))
    }

    /// One netlink batch; four quota-map dumps first when a session quota changes.
    fn apply(&mut self, changes: &[Change]) -> Result<(), FirewallError> {
        self.config().validate()?;
        if changes.is_empty() {
            return Ok(());
        }
        let quotas_change = changes
            .iter()
            .any(|c| matches!(c, Change::SetQuota { .. } | Change::ClearQuota(_)));
        let mut existing = if quotas_change {
            self.quota_elements()?
        } else {
            Vec::new()
        };
        let table = self.config().table.clone();
        let mut messages = Vec::new();
        for change in changes {
            match change {
                Change::Allow { client, timeout } => {
                    messages.extend(allow_batch(&table, client, *timeout));
                }
                Change::Revoke(client) => messages.extend(revoke_batch(&table, client)),
                Change::SetQuota {
                    session,
                    clients,
                    limit_bytes,
                    used_bytes,
                } => {
                    let name = session_quota_name(session)?;
                    messages.extend(set_quota_batch(
                        &table,
                        &name,
                        clients,
                        (*limit_bytes, *used_bytes),
                        &existing,
                    ));
                }
                Change::ClearQuota(session) => {
                    let name = session_quota_name(session)?;
                    messages.extend(clear_quota_batch(&table, &name, &existing));
                }
            }
            quota_elements_after(&mut existing, change);
        }
        self.send_batch(batch_operation(changes), messages)
    }

    /// Four `GETSETELEM` dumps, one per client set. As with nft, the four are not one
    /// snapshot: a client allowed or expiring in between may show without download
    /// counters or be missing; the next call sees it.
    fn clients(&mut self) -> Result<Vec<ClientCounters>, FirewallError> {
        self.config().validate()?;
        let mut all = self.clients_of(CLIENTS4_UP, CLIENTS4_DOWN)?;
        all.extend(self.clients_of(CLIENTS6_UP, CLIENTS6_DOWN)?);
        all.sort_by_key(|c| c.client);
        Ok(all)
    }

    /// `nft -j` (see the module doc).
    fn uninstall(&mut self) -> Result<(), FirewallError> {
        self.nft.uninstall()
    }

    /// One `GETOBJ` dump of the table's quotas.
    fn list_quotas(&mut self) -> Result<BTreeMap<String, SessionQuota>, FirewallError> {
        self.config().validate()?;
        let table = self.config().table.clone();
        let quotas = self.dump(
            &Operation::ListQuotas,
            &objects::dump_request(&table),
            |message, out| {
                out.extend(objects::parse(message, &table)?);
                Ok(())
            },
        )?;
        Ok(quotas.into_iter().collect())
    }
}
