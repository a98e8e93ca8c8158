//! System data from sysinfo: CPU, memory, load, uptime, disks, network totals and rates,
//! temperatures.

use std::time::Instant;

use serde_json::{Map, Value, json};
use sysinfo::{Components, Disks, Networks, System};

/// Keeps sysinfo's state between samples: CPU usage and network rates are measured over
/// the time between two refreshes.
#[derive(Debug)]
pub struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
    components: Components,
    last: Instant,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let mut system = System::new();
        // A first CPU reading, so the first sample's usage covers one interval.
        system.refresh_cpu_usage();
        Sampler {
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
            last: Instant::now(),
        }
    }

    /// One sample's `data`.
    pub fn sample(&mut self) -> Map<String, Value> {
        let elapsed = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        self.components.refresh(true);

        let load = System::load_average();
        let mut data = Map::new();
        data.insert(
            "cpu_percent".into(),
            json!(round2(f64::from(self.system.global_cpu_usage()))),
        );
        data.insert(
            "memory_total_bytes".into(),
            self.system.total_memory().into(),
        );
        data.insert("memory_used_bytes".into(), self.system.used_memory().into());
        data.insert(
            "memory_available_bytes".into(),
            self.system.available_memory().into(),
        );
        data.insert("load_1".into(), json!(load.one));
        data.insert("load_5".into(), json!(load.five));
        data.insert("load_15".into(), json!(load.fifteen));
        data.insert("uptime_seconds".into(), System::uptime().into());

        let mut disks = Map::new();
        for disk in self.disks.list() {
            disks.insert(
                disk.mount_point().display().to_string(),
                json!({"total_bytes": disk.total_space(), "available_bytes": disk.available_space()}),
            );
        }
        data.insert("disks".into(), Value::Object(disks));

        // Loopback carries no uplink traffic.
        let interfaces = self
            .networks
            .list()
            .iter()
            .filter(|(name, _)| *name != "lo");
        let (mut rx, mut tx, mut rx_now, mut tx_now) = (0u64, 0u64, 0u64, 0u64);
        for (_, net) in interfaces {
            rx += net.total_received();
            tx += net.total_transmitted();
            rx_now += net.received();
            tx_now += net.transmitted();
        }
        data.insert("net_rx_bytes".into(), rx.into());
        data.insert("net_tx_bytes".into(), tx.into());
        data.insert(
            "net_rx_bytes_per_second".into(),
            json!(round2(rx_now as f64 / elapsed)),
        );
        data.insert(
            "net_tx_bytes_per_second".into(),
            json!(round2(tx_now as f64 / elapsed)),
        );

        let mut temperatures = Map::new();
        for component in self.components.list() {
            if let Some(celsius) = component.temperature().filter(|t| t.is_finite()) {
                temperatures.insert(
                    component.label().to_owned(),
                    json!(round2(f64::from(celsius))),
                );
            }
        }
        data.insert("temperatures".into(), Value::Object(temperatures));
        data
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_every_field_and_sane_values() {
        let mut sampler = Sampler::new();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let data = sampler.sample();
        for key in [
            "cpu_percent",
            "memory_total_bytes",
            "memory_used_bytes",
            "load_1",
            "uptime_seconds",
            "disks",
            "net_rx_bytes",
            "net_tx_bytes_per_second",
            "temperatures",
        ] {
            assert!(data.contains_key(key), "{key} missing from {data:?}");
        }
        let cpu = data["cpu_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        let total = data["memory_total_bytes"].as_u64().unwrap();
        assert!(total > 0);
        assert!(data["memory_used_bytes"].as_u64().unwrap() <= total);
        assert!(data["uptime_seconds"].as_u64().unwrap() > 0);
    }
}
