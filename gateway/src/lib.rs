//! The edgeshare gateway: the captive-portal daemon on the provider's device.
//!
//! - [`core`]: the pure session logic (codes, devices, quota, expiry, idle); no I/O.
//! - [`firewall`]: the nftables table that enforces it, behind a trait with an in-memory fake;
//!   [`reconcile`]: the plan of kernel changes that makes it hold what the sessions allow;
//!   [`forwarding`]: the kernel's forwarding switches the daemon turns on once it is in place.
//! - [`portal`]: the HTTP portal consumers meet, OS captive probes, RFC 8908; [`refusal`]:
//!   why a device is not let in, one type from the code's check to the portal's page.
//! - [`codes`]: where codes are checked (the backend, or a local store); [`code_book`]: where
//!   a provider makes, lists and revokes them (the CLI and the dashboard); [`own_codes`]: the
//!   provider's code list kept for when the backend is unreachable.
//! - [`dashboard`]: the provider's web page (never served to the LAN).
//! - [`daemon`]: `run`, the async shell that wires these together.
//! - [`control`]: the control socket behind `status`, `clients`, `kick`, `codes revoke`.
//! - [`net`]: who a client is (MAC and IP); [`neigh`]: the kernel's neighbour-table limits.
//! - [`capture`]: the packet-capture meter that audits the kernel's byte counters.
//! - [`cutoff`]: resets a client's TCP connections at once when its access ends.
//! - [`setup`]: `edgeshare-gateway setup`, the one-command hotspot (planned, then written).
//! - [`allocator`]: the daemon's limit on glibc's malloc arenas.
// Denied, not forbidden: the capture socket needs one getsockopt that no safe crate offers,
// and the allocator's arena limit one mallopt.
#![deny(unsafe_code)]

pub mod allocator;
pub mod audit;
pub mod capture;
pub mod cli;
pub mod code_book;
pub mod codes;
pub mod config;
pub mod control;
pub mod core;
pub mod counters;
pub mod cutoff;
pub mod daemon;
pub mod dashboard;
pub mod firewall;
pub mod forwarding;
pub mod neighbours;
pub mod net;
mod netlink;
pub mod own_codes;
pub mod portal;
pub mod reconcile;
pub mod refusal;
pub mod report;
pub mod setup;
pub mod vouchers;
