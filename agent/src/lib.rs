//! The edgeshare agent: the device's uplink to the central backends.
//!
//! - [`sources`] measure (sysinfo, sensor files, sensor commands, the gateway's live usage)
//!   and queue messages in the [`outbox`];
//! - the [`outbox`] keeps them in order, in memory while the stream keeps pace and in the
//!   disk [`spool`] while it does not;
//! - the [`link`] streams them over the producer WebSocket (contract 2), with [`auth`]'s
//!   tokens, and heals itself (keepalive, reconnect with backoff);
//! - [`telemetry`] posts the gateway's flows and a snapshot a minute (contract 3);
//! - [`metrics`] exposes health and counters; [`status`] reads them back;
//! - [`register`] signs the device up as a producer (contract 2), once;
//! - [`usage`] reports the gateway's usage ledger to the backend exactly once (contract 1);
//! - [`daemon`] runs all of it side by side and stops it cleanly.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod register;
pub mod sources;
pub mod spool;
pub mod status;
pub mod telemetry;
pub mod usage;
