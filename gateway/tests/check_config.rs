//! `edgeshare-gateway check-config` as an operator meets it: the real binary, real files.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_edgeshare-gateway");

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("check-config")
        // The machine's own overrides must not leak into the test.
        .env_remove("EDGESHARE_ENV_FILE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgeshare-gateway")
}

/// `check-config` refuses `text` (exit 78), naming each of `expected`.
fn assert_refused(text: &str, expected: &[&str]) {
    let (code, err) = check_text(text);
    assert_eq!(code, 78, "{err}");
    let missing: Vec<_> = expected.iter().filter(|e| !err.contains(**e)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{err}");
}

fn check_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gateway.example.toml");
    let out = check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn the_attempts_key_per_device_and_its_old_name() {
    for key in ["attempts_per_device", "attempts_per_client"] {
        let (code, err) = check_text(&format!(
            "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[portal]\n{key} = 3\n"
        ));
        assert_eq!(code, 0, "{key}: {err}");
    }
}

#[test]
fn unknown_key() {
    let (code, err) =
        check_text("[lan]\ninterface = \"wlan0\"\ninterfase = \"x\"\n[wan]\nnat = false\n");
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("line 3: lan.interfase: unknown key"), "{err}");
    assert_eq!(
        err.matches("line ").count(),
        1,
        "exactly one problem: {err}"
    );
}

#[test]
fn wrong_type() {
    let (code, err) =
        check_text("[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[portal]\nport = \"http\"\n");
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("line 6: portal.port: invalid type: string \"http\""),
        "{err}"
    );
}

#[test]
fn missing_required_key() {
    assert_refused(
        "[wan]\nnat = false\n",
        &["lan.interface: is required but missing"],
    );
}

/// An unknown key, a wrong type, a missing key and a bad value in one file: each is named
/// by key and line, all at once.
#[test]
fn each_kind_of_mistake_names_its_key_and_line() {
    let (code, err) = check_text(
        "[lan]\n\
         [wan]\n\
         nat = \"yes\"\n\
         [portal]\n\
         port = 70000\n\
         colour = \"red\"\n\
         [codes]\n\
         source = \"cloud\"\n",
    );
    assert_eq!(code, 78, "{err}");
    for expected in [
        "line 1: lan.interface: is required but missing",
        "line 3: wan.nat: invalid type: string \"yes\", expected a boolean",
        "line 5: portal.port: invalid value: integer `70000`, expected u16",
        "line 6: portal.colour: unknown key (valid keys: ",
        "line 8: codes.source: unknown variant `cloud`, expected `local` or `backend`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn backend_required_for_backend_codes() {
    assert_refused(
        "[lan]\ninterface = \"wlan0\"\n[wan]\ninterface = \"eth0\"\n[codes]\nsource = \"backend\"\n",
        &["backend: section is required"],
    );
}

#[test]
fn several_problems_are_listed_together() {
    assert_refused(
        "[lan]\ninterface = \"this-name-is-far-too-long\"\n[portal]\nport = 0\n[codes]\nsource = \"cloud\"\n",
        &[
            "line 6: codes.source: unknown variant `cloud`",
            // Range rules still run beside the type error.
            "line 4: portal.port: must be a port number",
            "wan.interface: is required while wan.nat is on",
        ],
    );

    assert_refused(
        "[lan]\ninterface = \"this-name-is-far-too-long\"\nmax_clients = 0\n[portal]\nport = 0\n",
        &[
            "line 2: lan.interface: \"this-name-is-far-too-long\" is not",
            "line 3: lan.max_clients: must be from 1 to 65536",
            "wan.interface: is required while wan.nat is on",
            "line 5: portal.port: must be a port number",
        ],
    );
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(&dir.path().join("nope.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("cannot read configuration file") && err.contains("nope.toml"),
        "{err}"
    );
    // A directory is unreadable as a file too.
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn env_file_supplies_the_secret_and_env_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[lan]\ninterface = \"wlan0\"\n[wan]\ninterface = \"eth0\"\n[codes]\nsource = \"backend\"\n\
         [backend]\nurl = \"http://127.0.0.1:9\"\nemail = \"p@example.com\"\npassword = \"\"\n",
    )
    .unwrap();
    let (code, err) = check_text(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(code, 78);
    assert!(err.contains("backend.password: must not be empty"), "{err}");

    // gateway.env beside gateway.toml is read by default.
    std::fs::write(
        dir.path().join("gateway.env"),
        "EDGESHARE_BACKEND__PASSWORD=s3cret\n",
    )
    .unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The environment beats the env file.
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("EDGESHARE_PORTAL__PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EDGESHARE_PORTAL__PORT: portal.port: must be a port number"),
        "{err}"
    );
    assert!(!err.contains("s3cret"));
}

#[test]
fn secrets_never_reach_the_output() {
    let (_, err) = check_text(
        "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[backend]\nurl = \"ftp://x\"\nemail = \"e\"\npassword = \"hunter2\"\n",
    );
    assert!(err.contains("backend.url: must be an http"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // Even at trace level, where the whole config is logged.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[backend]\nurl = \"http://x\"\nemail = \"e\"\npassword = \"hunter2\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["-vv", "--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("configuration loaded"), "{all}");
    assert!(all.contains("Secret(***)"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn portal_look_problems_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let locales = dir.path().join("locales");
    std::fs::create_dir(&locales).unwrap();
    std::fs::write(
        locales.join("es.toml"),
        "[form]\ntitle = \"Conéctate\"\nlabl = \"x\"\n",
    )
    .unwrap();
    std::fs::write(locales.join("sw.toml"), "form.title = [\n").unwrap();
    let (code, err) = check_text(&format!(
        "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[portal]\nlocales_dir = \"{}\"\n\
         [portal.brand]\nlogo = \"{}\"\n[portal.brand.colors]\naccent = \"#0b4f9c;}}\"\n",
        locales.display(),
        dir.path().join("missing.png").display(),
    ));
    assert_eq!(code, 78, "{err}");
    for want in [
        format!(
            "portal.locales_dir: {}: unknown key `form.labl`",
            locales.join("es.toml").display()
        ),
        format!(
            "portal.locales_dir: {}: not valid TOML",
            locales.join("sw.toml").display()
        ),
        format!(
            "portal.brand.logo: {}: cannot read",
            dir.path().join("missing.png").display()
        ),
        "portal.brand.colors.accent: \"#0b4f9c;}\" is not a colour".to_owned(),
    ] {
        assert!(err.contains(&want), "{want:?} not in {err}");
    }
}

/// What `check-config` reports about the portal's own files does not keep `run` from
/// loading the configuration: the portal serves without the bad file.
#[test]
fn a_bad_portal_file_fails_check_config_but_not_loading_for_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let locales = dir.path().join("locales");
    std::fs::create_dir(&locales).unwrap();
    std::fs::write(locales.join("sw.toml"), "form.title = [\n").unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[portal]\nlocales_dir = \"{}\"\n",
            locales.display()
        ),
    )
    .unwrap();
    let loaded =
        edgeshare_shared::config::load::<edgeshare_gateway::config::GatewayConfig>(&path, None);
    assert!(loaded.is_ok(), "{loaded:?}");
    let checked = edgeshare_shared::config::load_for_check::<
        edgeshare_gateway::config::GatewayConfig,
    >(&path, None);
    let err = checked
        .expect_err("check-config reports the file")
        .to_string();
    assert!(
        err.contains("portal.locales_dir") && err.contains("sw.toml"),
        "{err}"
    );
}

/// Other accounts' codes: `codes.own_codes_only` of older configs still loads, `false` is
/// warned about (it no longer turns serving on), a contradiction and a re-check interval
/// past 30 s are problems named by key.
#[test]
fn other_accounts_codes_keys() {
    let base = "[lan]\ninterface = \"wlan0\"\n[wan]\nnat = false\n[codes]\n";
    let (code, err) = check_text(&format!("{base}own_codes_only = false\n"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: codes.own_codes_only is replaced by codes.serve_other_accounts"),
        "{err}"
    );
    let (code, err) = check_text(&format!("{base}own_codes_only = true\n"));
    assert_eq!((code, err.contains("warning")), (0, false), "{err}");
    let (code, err) = check_text(&format!(
        "{base}own_codes_only = true\nserve_other_accounts = true\n"
    ));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("codes.own_codes_only: contradicts"), "{err}");
    let (code, err) = check_text(&format!("{base}recheck_every = \"31s\"\n"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("codes.recheck_every: must be from 1s to 30s"),
        "{err}"
    );
    let (code, err) = check_text(&format!(
        "{base}serve_other_accounts = true\nrecheck_every = \"30s\"\nlist_refresh = \"2m\"\n"
    ));
    assert_eq!(code, 0, "{err}");
}

/// `run` refuses a dashboard listening on the LAN's network (it would face the consumers):
/// `check-config` refuses it too, by the same rule, naming the key. Loopback plays the LAN
/// here (127.0.0.1/8 is on `lo` on every host).
#[test]
fn a_dashboard_on_the_lans_network_is_refused_naming_the_key() {
    let on_lan =
        "[lan]\ninterface = \"lo\"\n[wan]\nnat = false\n[dashboard]\nlisten = \"127.0.0.1:8090\"\n";
    let (code, err) = check_text(&format!("{on_lan}password = \"long enough password\"\n"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("dashboard.listen: 127.0.0.1:8090 is on lan.interface lo"),
        "{err}"
    );
    // Without a password the dashboard is off: nothing listens, nothing to refuse.
    let (code, err) = check_text(on_lan);
    assert_eq!(code, 0, "{err}");
}
