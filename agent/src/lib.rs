//! The edgeshare agent: the device's uplink to the central backends.
//!
//! So far this crate holds the agent's configuration and command line; the streams, usage
//! reports and spool follow.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod telemetry;
