//! [`NftFirewall`]: installing and removing our table with the real `nft`, each one batch of
//! `rules` on nft's stdin (`nft -j -f -`). Everything per login and per tick goes over
//! netlink instead ([`super::NetlinkFirewall`], which installs and removes through this).

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::rules;
use super::{FirewallConfig, FirewallError, Operation};

/// Our table's install and removal on the real kernel, through the `nft` program.
///
/// Each call is one `nft -j -f -` run with one batch, which the kernel applies atomically
/// (all or nothing), and blocks until nft is done (a few milliseconds).
#[derive(Debug, Clone)]
pub struct NftFirewall {
    config: FirewallConfig,
    command: Vec<OsString>,
}

impl NftFirewall {
    /// Runs `nft` from `PATH`.
    pub fn new(config: FirewallConfig) -> Self {
        Self::with_command(config, vec![OsString::from("nft")])
    }

    /// Runs nft through a command prefix, e.g. `["ip", "netns", "exec", "ns1", "nft"]`; an
    /// empty prefix means `["nft"]`. nft's own arguments follow the prefix.
    pub fn with_command(config: FirewallConfig, command: Vec<OsString>) -> Self {
        let command = if command.is_empty() {
            vec![OsString::from("nft")]
        } else {
            command
        };
        NftFirewall { config, command }
    }

    pub fn config(&self) -> &FirewallConfig {
        &self.config
    }

    /// Creates or repairs our table in ONE atomic batch, idempotently: sets are added if
    /// missing and never flushed (online clients survive a daemon restart), chains are added
    /// if missing, flushed and refilled, the walled-garden sets are replaced.
    pub fn install(&self) -> Result<(), FirewallError> {
        self.config.validate()?;
        self.run_batch(Operation::Install, &rules::install_batch(&self.config))
    }

    /// Deletes our table (`stop`); not an error if it is not there.
    pub fn uninstall(&self) -> Result<(), FirewallError> {
        self.config.validate()?;
        self.run_batch(
            Operation::Uninstall,
            &rules::uninstall_batch(&self.config.table),
        )
    }

    /// Runs `nft -j -f -` through the command prefix with `batch` on its stdin; a failed
    /// exit status is returned as [`FirewallError::Refused`].
    fn run_batch(&self, operation: Operation, batch: &Value) -> Result<(), FirewallError> {
        let program = &self.command[0];
        let spawn_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                FirewallError::NftNotFound {
                    program: program.clone(),
                    operation: operation.clone(),
                    source,
                }
            } else {
                FirewallError::Spawn {
                    program: program.clone(),
                    operation: operation.clone(),
                    source,
                }
            }
        };
        let mut child = Command::new(program)
            .args(&self.command[1..])
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut pipe) = child.stdin.take() {
            // nft reads all of stdin before it parses; a program that exits early closes the
            // pipe, and its exit status and stderr then say why.
            match pipe.write_all(batch.to_string().as_bytes()) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(e));
                }
                _ => {}
            }
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(FirewallError::Refused {
                operation,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        tracing::debug!(operation = %operation, "nft batch applied");
        Ok(())
    }
}
