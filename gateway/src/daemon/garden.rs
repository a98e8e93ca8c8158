//! The walled garden's entries: configured networks and hosts, and the backend's host when
//! codes are checked there. Hosts that do not resolve at start (no DNS yet at boot) join
//! the table later, resolved in the background.

use std::time::Duration;

use anyhow::Context as _;

use super::firewall_for;
use super::owner::Owner;
use crate::config::{CodeSource, GatewayConfig};
use crate::firewall::{Cidr, GardenEntry, split_garden_port};

/// How long one walled-garden host is given to resolve: at boot there may be no DNS yet, and
/// the gateway starts without the host rather than wait (it is retried in the background).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A walled-garden host name still to resolve, with the TCP port it is opened on.
pub(super) type GardenHost = (String, u16);

/// The walled garden's entries: configured ones (each on its port) and the backend's host on
/// its URL's port when codes are checked there; networks as they are, host names to resolve.
pub(super) fn garden_entries(
    config: &GatewayConfig,
) -> anyhow::Result<(Vec<GardenEntry>, Vec<GardenHost>)> {
    let mut entries: Vec<GardenHost> = Vec::new();
    for entry in &config.portal.walled_garden {
        let (host, port) = split_garden_port(entry)
            .with_context(|| format!("portal.walled_garden: \"{entry}\""))?;
        entries.push((host.to_owned(), port));
    }
    if let (CodeSource::Backend, Some(backend)) = (config.codes.source, &config.backend) {
        if let (Some(host), Some(port)) =
            (backend.url.host_str(), backend.url.port_or_known_default())
        {
            entries.push((host.trim_matches(['[', ']']).to_owned(), port));
        }
    }
    let mut garden = Vec::new();
    let mut hosts = Vec::new();
    for (host, port) in entries {
        match host.parse::<Cidr>() {
            Ok(net) => garden.push(GardenEntry { net, port }),
            Err(_) => hosts.push((host, port)),
        }
    }
    Ok((garden, hosts))
}

/// Resolves `hosts`, each given [`RESOLVE_TIMEOUT`]: their addresses on their ports, and the
/// hosts that did not resolve (each logged with why).
pub(super) async fn resolve_garden(hosts: &[GardenHost]) -> (Vec<GardenEntry>, Vec<GardenHost>) {
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    for (host, port) in hosts {
        let lookup = tokio::net::lookup_host((host.as_str(), *port));
        let error = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                found.extend(addrs.map(|addr| GardenEntry {
                    net: Cidr::host(addr.ip()),
                    port: *port,
                }));
                continue;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {RESOLVE_TIMEOUT:?}"),
        };
        tracing::warn!(
            host = %host,
            error = %error,
            "portal.walled_garden: cannot resolve this host (no DNS yet?); captive devices cannot reach it until it resolves, retrying in the background"
        );
        unresolved.push((host.clone(), *port));
    }
    (found, unresolved)
}

/// Resolves the garden's hosts that did not resolve at start, backing off up to a minute,
/// and adds each to the table as soon as it resolves (a fresh install of our table, which
/// replaces only the garden sets: online devices stay). Ends when all resolved, or at stop.
pub(super) async fn resolve_garden_later(
    config: GatewayConfig,
    mut garden: Vec<GardenEntry>,
    mut unresolved: Vec<GardenHost>,
    owner: Owner,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_secs(1);
    while !unresolved.is_empty() {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
        let (found, still) = resolve_garden(&unresolved).await;
        if found.is_empty() {
            continue;
        }
        garden.extend(found);
        let resolved: Vec<String> = unresolved
            .iter()
            .filter(|h| !still.contains(h))
            .map(|(host, _)| host.clone())
            .collect();
        unresolved = still;
        let installed = owner
            .replace_firewall(firewall_for(&config, garden.clone()))
            .await;
        match installed {
            Some(Ok(())) => {
                tracing::info!(hosts = ?resolved, "walled garden hosts resolved; captive devices may reach them now")
            }
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot add the resolved walled garden hosts to the table; the repair loop installs it again")
            }
            // The daemon is stopping.
            None => {}
        }
    }
}
