//! Unit tests of the daemon's state with a [`MemoryFirewall`]: accounting, enforcement,
//! persistence and the rebuild. The real kernel and binary are tested in `gateway/tests`.

use std::collections::HashMap;
use std::time::Duration;

use edgeshare_shared::code::AccessCode;
use edgeshare_shared::ledger::{LedgerLimits, LedgerWriter, UsageRecord};

use super::owner::{Context, handle_control};
use super::persist::{Persisted, SAVE_EVERY, load_state};
use super::state::State;
use super::{quota_id, session_id};
use crate::codes::{CodeStore, Verdict};
use crate::control::{Reply, Request};
use crate::core::{Core, Grant, Policy};
use crate::firewall::{Call, Firewall, MemoryFirewall, SessionQuota};
use crate::net::test_client as client;
use crate::net::{Client, Millis};
use crate::refusal::Refusal;

const MB: u64 = 1_048_576;

fn code(text: &str) -> AccessCode {
    AccessCode::parse(text).unwrap()
}

fn grant(text: &str, bytes: u64) -> Grant {
    Grant {
        code: code(text),
        remaining_bytes: bytes,
        expires_at: None,
        consumer: None,
        other_account: false,
    }
}

fn state(firewall: &MemoryFirewall, dir: &tempfile::TempDir) -> State {
    let mut firewall_box: Box<dyn Firewall> = Box::new(firewall.clone());
    firewall_box.install().unwrap();
    let file = dir.path().join("sessions.json");
    let mut state = State::restored(Policy::default(), None, firewall_box, file, Millis(0)).0;
    state.books.with_ledger(ledger(dir));
    state
}

fn ledger(dir: &tempfile::TempDir) -> LedgerWriter {
    LedgerWriter::open(&dir.path().join("ledger"), LedgerLimits::default()).unwrap()
}

/// Each session's last ledger record.
fn ledger_latest(dir: &tempfile::TempDir) -> Vec<UsageRecord> {
    let mut reader =
        edgeshare_shared::ledger::LedgerReader::open(&dir.path().join("ledger")).unwrap();
    let mut latest: HashMap<String, UsageRecord> = HashMap::new();
    for record in reader.read_after(0).unwrap() {
        latest.insert(record.session.clone(), record);
    }
    let mut records: Vec<_> = latest.into_values().collect();
    records.sort_by_key(|r| r.seq);
    records
}

/// The daemon starting again from `saved` at `now`, as `run` does.
fn restart(fw: &MemoryFirewall, dir: &tempfile::TempDir, saved: Persisted, now: Millis) -> State {
    let file = dir.path().join("sessions.json");
    let (mut state, actions) = State::restored(
        Policy::default(),
        Some(saved),
        Box::new(fw.clone()),
        file,
        now,
    );
    state.books.with_ledger(ledger(dir));
    state.resume(actions, now, None);
    state
}

fn login(state: &mut State, who: Client, text: &str, bytes: u64, now: Millis) {
    let actions = state
        .core
        .accept_code(who, grant(text, bytes), now)
        .unwrap();
    state.apply(actions, now, None);
}

fn used(state: &State) -> u64 {
    state.core.sessions().iter().map(|s| s.used_bytes).sum()
}

#[test]
fn kernel_counters_reach_the_core_as_deltas_and_the_quota_cuts_off() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let now = Millis(1_000);
    login(&mut state, client(2), "ABCD2345", MB, now);
    assert_eq!(fw.allowed(), vec![client(2)]);

    fw.set_counters(&client(2), 300_000, 200_000);
    state.tick(Millis(2_000), None);
    assert_eq!(used(&state), 500_000);
    fw.set_counters(&client(2), 310_000, 300_000);
    state.tick(Millis(3_000), None);
    assert_eq!(used(&state), 610_000, "only the growth is added");

    fw.set_counters(&client(2), 700_000, 400_000);
    state.tick(Millis(4_000), None);
    assert!(fw.allowed().is_empty(), "over quota: cut off");
    assert!(state.books.is_urgent(), "a session change is saved at once");
}

#[test]
fn a_counter_that_went_back_counts_from_zero() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
    fw.set_counters(&client(2), 500, 0);
    state.tick(Millis(2_000), None);
    // The element was re-added (a repair, a re-allow): its counter restarted.
    fw.set_counters(&client(2), 100, 0);
    state.tick(Millis(3_000), None);
    assert_eq!(used(&state), 600);
}

/// The agent tells a restarted gateway by its instance, and a lost flow by the idle time.
#[test]
fn the_flows_reply_names_the_gateways_run_and_its_idle_time() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let context = Context {
        lan: "lan0".into(),
        portal_url: "http://10.66.0.1:8080/".into(),
        codes: "local",
        started: Millis(1_765_000_000_123),
        flow_idle_ms: 90_000,
        store: None,
        backend: None,
        notifier: Default::default(),
    };
    let Reply::Ok(reply) = handle_control(&mut state, &context, Request::Flows) else {
        panic!("flows refused");
    };
    let flows: edgeshare_shared::control::Flows = serde_json::from_value(reply).unwrap();
    assert_eq!(flows.instance, Some(1_765_000_000_123));
    assert_eq!(flows.flow_idle_ms, Some(90_000));

    // What the previous run kept comes first, once, under that run's instance.
    let kept = crate::report::Handover {
        instance: 1_764_999_000_000,
        connections: Vec::new(),
    };
    state.meters.keep_handover(Some(kept));
    let instance = |reply: Reply| match reply {
        Reply::Ok(value) => value["instance"].as_u64(),
        Reply::Error(err) => panic!("{err}"),
    };
    let first = handle_control(&mut state, &context, Request::Flows);
    assert_eq!(instance(first), Some(1_764_999_000_000));
    let next = handle_control(&mut state, &context, Request::Flows);
    assert_eq!(instance(next), Some(1_765_000_000_123));
}

#[test]
fn the_last_bytes_are_read_before_a_kick() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let context = Context {
        lan: "lan0".into(),
        portal_url: "http://10.66.0.1:8080/".into(),
        codes: "local",
        started: Millis(0),
        flow_idle_ms: 120_000,
        store: None,
        backend: None,
        notifier: Default::default(),
    };
    login(&mut state, client(2), "ABCD2345", 100 * MB, Millis::now());
    fw.set_counters(&client(2), 4_000, 1_000);
    let reply = handle_control(&mut state, &context, Request::Kick { mac: client(2).mac });
    assert_eq!(reply, Reply::Ok(serde_json::json!({ "kicked": 1 })));
    assert!(fw.allowed().is_empty());
    assert_eq!(used(&state), 5_000, "bytes before the kick are not lost");

    let reply = handle_control(&mut state, &context, Request::Kick { mac: client(9).mac });
    assert!(
        matches!(reply, Reply::Error(ref m) if m.contains("no online device")),
        "{reply:?}"
    );

    let Reply::Ok(clients) = handle_control(&mut state, &context, Request::Clients) else {
        panic!("clients failed");
    };
    assert_eq!(clients[0]["used_bytes"], 5_000);
}

#[test]
fn a_login_is_on_disk_before_it_is_confirmed() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    state.persist(Millis(1_000));
    let saved: Persisted =
        serde_json::from_slice(&std::fs::read(dir.path().join("sessions.json")).unwrap()).unwrap();
    let (core, _) = Core::restore(Policy::default(), saved.core, saved.saved_at);
    assert_eq!(core.allowed().len(), 1);

    // Usage alone waits for the interval; a session change does not.
    fw.set_counters(&client(2), 10, 0);
    state.tick(Millis(2_000), None);
    state.persist(Millis(2_000));
    assert!(state.books.is_dirty(), "usage only: saved later");
    state.persist(Millis(1_000 + SAVE_EVERY.as_millis() as u64));
    assert!(!state.books.is_dirty());
}

/// A small tmpfs of the test's own, unmounted on drop: a disk that fills up.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// `None` (and "skipped") when not root; in CI (`CI=true`) it must not skip.
    fn mount() -> Option<SmallDisk> {
        if !rustix::process::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root in CI"
            );
            eprintln!("skipped: needs root (mount)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", dir.path().display());
        Some(SmallDisk(dir))
    }

    /// Takes every free byte.
    fn fill(&self) {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(self.0.path().join("filler")).unwrap();
        while filler.write_all(&[0; 4096]).is_ok() {}
        let _ = filler.write_all(&[0; 1]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// On a full disk a device already online with one code enters another: the login is
/// refused (not saved), the kernel is left as it was, and after a `kill -9` every byte the
/// device used goes to the code it really had; the refused one is untouched.
#[test]
fn a_login_that_cannot_be_saved_is_refused_and_undone() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let fw = MemoryFirewall::new();
    let mut state = state(&fw, &disk.0);
    state
        .login(client(2), grant("AAAA2345", 50 * MB), Millis(1_000), None)
        .unwrap();
    fw.set_counters(&client(2), 1_000, 10_000);
    state.tick(Millis(2_000), None);
    state.save(Millis(2_000)).unwrap();

    disk.fill();
    let calls = fw.calls().len();
    let refused = state.login(client(2), grant("BBBB2345", 50 * MB), Millis(3_000), None);
    assert!(matches!(refused, Err(Refusal::NotSaved)), "{refused:?}");
    let changed: Vec<Call> = fw.calls()[calls..]
        .iter()
        .filter(|c| !matches!(c, Call::Clients | Call::IsInstalled | Call::ListQuotas))
        .cloned()
        .collect();
    assert!(changed.is_empty(), "the kernel was changed: {changed:?}");
    assert_eq!(fw.allowed(), vec![client(2)]);
    let sessions = state.core.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].code.as_str(), "AAAA2345");

    // The device goes on under its code; the daemon is killed and starts again.
    fw.set_counters(&client(2), 3_000, 40_000);
    drop(state);
    let saved: Persisted =
        serde_json::from_slice(&std::fs::read(disk.0.path().join("sessions.json")).unwrap())
            .unwrap();
    let state = restart(&fw, &disk.0, saved, Millis(4_000));
    let sessions = state.core.sessions();
    let of = |code: &str| {
        sessions
            .iter()
            .filter(|s| s.code.as_str() == code)
            .map(|s| s.used_bytes)
            .sum::<u64>()
    };
    let wrong = of("BBBB2345");
    println!(
        "login on a full disk: refused (not saved); bytes after kill -9: {} to the device's code, {wrong} to the refused one; usage lost {}",
        of("AAAA2345"),
        43_000 - of("AAAA2345")
    );
    assert_eq!(wrong, 0);
    assert_eq!(of("AAAA2345"), 43_000);
}

/// `sessions.json` is damaged after a code was used up and another half used (a local
/// store, whose figure for the second lags behind). Rebuilt from the ledger, the used-up
/// code is refused and the other delivers exactly its size over both of its sessions.
#[test]
fn with_sessions_json_damaged_the_ledger_rebuilds_what_was_used() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path());
    let made = store
        .create(50 * MB, Duration::from_secs(3600), 2, Millis(0))
        .unwrap();
    let (used_up, half) = (made[0].code.clone(), made[1].code.clone());
    let check = |code: &AccessCode, now: Millis| match store.check(code, now) {
        Verdict::Granted(grant) => grant,
        other => panic!("{other:?}"),
    };
    let mut state = state(&fw, &dir);
    state
        .login(
            client(2),
            check(&used_up, Millis(1_000)),
            Millis(1_000),
            Some(&store),
        )
        .unwrap();
    fw.set_counters(&client(2), MB, 49 * MB);
    state.tick(Millis(2_000), Some(&store));
    state
        .login(
            client(3),
            check(&half, Millis(3_000)),
            Millis(3_000),
            Some(&store),
        )
        .unwrap();
    fw.set_counters(&client(3), MB, 19 * MB);
    state.tick(Millis(4_000), Some(&store));
    state.sync_store(&store, Millis(4_000));
    fw.set_counters(&client(3), MB, 29 * MB);
    state.tick(Millis(5_000), Some(&store));
    state.save(Millis(5_000)).unwrap();
    drop(state);

    std::fs::write(dir.path().join("sessions.json"), b"{\"core\": {\"sessi").unwrap();
    let file = dir.path().join("sessions.json");
    let saved = load_state(&file).unwrap();
    assert!(saved.is_none());
    let (mut state, actions) = State::restored(
        Policy::default(),
        saved,
        Box::new(fw.clone()),
        file,
        Millis(6_000),
    );
    state.books.with_ledger(ledger(&dir));
    state.rebuild_from_ledger(Millis(6_000), Some(&store));
    state.resume(actions, Millis(6_000), Some(&store));

    let again = state
        .core
        .accept_code(client(4), grant(used_up.as_str(), 50 * MB), Millis(7_000));
    let refused = matches!(again, Err(Refusal::UsedUp));
    // The half-used code, entered again, continues where it was: what it used before and
    // what it may use now add up to its size.
    state
        .login(
            client(5),
            check(&half, Millis(8_000)),
            Millis(8_000),
            Some(&store),
        )
        .unwrap();
    let used_before: u64 = ledger_latest(&dir)
        .iter()
        .filter(|r| r.code == half.as_str())
        .map(|r| r.total())
        .sum();
    let left = state
        .core
        .status_of(client(5).ip, Millis(8_000))
        .unwrap()
        .bytes_left;
    let allowed = used_before + left;
    println!(
        "sessions.json damaged: used-up code refused again: {refused}; a 50 MB code half used allows {:.1} MB in all ({:.1} used + {:.1} left)",
        allowed as f64 / MB as f64,
        used_before as f64 / MB as f64,
        left as f64 / MB as f64
    );
    assert!(refused, "{again:?}");
    assert_eq!(used_before, 30 * MB);
    assert_eq!(allowed, 50 * MB);
}

/// `sessions.json` is damaged by a crash while devices go on using the internet: the
/// bytes the kernel counted after the ledger's last record (while the daemon was down)
/// are billed all the same, nothing twice, and a code used up meanwhile stays used up.
#[test]
fn with_sessions_json_damaged_the_bytes_counted_while_down_are_kept() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let store = CodeStore::new(dir.path());
    let made = store
        .create(50 * MB, Duration::from_secs(3600), 2, Millis(0))
        .unwrap();
    let (busy, finishing) = (made[0].code.clone(), made[1].code.clone());
    let check = |code: &AccessCode, now: Millis| match store.check(code, now) {
        Verdict::Granted(grant) => grant,
        other => panic!("{other:?}"),
    };
    let mut state = state(&fw, &dir);
    for (client, code) in [(client(2), &busy), (client(3), &finishing)] {
        state
            .login(
                client,
                check(code, Millis(1_000)),
                Millis(1_000),
                Some(&store),
            )
            .unwrap();
    }
    assert!(fw.forward(&client(2), MB, 9 * MB));
    assert!(fw.forward(&client(3), MB, 39 * MB));
    state.tick(Millis(2_000), Some(&store));
    state.save(Millis(2_000)).unwrap();
    // kill -9: the kernel goes on letting both through; the second uses its code up.
    drop(state);
    assert!(fw.forward(&client(2), 0, 7 * MB));
    assert!(fw.forward(&client(3), 0, 20 * MB));
    assert!(fw.quota_exhausted(&quota_id(&finishing)));

    let file = dir.path().join("sessions.json");
    std::fs::write(&file, b"{\"core\": {\"sessi").unwrap();
    let saved = load_state(&file).unwrap();
    assert!(saved.is_none());
    let (mut state, actions) = State::restored(
        Policy::default(),
        saved,
        Box::new(fw.clone()),
        file,
        Millis(6_000),
    );
    state.books.with_ledger(ledger(&dir));
    state.rebuild_from_ledger(Millis(6_000), Some(&store));
    state.resume(actions, Millis(6_000), Some(&store));
    state.save(Millis(6_000)).unwrap();

    let total = |code: &AccessCode| -> u64 {
        ledger_latest(&dir)
            .iter()
            .filter(|r| r.code == code.as_str())
            .map(|r| r.total())
            .sum()
    };
    println!(
        "sessions.json damaged, 7 MB used while down: ledger {:.1} MB (17 used); used up while down: {:.1} MB (50)",
        total(&busy) as f64 / MB as f64,
        total(&finishing) as f64 / MB as f64
    );
    assert_eq!(total(&busy), 17 * MB);
    assert_eq!(total(&finishing), 50 * MB);
    assert_eq!(state.core.unattributed_bytes(), 0, "nothing counted twice");
    assert!(matches!(
        state
            .core
            .accept_code(client(4), grant(finishing.as_str(), 50 * MB), Millis(7_000)),
        Err(Refusal::UsedUp)
    ));
    // Their devices enter their code again; no quota is left behind to block them.
    assert!(fw.allowed().is_empty());
    assert!(fw.quotas().is_empty(), "{:?}", fw.quotas());
}

#[test]
fn a_code_revoked_in_the_store_is_cut_off_at_the_next_sync() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let store = CodeStore::new(dir.path());
    let made = store
        .create(MB, Duration::from_secs(3600), 2, Millis::now())
        .unwrap();
    let now = Millis::now();
    login(&mut state, client(2), made[0].code.as_str(), MB, now);
    login(&mut state, client(3), made[1].code.as_str(), MB, now);
    fw.set_counters(&client(2), 700, 0);
    // Revoked while the daemon did not hear about it.
    store.revoke(&made[0].code).unwrap();
    state.sync_store(&store, now);
    assert_eq!(fw.allowed(), vec![client(3)]);
    let codes = store.list().unwrap();
    assert_eq!(
        codes
            .iter()
            .find(|c| c.code == made[0].code)
            .unwrap()
            .used_bytes,
        700
    );
}

#[test]
fn each_session_gets_a_kernel_quota_that_follows_its_devices() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    state.core = Core::new(Policy {
        devices_per_code: 2,
        ..Policy::default()
    });
    let id = quota_id(&code("ABCD2345"));
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    assert_eq!(fw.quotas()[&id].limit_bytes, MB);
    assert_eq!(fw.quota_session(&client(2)), Some(id.clone()));

    // Usage alone leaves the kernel's count running.
    fw.set_counters(&client(2), 300_000, 0);
    state.tick(Millis(2_000), None);
    assert_eq!(fw.quotas()[&id].limit_bytes, MB);

    // A second device: the quota is set again for both, starting at what was used.
    login(&mut state, client(3), "ABCD2345", MB, Millis(3_000));
    assert_eq!(
        fw.quotas()[&id],
        SessionQuota {
            limit_bytes: MB,
            used_bytes: 300_000
        }
    );
    assert_eq!(fw.quota_session(&client(3)), Some(id.clone()));

    // The quota is reached: the session ends and its kernel quota goes with it, so the
    // captive devices keep their DNS and portal.
    fw.set_counters(&client(3), MB, 0);
    state.tick(Millis(4_000), None);
    assert!(fw.allowed().is_empty());
    assert!(fw.quotas().is_empty(), "{:?}", fw.quotas());
    assert_eq!(fw.quota_session(&client(2)), None);
}

#[test]
fn a_session_ends_when_the_kernel_quota_is_used_up_a_packet_short() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let id = quota_id(&code("ABCD2345"));
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    let calls = || {
        fw.calls()
            .iter()
            .filter(|c| **c == Call::ListQuotas)
            .count()
    };

    // Far from the quota the kernel is not asked.
    fw.set_counters(&client(2), 100_000, 400_000);
    state.tick(Millis(2_000), None);
    assert_eq!(calls(), 0);
    let session = &state.core.sessions()[0];
    assert_eq!((session.used_bytes, session.up_bytes), (500_000, 100_000));

    // Less than a packet left, the kernel's quota not used up: asked, nothing ends.
    fw.set_counters(&client(2), 100_000, MB - 100_000 - 1_000);
    state.tick(Millis(3_000), None);
    assert_eq!(calls(), 1);
    assert_eq!(fw.allowed(), vec![client(2)]);

    // The kernel dropped the packet that would have passed the quota: the session ends
    // with the bytes forwarded before it, and the bytes forwarded since the last reading
    // are read before the cut.
    fw.set_counters(&client(2), 100_000, MB - 100_000 - 200);
    assert!(fw.use_quota(&id, MB));
    state.tick(Millis(4_000), None);
    assert!(fw.allowed().is_empty());
    assert!(state.core.sessions().is_empty());
    assert_eq!(
        state.core.status_of(client(2).ip, Millis(4_000)),
        None,
        "ended for good"
    );
}

#[test]
fn a_kicked_devices_quota_is_cleared_and_ids_hide_the_code() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    let actions = state.core.kick(client(2).mac, Millis(2_000));
    state.apply(actions, Millis(2_000), None);
    assert!(fw.quotas().is_empty());
    let id = quota_id(&code("ABCD2345"));
    assert_eq!(id.len(), 16);
    assert!(!id.contains("ABCD"));
    assert_eq!(id, quota_id(&code("abcd-2345")), "stable across restarts");
}

#[test]
fn every_tick_removes_strangers_and_restores_the_sessions_clients() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    // A client left in the kernel by an older run, and ours deleted by hand.
    state
        .firewall
        .allow(&client(7), Duration::from_secs(60))
        .unwrap();
    state.firewall.revoke(&client(2)).unwrap();
    state.tick(Millis(2_000), None);
    assert_eq!(fw.allowed(), vec![client(2)]);
}

#[test]
fn a_failed_allow_or_revoke_heals_at_the_next_tick_and_a_refused_login_is_not_online() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));

    // The kernel refuses the cut at the kick: the next tick cuts the device off.
    fw.fail_next(1);
    let kicked = state.core.kick(client(2).mac, Millis(2_000));
    state.apply(kicked, Millis(2_000), None);
    assert_eq!(fw.allowed(), vec![client(2)], "the revoke failed");
    state.tick(Millis(3_000), None);
    assert!(fw.allowed().is_empty(), "healed at the next tick");

    // The kernel refuses the device's elements: the login is refused, nothing online. (Two
    // failures: the batch of the login's changes, then the elements applied on their own.)
    fw.fail_next(2);
    let refused = state.login(client(3), grant("EFGH2345", MB), Millis(4_000), None);
    assert!(matches!(refused, Err(Refusal::NotEnforced)), "{refused:?}");
    assert!(
        state.core.status_of(client(3).ip, Millis(4_000)).is_none(),
        "the login is undone"
    );
    state.tick(Millis(5_000), None);
    assert!(fw.allowed().is_empty());
}

#[test]
fn a_flushed_table_is_repaired_with_its_clients() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
    fw.flush_ruleset();
    assert!(fw.allowed().is_empty());
    state.repair(Millis(2_000), None);
    assert!(fw.installed());
    assert_eq!(fw.allowed(), vec![client(2)]);
}

#[test]
fn the_ledger_is_exact_across_a_crash_between_its_write_and_the_state_save() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", 10_000, Millis(1_000));
    fw.set_counters(&client(2), 300, 2_000);
    state.tick(Millis(2_000), None);
    state.save(Millis(2_000)).unwrap();
    let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
    // More traffic; the ledger is written, then the daemon dies before sessions.json.
    fw.set_counters(&client(2), 400, 3_000);
    state.tick(Millis(3_000), None);
    let live = state.live_ledger_updates();
    state.books.write_ledger(live);
    let id = session_id(&code("ABCD2345"), Millis(1_000));
    let last = ledger_latest(&dir);
    assert_eq!(
        (last[0].session.as_str(), last[0].up, last[0].down),
        (id.as_str(), 400, 3_000)
    );
    drop(state);
    // The kernel counts on while the daemon is down.
    fw.set_counters(&client(2), 500, 4_000);
    let saved: Persisted = serde_json::from_slice(&saved).unwrap();
    let mut restarted = restart(&fw, &dir, saved, Millis(5_000));
    assert_eq!(
        used(&restarted),
        4_500,
        "the kernel's count, not ledger plus delta"
    );
    // The session reaches its quota: the ledger's last record is final and exact.
    fw.set_counters(&client(2), 600, 9_400);
    restarted.tick(Millis(6_000), None);
    let last = ledger_latest(&dir);
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].up, last[0].down), (600, 9_400));
    assert_eq!(last[0].ended.as_deref(), Some("quota used"));
    assert!(!last[0].code.is_empty());
}

/// A session a consumer signed in to: every ledger record of it names the consumer, a
/// session without one names none, and the consumer survives a restart (sessions.json) and
/// a rebuild from the ledger (sessions.json lost).
#[test]
fn the_consumer_reaches_the_ledger_and_survives_a_restart_and_a_rebuild() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let signed_in = Grant {
        consumer: Some("665f1c2ab3d4e5f601234567".to_owned()),
        ..grant("ABCD2345", 10 * MB)
    };
    state
        .login(client(2), signed_in, Millis(1_000), None)
        .unwrap();
    login(&mut state, client(3), "EFGH2345", 10 * MB, Millis(1_000));
    fw.set_counters(&client(2), 300, 2_000);
    fw.set_counters(&client(3), 100, 1_000);
    state.tick(Millis(2_000), None);
    state.save(Millis(2_000)).unwrap();
    let consumer_of = |dir: &tempfile::TempDir, code: &str| -> Vec<Option<String>> {
        let mut reader =
            edgeshare_shared::ledger::LedgerReader::open(&dir.path().join("ledger")).unwrap();
        reader
            .read_after(0)
            .unwrap()
            .into_iter()
            .filter(|r| r.code == code)
            .map(|r| r.consumer)
            .collect()
    };
    let want = Some("665f1c2ab3d4e5f601234567".to_owned());
    assert_eq!(consumer_of(&dir, "ABCD2345"), vec![want.clone()]);
    assert_eq!(consumer_of(&dir, "EFGH2345"), [None]);

    // A restart from sessions.json keeps it; so does the session's final record.
    let saved: Persisted =
        serde_json::from_slice(&serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap())
            .unwrap();
    drop(state);
    let mut restarted = restart(&fw, &dir, saved, Millis(3_000));
    let view = restarted.core.sessions();
    assert_eq!(view[0].consumer, want);
    fw.set_counters(&client(2), 400, 3_000);
    restarted.tick(Millis(4_000), None);
    restarted.save(Millis(4_000)).unwrap();
    assert_eq!(consumer_of(&dir, "ABCD2345"), [want.clone(), want.clone()]);
    drop(restarted);

    // sessions.json lost: rebuilt from the ledger, the session still counts for its
    // consumer, and its usage goes on being recorded for it.
    let file = dir.path().join("sessions.json");
    std::fs::remove_file(&file).unwrap();
    let (mut rebuilt, actions) = State::restored(
        Policy::default(),
        None,
        Box::new(fw.clone()),
        file,
        Millis(5_000),
    );
    rebuilt.books.with_ledger(ledger(&dir));
    rebuilt.rebuild_from_ledger(Millis(5_000), None);
    rebuilt.resume(actions, Millis(5_000), None);
    let session = rebuilt
        .core
        .sessions()
        .into_iter()
        .find(|s| s.code == code("ABCD2345"))
        .unwrap();
    assert_eq!(session.consumer, want);
    let other = Grant {
        consumer: Some("another".to_owned()),
        ..grant("ABCD2345", 10 * MB)
    };
    assert!(matches!(
        rebuilt.login(client(4), other, Millis(6_000), None),
        Err(Refusal::OtherAccount)
    ));
    let actions = rebuilt.core.revoke_code(&code("EFGH2345"), Millis(6_000));
    rebuilt.apply(actions, Millis(6_000), None);
    assert_eq!(consumer_of(&dir, "EFGH2345").last(), Some(&None));
}

#[test]
fn after_a_reboot_the_ledger_keeps_what_the_lost_counters_held() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
    fw.set_counters(&client(2), 300, 2_000);
    state.tick(Millis(2_000), None);
    state.save(Millis(2_000)).unwrap();
    let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
    fw.set_counters(&client(2), 700, 9_000);
    state.tick(Millis(3_000), None);
    let live = state.live_ledger_updates();
    state.books.write_ledger(live);
    drop(state);
    // A reboot: the kernel's table and its counters are gone.
    let rebooted = MemoryFirewall::new();
    let mut boxed: Box<dyn Firewall> = Box::new(rebooted.clone());
    boxed.install().unwrap();
    let saved: Persisted = serde_json::from_slice(&saved).unwrap();
    let restarted = restart(&rebooted, &dir, saved, Millis(60_000));
    assert_eq!(used(&restarted), 9_700, "raised to the ledger's totals");
    assert_eq!(rebooted.allowed(), vec![client(2)], "back online");
}

#[test]
fn saved_state_is_exact_after_a_crash() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
    fw.set_counters(&client(2), 300, 200);
    state.tick(Millis(2_000), None);
    let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
    // The daemon dies; the kernel keeps counting the client's traffic.
    drop(state);
    fw.set_counters(&client(2), 900, 600);
    let saved: Persisted = serde_json::from_slice(&saved).unwrap();
    let mut restarted = restart(&fw, &dir, saved, Millis(5_000));
    assert_eq!(
        used(&restarted),
        1_500,
        "every byte the kernel counted, once"
    );
    assert_eq!(fw.allowed(), vec![client(2)], "still online");
    fw.set_counters(&client(2), 1_000, 600);
    restarted.tick(Millis(6_000), None);
    assert_eq!(used(&restarted), 1_600, "and counting goes on from there");
}

#[test]
fn bytes_used_before_an_expiry_during_downtime_still_count() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let g = Grant {
        code: code("ABCD2345"),
        remaining_bytes: 100 * MB,
        expires_at: Some(Millis(10_000)),
        consumer: None,
        other_account: false,
    };
    let actions = state.core.accept_code(client(2), g, Millis(1_000)).unwrap();
    state.apply(actions, Millis(1_000), None);
    let saved = state.persisted(Millis(2_000));
    drop(state);
    // While the daemon is down the client uses 7 kB, then the code expires.
    fw.set_counters(&client(2), 5_000, 2_000);
    let restarted = restart(&fw, &dir, saved, Millis(20_000));
    assert!(fw.allowed().is_empty(), "expired: cut off");
    assert_eq!(
        restarted.core.unattributed_bytes(),
        0,
        "the 7 kB went to the session"
    );
}

#[test]
fn a_crowd_of_logins_reads_no_counters_and_one_that_moves_a_device_reads_them_first() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let reads = || fw.calls().iter().filter(|c| **c == Call::Clients).count();
    let crowd: Vec<(Client, Grant)> = (2..6)
        .map(|n| (client(n), grant(&format!("ABC{n}2345"), MB)))
        .collect();
    let results = state.logins(crowd, Millis(1_000), None);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fw.allowed().len(), 4);
    assert_eq!(reads(), 0, "new devices: no counter to read first");

    // A device moving to another code is cut from its first session: its bytes first.
    fw.set_counters(&client(2), 700, 0);
    let results = state.logins(
        vec![(client(2), grant("EFGH2345", MB))],
        Millis(2_000),
        None,
    );
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(reads(), 1);
    let first = state
        .core
        .sessions()
        .into_iter()
        .find(|s| s.code.as_str() == "ABC22345")
        .unwrap();
    assert_eq!(first.used_bytes, 700, "read before the move");
}

/// What this gateway used of each code: an ended session's bytes from the ledger, a live
/// one's from the core (ahead of its last ledger record), each session once.
#[test]
fn usage_by_code_counts_ended_sessions_from_the_ledger_and_live_ones_from_the_core() {
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
    login(&mut state, client(3), "EFGH6789", 100 * MB, Millis(1_000));
    fw.set_counters(&client(2), 3_000, 2_000);
    fw.set_counters(&client(3), 1_000, 0);
    state.tick(Millis(2_000), None);
    state.persist(Millis(60_000));
    let actions = state.core.revoke_code(&code("ABCD2345"), Millis(61_000));
    state.apply(actions, Millis(61_000), None);
    // The live session goes on past its last ledger record.
    fw.set_counters(&client(3), 5_000, 2_000);
    state.tick(Millis(62_000), None);
    let used = state.used_by_code();
    assert_eq!(used.get(&code("ABCD2345")), Some(&5_000));
    assert_eq!(used.get(&code("EFGH6789")), Some(&7_000));
    assert!(
        ledger_latest(&dir)
            .iter()
            .all(|r| r.code != "EFGH6789" || r.total() < 7_000),
        "the live session's last bytes are not in the ledger yet"
    );
}

/// Issue 22: a login from an address an online device of another session holds does not
/// take it (the holder is probed first; the neighbour guard's own tests cover the probe);
/// the same session's code, or the holder's own MAC, does.
#[test]
fn a_login_cannot_take_an_online_devices_address_until_its_holder_fails_a_probe() {
    use crate::neighbours::guard::Online;
    use crate::neighbours::{Entry, Reach};
    let fw = MemoryFirewall::new();
    let dir = tempfile::tempdir().unwrap();
    let mut state = state(&fw, &dir);
    let holder = client(2);
    state
        .login(holder, grant("ABCD2345", 10 * MB), Millis(1_000), None)
        .unwrap();
    let claimant = Client {
        mac: client(9).mac,
        ip: holder.ip,
    };
    let refused = state.login(claimant, grant("EFGH2345", 10 * MB), Millis(2_000), None);
    assert!(matches!(refused, Err(Refusal::AddressHeld)), "{refused:?}");
    assert_eq!(
        fw.allowed(),
        vec![holder],
        "the holder stays, the claimant is not let in"
    );
    // While the holder is probed the table names it for the address, whoever is at the
    // portal: a login the portal found the holder's MAC for waits too.
    let refused = state.login(holder, grant("EFGH2345", 10 * MB), Millis(2_500), None);
    assert!(matches!(refused, Err(Refusal::AddressHeld)), "{refused:?}");
    assert_eq!(
        state.core.sessions()[0].code,
        code("ABCD2345"),
        "not moved to the other code"
    );

    // The holder never answers: the kernel's entry probes it, then fails.
    let online = Online::new(state.core.online_clients());
    let probing = Entry {
        ip: holder.ip,
        mac: Some(holder.mac),
        reach: Reach::Probing,
    };
    state.lan.observed(&[probing], &online, Millis(4_500));
    let failed = Entry {
        ip: holder.ip,
        mac: None,
        reach: Reach::Unanswered,
    };
    state.lan.observed(&[failed], &online, Millis(5_500));
    state
        .login(claimant, grant("EFGH2345", 10 * MB), Millis(6_000), None)
        .unwrap();
    assert_eq!(fw.allowed(), vec![claimant], "the address moved");

    // The same session's code moves it at once (a phone's new randomised MAC).
    let again = client(5);
    state
        .login(again, grant("ABCD2345", 10 * MB), Millis(7_000), None)
        .unwrap();
    let phone = Client {
        mac: client(6).mac,
        ip: again.ip,
    };
    state
        .login(phone, grant("ABCD2345", 10 * MB), Millis(8_000), None)
        .unwrap();
    assert!(fw.allowed().contains(&phone), "{:?}", fw.allowed());
}
