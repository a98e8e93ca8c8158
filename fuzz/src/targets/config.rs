//! `config`: arbitrary TOML text and an arbitrary env file, through
//! `edgeshare_shared::config::load` (what `--config`/`--env-file` call in both daemons) for
//! the gateway's and the agent's configuration types.
//!
//! Input: the TOML text, then optionally a line `#%% env` and the env file's text
//! (`EDGESHARE_<SECTION>__<KEY>=value` lines are overrides, as from the environment).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use edgeshare_agent::config::AgentConfig;
use edgeshare_gateway::config::GatewayConfig;
use edgeshare_shared::config::{ConfigError, Origin, Problems, Validate, load};
use serde::de::DeserializeOwned;

use crate::engine::{Target, signature};

const ENV_MARK: &[u8] = b"\n#%% env\n";

#[derive(Debug)]
pub struct ConfigTarget {
    dir: tempfile::TempDir,
    toml: PathBuf,
    env: PathBuf,
}

impl ConfigTarget {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let toml = dir.path().join("fuzz.toml");
        let env = dir.path().join("fuzz.env");
        ConfigTarget { dir, toml, env }
    }
}

impl Default for ConfigTarget {
    fn default() -> Self {
        Self::new()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Loads one configuration type and checks what holds for any outcome.
fn check<T>(toml_path: &Path, env_path: &Path, toml: &[u8], env: &[u8]) -> Result<String, String>
where
    T: DeserializeOwned + Validate + std::fmt::Debug,
{
    match load::<T>(toml_path, Some(env_path)) {
        Ok(config) => {
            // A configuration that loads passes its own validation again.
            let mut problems = Problems::default();
            config.validate(&mut problems);
            let shown = format!("{problems:?}");
            if shown != format!("{:?}", Problems::default()) {
                return Err(format!("a loaded config fails validation: {shown}"));
            }
            Ok("ok".to_owned())
        }
        Err(ConfigError::Invalid {
            source_name,
            problems,
        }) => {
            if problems.is_empty() {
                return Err("Invalid with no problems".to_owned());
            }
            let text = String::from_utf8_lossy(toml);
            let lines = text.matches('\n').count() + 1;
            for problem in &problems {
                if let Origin::Line(line) = problem.origin
                    && (line == 0 || line > lines)
                {
                    return Err(format!(
                        "problem {problem:?} points at line {line} of a {lines}-line file"
                    ));
                }
                if let Origin::Env(var) = &problem.origin
                    && !String::from_utf8_lossy(env).contains(var.as_str())
                    && std::env::var_os(var).is_none()
                {
                    return Err(format!("problem {problem:?} names a variable never set"));
                }
            }
            // The whole report renders (what the daemon prints before exiting 78).
            let report = ConfigError::Invalid {
                source_name,
                problems: problems.clone(),
            }
            .to_string();
            if report.is_empty() {
                return Err("empty report".to_owned());
            }
            let mut keys: Vec<String> = problems
                .iter()
                .map(|p| {
                    // Keys only, no values: the signature must not grow with every new value.
                    let message: String = p.message.chars().take(24).collect();
                    format!("{}:{message}", p.key)
                })
                .collect();
            keys.sort();
            Ok(keys.join(";"))
        }
        Err(ConfigError::Read { source, .. })
            if std::str::from_utf8(toml).is_err()
                && source.kind() == std::io::ErrorKind::InvalidData =>
        {
            Ok("not-utf8".to_owned())
        }
        Err(ConfigError::EnvFile { source, .. })
            if std::str::from_utf8(env).is_err()
                && source.kind() == std::io::ErrorKind::InvalidData =>
        {
            Ok("env-not-utf8".to_owned())
        }
        Err(other) => Err(format!("unexpected error for readable files: {other}")),
    }
}

impl Target for ConfigTarget {
    fn name(&self) -> &'static str {
        "config"
    }

    fn run(&mut self, input: &[u8]) -> Result<u64, String> {
        let (toml, env) = match input.windows(ENV_MARK.len()).position(|w| w == ENV_MARK) {
            Some(at) => (&input[..at + 1], &input[at + ENV_MARK.len()..]),
            None => (input, &b""[..]),
        };
        debug_assert!(self.dir.path().is_dir());
        write_private(&self.toml, toml)?;
        write_private(&self.env, env)?;
        let gateway = check::<GatewayConfig>(&self.toml, &self.env, toml, env)
            .map_err(|e| format!("gateway config: {e}"))?;
        let agent = check::<AgentConfig>(&self.toml, &self.env, toml, env)
            .map_err(|e| format!("agent config: {e}"))?;
        Ok(signature(&[&gateway, &agent]))
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\n#%% env\n",
            "EDGESHARE_",
            "__",
            "EDGESHARE_BACKEND__PASSWORD=",
            "EDGESHARE_PORTAL__PORT=",
            "EDGESHARE_LAN__INTERFACE=",
            "EDGESHARE_AGENT__DEVICE_ID=42",
            "EDGESHARE_SOURCE__0__KIND=",
            "EDGESHARE_X=",
            "export ",
            "[lan]\n",
            "[wan]\n",
            "[portal]\n",
            "[codes]\n",
            "[backend]\n",
            "[http]\n",
            "[state]\n",
            "[control]\n",
            "[session]\n",
            "[firewall]\n",
            "[capture]\n",
            "[metrics]\n",
            "[gateway]\n",
            "[spool]\n",
            "[telemetry]\n",
            "[usage]\n",
            "[stream]\n",
            "[device]\n",
            "[[source]]\n",
            "[[sources]]\n",
            "interface = ",
            "url = ",
            "port = ",
            "source = ",
            "kind = ",
            "interval = ",
            "group = ",
            "socket = ",
            "dir = ",
            "enabled = ",
            "nat = ",
            "garden = ",
            " = \"wlan0\"\n",
            " = \"http://10.66.0.1:8080/\"\n",
            " = \"https://example.invalid/api\"\n",
            " = \"local\"\n",
            " = \"backend\"\n",
            " = \"10s\"\n",
            " = \"0s\"\n",
            " = \"1000000h\"\n",
            " = \"18446744073709551615s\"\n",
            " = true\n",
            " = 0\n",
            " = -1\n",
            " = 1e400\n",
            " = nan\n",
            " = []\n",
            " = {}\n",
            " = [1, \"a\"]\n",
            " = 1979-05-27T07:32:00Z\n",
            "\"\"\"",
            "'''",
            "a.b.c",
            "\"quoted.key\"",
            "[a.b]\n",
            "[[a.b]]\n",
        ]
    }

    fn max_len(&self) -> usize {
        8 * 1024
    }
}
