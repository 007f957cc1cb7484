//! The `hexmirror` binary: parse the command line and run it (logging
//! starts in `cli::run`, once the configuration says which format).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bound_heap_growth();
    let cli = hexmirror::cli::Cli::parse();
    hexmirror::cli::run(cli)
}

/// Keeps large, short-lived buffers (tarball bodies) out of glibc's arenas.
///
/// glibc raises its mmap threshold to the largest block freed so far, so after
/// the first big tarball every body lands in one of up to 16 per-thread arenas
/// and stays there once freed: a sync's RSS grew with the length of the run
/// (124 MB at scale 0.1 for a 35 MB heap). A fixed 1 MiB threshold maps and
/// unmaps those buffers; registry files and most tarballs stay below it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_heap_growth() {
    // SAFETY: mallopt only changes allocator parameters; it runs before any
    // other thread exists, and a refusal (return 0) leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_heap_growth() {}
