//! Fault injection for the crash tests: a process killed with SIGKILL at a
//! named point, leaving its files as a `kill -9` there would. Unset, each
//! point costs one environment read.

/// Kills this process with SIGKILL when the environment variable `var` is
/// `point`.
pub fn kill_at(var: &str, point: &str) {
    if std::env::var(var).is_ok_and(|p| p == point) {
        // SAFETY: kill(2) on this process; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
