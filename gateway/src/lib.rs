//! The edgeshare gateway: the captive-portal daemon on the provider's device.
//!
//! So far this crate holds the gateway's configuration and command line; the portal,
//! enforcement and accounting follow.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
