//! `/installs/*` through the proxy: Hex asks for `installs/hex-1.x.csv` on
//! every run to learn whether a newer Hex exists. The file is not part of
//! the signed registry (hex.pm signs its installers with Mix's installer
//! key, and Hex 2.5.1 reads this list without checking anything), so it is
//! passed through as the upstream sent it: never verified, never stored as
//! a blob (only verified files are), and not cached, since clients ask at
//! most once per run and the upstream answers in milliseconds.

use std::sync::atomic::Ordering;

use super::Proxy;
use crate::upstream::{Fetched, UpstreamError, Validators};

/// Largest installs file passed through (the Hex archives are well under
/// a megabyte; the list is a few kilobytes).
const MAX_INSTALLS: u64 = 16 * 1024 * 1024;

/// Why an installs file could not be passed through.
#[derive(Debug, thiserror::Error)]
pub enum InstallsError {
    /// The circuit breaker is open: the upstream failed repeatedly.
    #[error("the upstream is failing; not asking it for {path} for a while")]
    CircuitOpen {
        /// The file.
        path: String,
    },
    /// The upstream request failed.
    #[error("fetching {path} from the upstream: {source}")]
    Upstream {
        /// The file.
        path: String,
        /// What went wrong.
        source: UpstreamError,
    },
}

impl Proxy {
    /// The upstream's copy of `rel` (`installs/...`), or `None` when it has
    /// none.
    pub async fn installs(&self, rel: &str) -> Result<Option<Vec<u8>>, InstallsError> {
        if self.circuit_open() {
            return Err(InstallsError::CircuitOpen {
                path: rel.to_owned(),
            });
        }
        self.metrics()
            .upstream_requests
            .fetch_add(1, Ordering::Relaxed);
        let fetched = self
            .upstream
            .get(rel, &Validators::default(), MAX_INSTALLS)
            .await
            .map_err(|source| {
                self.metrics()
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                InstallsError::Upstream {
                    path: rel.to_owned(),
                    source,
                }
            })?;
        Ok(match fetched {
            Fetched::Body { body, .. } => Some(body),
            // Not conditional, so a 304 cannot come; treat it as absent.
            Fetched::NotModified | Fetched::NotFound => None,
        })
    }
}
