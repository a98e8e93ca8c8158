//! The edgeshare agent: the device's uplink to the central backends.
//!
//! So far this crate holds the agent's configuration, command line, usage reporter
//! ([`usage`]) and telemetry outbox ([`telemetry`]); the streams and spool follow.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod telemetry;
pub mod usage;
