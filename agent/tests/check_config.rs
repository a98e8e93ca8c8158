//! `edgeshare-agent check-config` as an operator meets it: the real binary, real files.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edgeshare-agent");

fn check_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// `check-config` accepts `text` (exit 0).
fn assert_accepted(text: &str) {
    let (code, err) = check_text(text);
    assert_eq!(code, 0, "{err}");
}

/// `check-config` refuses `text` (exit 78), naming each of `expected`.
fn assert_refused(text: &str, expected: &[&str]) {
    let (code, err) = check_text(text);
    assert_eq!(code, 78, "{err}");
    let missing: Vec<_> = expected.iter().filter(|e| !err.contains(**e)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{err}");
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.example.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&example)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_sensor_node_needs_only_device_and_stream() {
    assert_accepted(
        "[device]\nid = \"d1\"\n[stream]\nauth_url = \"http://127.0.0.1:1\"\nws_url = \"ws://127.0.0.1:1/producer\"\nusername = \"u\"\npassword = \"p\"\nframing = \"typed\"\n",
    );
}

#[test]
fn bad_files_name_their_keys() {
    assert_refused(
        "[device]\nid = \"d1\"\n[stream]\nauth_url = \"not a url\"\nws_url = \"http://x/producer\"\nusername = \"u\"\npassword = \"p\"\nframing = \"xml\"\n",
        &[
            "line 4: stream.auth_url: relative URL without a base",
            "line 5: stream.ws_url: must be a ws or wss URL",
            "line 8: stream.framing: unknown variant `xml`",
        ],
    );

    assert_refused(
        "[device]\nid = \"\"\n",
        &["line 2: device.id: must not be empty", "nothing to do"],
    );

    assert_refused(
        "[device]\nid = \"d\"\n[telemetry]\nurl = \"http://x\"\nemail = \"e\"\npassword = \"p\"\n",
        &["line 3: telemetry.tenant: is required but missing"],
    );
}

/// An unknown key, a wrong type, a missing key and a bad value in one file: each is named
/// by key and line, all at once.
#[test]
fn each_kind_of_mistake_names_its_key_and_line() {
    let (code, err) = check_text(
        "[device]\n\
         id = \"d1\"\n\
         [stream]\n\
         auth_url = \"http://127.0.0.1:1\"\n\
         ws_url = \"ws://127.0.0.1:1/producer\"\n\
         password = \"p\"\n\
         max_in_flight = \"many\"\n\
         framing = \"xml\"\n\
         colour = \"red\"\n\
         [spool]\n\
         max_bytes = -1\n",
    );
    assert_eq!(code, 78, "{err}");
    for expected in [
        "line 3: stream.username: is required but missing",
        "line 7: stream.max_in_flight: invalid type: string \"many\", expected usize",
        "line 8: stream.framing: unknown variant `xml`, expected ",
        "line 9: stream.colour: unknown key (valid keys: ",
        "line 11: spool.max_bytes: invalid value: integer `-1`, expected u64",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn the_usage_section_needs_the_backend_and_sane_values() {
    assert_refused(
        "[device]\nid = \"d\"\n[stream]\nauth_url = \"http://127.0.0.1:1\"\nws_url = \"ws://127.0.0.1:1/producer\"\nusername = \"u\"\npassword = \"p\"\n[usage]\nmin_report_bytes = 0\ninterval = \"0s\"\n",
        &[
            "usage: reports go to [backend]",
            "usage.min_report_bytes: must be at least 1",
            "usage.interval: must be longer than 0",
        ],
    );

    assert_refused(
        "[device]\nid = \"d\"\n[backend]\nurl = \"http://127.0.0.1:1\"\nemail = \"e\"\npassword = \"p\"\n[usage]\nledger = \"/tmp/l\"\ninterval = \"ten seconds\"\n",
        &["line 9: usage.interval"],
    );

    // With [backend], [usage] may be left out: the defaults apply.
    assert_accepted(
        "[device]\nid = \"d\"\n[backend]\nurl = \"http://127.0.0.1:1\"\nemail = \"e\"\npassword = \"p\"\n",
    );
}

#[test]
fn sources_are_checked_key_by_key() {
    assert_refused(
        "[device]\nid = \"d\"\n[stream]\nauth_url = \"http://127.0.0.1:1\"\nws_url = \"ws://127.0.0.1:1/producer\"\nusername = \"u\"\npassword = \"p\"\ndead_after = \"10ms\"\n\n[[source]]\nkind = \"file\"\ninterval = \"1s\"\n\n[[source]]\nkind = \"command\"\nname = \"x\"\ncommand = []\ninterval = \"10ms\"\n\n[[source]]\nkind = \"sonar\"\ninterval = \"1s\"\n",
        &[
            "stream.dead_after: must be at least 1s",
            "source.0.name: is required for this kind",
            "source.0.path: is required for kind = \"file\"",
            "source.1.command: must name a program",
            "source.1.interval: must be at least 100ms",
            "source.2.kind: unknown variant `sonar`",
        ],
    );
}

/// A password TOML reads as a number (or a boolean) is refused by its key and line, and its
/// value appears nowhere: it is still the password.
#[test]
fn a_password_that_is_not_a_string_is_refused_without_being_shown() {
    for (value, shown) in [
        ("73019264", "73019264"),
        ("7301.9264", "7301.9264"),
        ("true", "true"),
    ] {
        let (code, err) = check_text(&format!(
            "[device]\nid = \"d1\"\n[stream]\nauth_url = \"http://127.0.0.1:1\"\nws_url = \"ws://127.0.0.1:1/producer\"\nusername = \"u\"\npassword = {value}\nframing = \"typed\"\n",
        ));
        assert_eq!(code, 78, "{err}");
        assert!(err.contains("line 7: stream.password"), "{err}");
        assert!(err.contains("put it in quotes"), "{err}");
        assert!(!err.contains(shown), "the password was shown: {err}");
    }
}
