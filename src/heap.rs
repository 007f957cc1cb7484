//! The process's allocator (glibc malloc on Linux): its settings, and
//! handing freed memory back to the system between a sync's phases.

/// Keeps large, short-lived buffers (tarball bodies) out of glibc's arenas.
///
/// glibc raises its mmap threshold to the largest block freed so far, so after
/// the first big tarball every body lands in one of up to 16 per-thread arenas
/// and stays there once freed: a sync's RSS grew with the length of the run
/// (124 MB at scale 0.1 for a 35 MB heap). A fixed 1 MiB threshold maps and
/// unmaps those buffers; registry files and most tarballs stay below it.
/// Call first thing in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn bound_growth() {
    // SAFETY: mallopt only changes allocator parameters; it runs before any
    // other thread exists, and a refusal (return 0) leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// See the glibc version: other allocators need nothing.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn bound_growth() {}

/// Caps glibc at one malloc arena per core (its default is eight per core),
/// for a one-shot command that frees what it allocated in many threads.
///
/// A sync frees tarball buffers and decoded records in every thread it ran,
/// each in that thread's arena; with sixteen arenas on two cores, their
/// holes added ~40 MB to the peak of a full-scale curated sync (313 MB ->
/// 276 MB) at no measured CPU cost. Not for `serve`: its request threads
/// would contend for the arenas. Call before the runtime starts its threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn one_arena_per_core() {
    let cores = libc::c_int::try_from(crate::parallel::cores()).unwrap_or(libc::c_int::MAX);
    // SAFETY: as in `bound_growth`; arenas made before keep serving their
    // threads, and a refusal leaves the default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores);
    }
}

/// See the glibc version: other allocators need nothing.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena_per_core() {}

/// Returns the free pages of every arena to the system.
///
/// The fetch phase frees tarball buffers in as many arenas as it had
/// threads, and glibc gives back only the top of each heap; what publication
/// allocates next goes into whatever holes fit, so the rest stayed resident
/// through the phase where the live heap peaks. One call walks the arenas
/// (milliseconds) and releases every whole free page.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free() {
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and
    // only releases memory that no allocation holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// See the glibc version: other allocators need nothing.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free() {}
