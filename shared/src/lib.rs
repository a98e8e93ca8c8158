//! What the edgeshare gateway and agent both speak.
//!
//! - [`config`]: TOML loading that reports every problem at once, with key and line.
//! - [`ledger`]: the durable usage ledger the gateway writes and the agent reports from.
//! - [`prometheus`]: the metrics endpoints' text format.
//! - [`secret`]: a password/token type that never prints, and private atomic files.
//! - [`serve`]: an HTTP server whose connections are supervised tasks.
//! - [`supervisor`]: a daemon's named tasks, stopped together and all joined at shutdown.
//! - [`systemd`]: `sd_notify` (readiness, watchdog, stopping) for `Type=notify` units.
//!
//! No daemon logic lives here, and nothing here touches nftables or packet capture.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod code;
pub mod config;
pub mod control;
pub mod jwt;
pub mod ledger;
pub mod logging;
pub mod paths;
pub mod prometheus;
pub mod retry;
pub mod secret;
pub mod serve;
pub mod supervisor;
pub mod systemd;
pub mod tls;
