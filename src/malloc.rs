//! The C library's allocator, tuned for a daemon that runs for months
//! (glibc only; elsewhere these are no-ops).
//!
//! glibc gives each thread that allocates under contention an arena of its
//! own, up to 8 per core, and hands freed memory back to the kernel only
//! from the top of an arena. The daemon's threads come and go (device
//! threads on every reload, tokio's blocking pool for journal reads) and
//! pass batch-sized buffers between them, so memory freed in the middle of
//! several arenas stays resident: the soak (`scripts/soak.sh`) measured
//! RSS climbing ~0.3 MiB a minute for 30 minutes while the live heap
//! (heaptrack) stayed flat apart from SQLite's bounded page caches. Two
//! settings address it:
//!
//! - [`limit_arenas`]: at most [`ARENAS`] arenas (`mallopt(M_ARENA_MAX)`,
//!   what `MALLOC_ARENA_MAX=2` does). The acquisition and processing
//!   threads allocate nothing per sample, so they never contend for them.
//!   An operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.
//! - [`reuse_large_buffers`]: allocations up to 32 MiB come from the
//!   arenas, and an arena's free top is kept up to 128 MiB
//!   (`M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`). A high-density rig's batch
//!   buffers (up to 16 MiB, `pipeline::MAX_BATCH_SAMPLE_BYTES`) and
//!   SQLite's copies of each sealed batch are then reused instead of
//!   mapped fresh and faulted in each time: at 384 ch x 30 kHz 19 900 ->
//!   100 page faults a second, 0.64 -> 0.56 core, RSS +46 MiB; at 1024 ch
//!   1.35 -> 1.24 cores, RSS unchanged; the idle run unchanged. The
//!   minute's trim below still returns what stays free.
//! - [`release_free_memory`]: `malloc_trim(0)`, which returns the free
//!   pages inside every arena (not only at their tops) to the kernel; the
//!   daemon calls it every [`TRIM_EVERY`] on the blocking pool.
//!
//! This is the one module that calls glibc's allocator API; each unsafe
//! block has its SAFETY comment.
#![allow(unsafe_code)]

use std::time::Duration;

/// Arenas glibc may create.
pub const ARENAS: i32 = 2;
/// How often the daemon returns free heap pages to the kernel.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// The settings a daemon process starts with: [`limit_arenas`] and
/// [`reuse_large_buffers`]. Call before starting threads.
pub fn tune() {
    limit_arenas();
    reuse_large_buffers();
}

/// Does the environment already set one of these allocator parameters,
/// by its `MALLOC_*` variable or its `glibc.malloc.*` tunable?
fn chosen_by_environment(variables: &[&str], tunables: &[&str]) -> bool {
    variables.iter().any(|v| std::env::var_os(v).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| tunables.iter().any(|n| t.contains(n)))
}

/// Limit glibc to [`ARENAS`] arenas unless the environment chose; call
/// before the daemon starts its threads. Returns whether the limit was
/// set here.
pub fn limit_arenas() -> bool {
    let env = chosen_by_environment(&["MALLOC_ARENA_MAX"], &["glibc.malloc.arena_max"]);
    let set = !env && set_arena_max(ARENAS);
    tracing::debug!(set, max = ARENAS, "allocator arenas limited");
    set
}

/// Allocations below this come from the arenas (the ceiling glibc's own
/// dynamic threshold grows to on 64-bit).
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at an arena's top kept for reuse (up to the next trim).
pub const TRIM_THRESHOLD: i32 = 128 << 20;

/// Keep large buffers in the arenas for reuse ([`MMAP_THRESHOLD`],
/// [`TRIM_THRESHOLD`]) unless the environment sets either; call before
/// the daemon starts its threads. Returns whether both were set here.
pub fn reuse_large_buffers() -> bool {
    let env = chosen_by_environment(
        &["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"],
        &["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"],
    );
    let set = !env && set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD);
    tracing::debug!(set, "allocator keeps large buffers for reuse");
    set
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds(mmap: i32, trim: i32) -> bool {
    // SAFETY: as in set_arena_max; both take a byte count, and 32 MiB /
    // 128 MiB are valid values (glibc returns 0 for ones it refuses).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds(_mmap: i32, _trim: i32) -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt takes two integers, touches only the allocator's own
    // parameters (under its lock) and is documented as callable at any
    // time; M_ARENA_MAX with a positive value is a valid request. It
    // returns 1 on success, 0 on error.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: i32) -> bool {
    false
}

/// Return the free pages of every arena to the kernel. Returns whether any
/// memory was released. Takes each arena's lock in turn: run it off the
/// async workers (it walks the free lists: about a millisecond for tens
/// of MB of heap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes a size (the padding to leave at the top of
    // the main arena) and only releases pages glibc itself knows to be
    // free; it is thread-safe (each arena is trimmed under its lock).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_variable_or_tunable_is_seen() {
        // Read-only: PATH is set in any test run, the other names nowhere.
        assert!(chosen_by_environment(
            &["NEUROEDGE_NO_SUCH_VAR", "PATH"],
            &[]
        ));
        assert!(!chosen_by_environment(
            &["NEUROEDGE_NO_SUCH_VAR"],
            &["glibc.malloc.neuroedge_no_such_tunable"]
        ));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_arena_limit() {
        // The test harness sets no MALLOC_ARENA_MAX; glibc accepts the value.
        assert!(set_arena_max(ARENAS));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_buffer_thresholds() {
        // The test harness sets neither in its environment; glibc takes
        // both values.
        assert!(set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_returns_pages_freed_below_live_memory() {
        // 4 MiB in blocks below the mmap threshold, then a block above them
        // that stays live: free() cannot give the 4 MiB back (it only trims
        // an arena's top), malloc_trim(0) can.
        let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        let keep = vec![2u8; 1024];
        drop(blocks);
        assert!(release_free_memory(), "nothing released");
        assert_eq!(keep[0], 2);
    }
}
