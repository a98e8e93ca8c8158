//! The ledger stays readable by the agent's group under the gateway's systemd sandbox:
//! `UMask=0077` (every new file 0600) and no set-group-ID directory (`RestrictSUIDSGID=yes`).
//!
//! A test binary of its own because it sets the process's umask, which would race with the
//! file modes of tests running beside it.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use edgeshare_shared::ledger::{LedgerLimits, LedgerReader, LedgerWriter, UsageUpdate};

/// A group other than the test's own when it runs as root (so the change of group is seen),
/// the test's own group otherwise (the only one an unprivileged owner may give a file).
fn reader_gid() -> u32 {
    if rustix::process::geteuid().is_root() {
        65_534 // nogroup
    } else {
        rustix::process::getgid().as_raw()
    }
}

fn update(session: &str, up: u64, ended: bool) -> UsageUpdate {
    UsageUpdate {
        session: session.to_owned(),
        code: "ABCD2345".to_owned(),
        up,
        down: up * 10,
        ended: ended.then(|| "quota".to_owned()),
        consumer: None,
    }
}

/// `(mode & 0o7777, gid)` of every entry in `dir`, and of `dir` itself, by name.
fn modes(dir: &Path) -> Vec<(String, u32, u32)> {
    let describe = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.permissions().mode() & 0o7777, meta.gid())
    };
    let (mode, gid) = describe(dir);
    let mut all = vec![(".".to_owned(), mode, gid)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (mode, gid) = describe(&path);
        all.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            mode,
            gid,
        ));
    }
    all.sort();
    all
}

#[test]
fn every_file_the_writer_makes_is_group_readable_under_a_strict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let gid = reader_gid();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let limits = LedgerLimits {
        segment_bytes: 400,
        max_bytes: 1_200,
        retention: Duration::from_secs(0),
    };

    // What an earlier version left: a set-group-ID directory and a 0600 segment.
    {
        let mut old = LedgerWriter::open(&dir, limits).unwrap();
        old.append_at(1_000, &[update("s-old", 1, false)]).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
    assert!(
        modes(&dir)
            .iter()
            .skip(1)
            .all(|(_, mode, _)| *mode == 0o600),
        "the umask makes files 0600 without the fix: {:?}",
        modes(&dir)
    );

    let mut writer = LedgerWriter::open(&dir, limits).unwrap();
    writer.share_with_group(gid).unwrap();
    // Enough batches to rotate segments several times and to compact the closed ones (ended
    // sessions past their retention are dropped, so compaction rewrites files).
    for i in 0..40u64 {
        let session = format!("s-{}", i / 4);
        writer
            .append_at(2_000 + i, &[update(&session, i + 1, i % 4 == 3)])
            .unwrap();
    }
    let stats = writer.stats();
    assert!(stats.rotations >= 3, "rotated: {stats:?}");
    assert!(stats.compactions >= 1, "compacted: {stats:?}");

    for (name, mode, file_gid) in modes(&dir) {
        let want = if name == "." { 0o750 } else { 0o640 };
        assert_eq!(
            (mode, file_gid),
            (want, gid),
            "{name}: mode {mode:o}, group {file_gid}"
        );
    }
    let mut reader = LedgerReader::open(&dir).unwrap();
    assert!(!reader.read_after(0).unwrap().is_empty());
}
