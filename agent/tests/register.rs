//! `edgeshare-agent register` as an operator meets it: the real binary against the stand-in,
//! run twice (registered, then already registered), with a wrong password, and without
//! `[stream]`.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use std::path::Path;

use edgeshare_standin::Standin;
use support::standin;

const BIN: &str = env!("CARGO_BIN_EXE_edgeshare-agent");

/// Runs `register` with `config` written to a file; returns (exit code, stdout, stderr).
async fn register(dir: &Path, config: &str) -> (i32, String, String) {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("register")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config for producer `pi-42` with `password`, at the auth paths under
/// `/depin/api/auth/` (configurable, as the platform's documents disagree).
fn config(standin: &Standin, password: &str) -> String {
    let base = standin.base_url();
    format!(
        "[device]\nid = \"pi-42\"\n\n[stream]\nauth_url = \"{base}\"\nws_url = \"{ws}/producer\"\nusername = \"pi-42-producer\"\npassword = \"{password}\"\n\n[stream.paths]\nlogin = \"/depin/api/auth/login\"\nregister = \"/depin/api/auth/register\"\n",
        ws = base.replacen("http", "ws", 1)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_then_with_a_wrong_password() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();

    let (code, out, err) = register(dir.path(), &config(&standin, "Pi@secret-1")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered (user id"), "{out}");
    assert!(!out.contains("already"), "{out}");
    let sent = standin
        .received()
        .into_iter()
        .find(|r| r.path == "/depin/api/auth/register")
        .unwrap();
    assert_eq!(
        sent.body,
        serde_json::json!({"username": "pi-42-producer", "password": "Pi@secret-1", "role": "producer", "device_id": "pi-42"})
    );

    let (code, out, err) = register(dir.path(), &config(&standin, "Pi@secret-1")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already registered"), "{out}");
    let answered: Vec<_> = standin
        .received()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        answered[1..],
        [
            ("/depin/api/auth/register".to_owned(), Some(409)),
            ("/depin/api/auth/login".to_owned(), Some(200))
        ],
        "the second run verified the existing account by logging in"
    );

    let (code, out, err) = register(dir.path(), &config(&standin, "Wrong@pass")).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("pi-42-producer is registered already, but the configured password is refused: set stream.password"),
        "{err}"
    );
    for text in [&out, &err] {
        assert!(
            !text.contains("Pi@secret-1") && !text.contains("Wrong@pass"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_without_a_stream_section_is_a_config_error() {
    let standin = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[device]\nid = \"pi-42\"\n\n[telemetry]\nurl = \"{}\"\nemail = \"edge@example.com\"\npassword = \"Edge@123\"\ntenant = \"tenant-edge\"\n",
        standin.base_url()
    );
    let (code, _, err) = register(dir.path(), &text).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("stream: is required by `register`"), "{err}");
    assert!(standin.received().is_empty());
}
