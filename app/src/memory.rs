//! Process-wide allocator settings for the command line.
//!
//! A long unattended queue starts and ends threads for every acquisition (receiver,
//! pipeline, recorder writer). glibc's malloc gives threads their own arenas (up to 8 per
//! core) and keeps freed memory in them, so the process grew by 13–26 KB per queue unit
//! with nothing leaked: 106.3 → 109.1 MB over 300 units of a 4 × 4 scan, 13 KB per unit.
//! With at most two arenas the same queue stays flat (96.6 → 96.9 MB over the first 126
//! units, then no growth to unit 300; `MALLOC_ARENA_MAX`, the same setting, measured
//! side by side on this machine). The data path does not allocate per frame on its hot
//! loops (pooled stacks and tiles), so fewer arenas cost it nothing measurable.

/// Limits glibc's malloc to two arenas (see the module docs), unless the user set
/// `MALLOC_ARENA_MAX` themselves. Call first thing in `main`, before threads start. A no-op
/// on other C libraries and platforms.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes malloc's parameters; called before other threads
        // exist. M_ARENA_MAX = -8 (glibc's malloc.h).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
