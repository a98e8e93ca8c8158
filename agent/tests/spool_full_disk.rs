//! A full disk under the spool (a small tmpfs this test mounts and unmounts): every sample
//! that cannot be written must be counted as lost in the metrics, and none lost uncounted.
//! Needs root (mount); skips with a message when not root, fails in CI.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

#[path = "../../gateway/tests/support/mod.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeshare_agent::metrics::Metrics;
use edgeshare_agent::outbox::Outbox;
use edgeshare_agent::spool::{Kind, SpoolLimits};
use edgeshare_shared::backend::depin::Reading;

const SAMPLES: u64 = 745;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _base: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join(netns::unique_name("spool"));
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            dir.display()
        );
        SmallDisk { dir, _base: base }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn reading(n: u64) -> Reading {
    let mut data = serde_json::Map::new();
    data.insert("n".into(), n.into());
    data.insert("cpu_percent".into(), 12.5.into());
    data.insert("temperature_c".into(), 48.25.into());
    Reading {
        device_id: "pi-kitchen".into(),
        timestamp: time::OffsetDateTime::now_utc(),
        data,
    }
}

#[test]
fn samples_lost_on_a_full_disk_are_counted_in_the_metrics() {
    if !netns::require_root() {
        return;
    }
    let disk = SmallDisk::mount("64k");
    // The spool's own bound is far above the disk: the disk fills first, as on a full card.
    let (mut outbox, _) = Outbox::open(disk.path(), SpoolLimits::with_max_bytes(16 << 20)).unwrap();
    let metrics = Metrics::default();
    let mut failed = 0u64;
    for n in 1..=SAMPLES {
        // Offline: every sample goes to the disk.
        if outbox.push(Kind::Sensor, reading(n)).is_err() {
            failed += 1;
        }
        // Syncing as the daemon does; a failure there is the disk's, counted with the push.
        let _ = outbox.sync();
    }
    metrics.set_outbox(outbox.stats());
    let text = metrics.render();
    let counted = text
        .lines()
        .find_map(|l| l.strip_prefix("edgeshare_agent_spool_lost_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no spool_lost_total in:\n{text}"));
    outbox.set_online(true).unwrap_or(());
    let mut kept = 0u64;
    loop {
        let batch = outbox.next_batch(100).unwrap();
        if batch.is_empty() {
            break;
        }
        kept += batch.len() as u64;
    }
    let lost = SAMPLES - kept;
    println!(
        "spool on a full disk: {SAMPLES} samples, {kept} kept, {lost} lost, {counted} counted as lost, {} lost uncounted",
        lost.saturating_sub(counted)
    );
    assert!(
        failed > 0,
        "the disk never filled: the fault was not reproduced"
    );
    assert_eq!(counted, failed);
    assert_eq!(
        lost, counted,
        "every lost sample is counted, and only those"
    );
}
