//! Sync progress: a bar on a terminal, periodic log lines otherwise.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a non-terminal run logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of the package phase of a sync.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    done: AtomicU64,
    total: AtomicU64,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// A bar when `terminal` is true, log lines otherwise.
    pub fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} packages {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// More packages are known to need work.
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc_length(n);
        }
    }

    /// One package is finished.
    pub fn inc(&self, bytes: u64) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if bytes > 0 {
                    bar.set_message(format!("{} MiB", bytes >> 20));
                }
            }
            None => {
                let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    let total = self.total.load(Ordering::Relaxed);
                    tracing::info!("progress: {done}/{total} packages, {bytes} bytes received");
                }
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
