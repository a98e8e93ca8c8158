//! The C allocator's one setting the daemon changes: how many arenas glibc's malloc may make.
//!
//! glibc gives a thread that finds the arenas in use one of its own, up to 8 per core, and
//! never returns an arena: each keeps the pages its frees left scattered. The daemon's threads
//! (the runtime's workers and blocking pool, the state owner, the capture and the neighbour
//! watcher) made 9 on a 2-core machine, and with 200 logins their arenas grew by 1.2 MiB, as
//! much as all of the daemon's other heap (bench/memory.sh). Its allocations are small and
//! few (the capture's per-packet path makes none, each thread's tcache takes most of the
//! rest), so sharing the main arena costs no measurable time; a second one had kept 0.3 MiB
//! more, idle.
//!
//! The only other unsafe code of the gateway is in `capture::socket`.
#![allow(unsafe_code)]

/// Most arenas: the main one alone.
#[cfg(target_env = "gnu")]
const ARENAS: libc::c_int = 1;

/// Limits glibc's malloc to [`ARENAS`] arenas, unless `MALLOC_ARENA_MAX` in the environment
/// says otherwise (glibc reads it itself). To be called before the daemon starts threads:
/// arenas made before stay.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets one of the allocator's parameters, under the allocator's own
        // lock; M_ARENA_MAX takes any positive count.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) } == 0 {
            tracing::warn!(
                arenas = ARENAS,
                "cannot limit the allocator's arenas (mallopt M_ARENA_MAX); memory use grows with the threads"
            );
        }
    }
}
