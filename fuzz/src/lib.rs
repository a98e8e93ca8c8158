//! Bounded-time fuzzing of edgeshare's input parsers on the stable toolchain: a mutation loop
//! seeded from `fuzz/corpus/<target>/`, with properties checked per input. See the README's
//! "Fuzzing" section.

pub mod engine;
pub mod targets;

/// The portal's form parser, compiled here from its own source: it is private to the gateway
/// crate, and fuzzing it directly must not need a change to its visibility.
#[path = "../../gateway/src/portal/form.rs"]
#[allow(dead_code, unreachable_pub)]
mod form;
