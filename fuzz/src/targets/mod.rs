//! The fuzz targets, by name.

pub mod config;
pub mod control;
pub mod ledger;
pub mod portal;

use crate::engine::Target;

/// Every target's name, in the order `all` runs them.
pub const NAMES: &[&str] = &["portal", "form", "config", "ledger", "control"];

/// A fresh target by name.
pub fn make(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "portal" => Box::new(portal::PortalTarget::new()),
        "form" => Box::new(portal::FormTarget::new()),
        "config" => Box::new(config::ConfigTarget::new()),
        "ledger" => Box::new(ledger::LedgerTarget::new()),
        "control" => Box::new(control::ControlTarget::new()),
        _ => return None,
    })
}
