//! Mirror sync: fetch the upstream index, verify it, fetch and verify what
//! changed, publish into the served tree (tarballs before the records that
//! name them, records before `/names` and `/versions`), then sweep what the
//! upstream no longer has.

mod fetch;
mod progress;
mod publish;
mod run;

pub use progress::Progress;
pub use publish::PublishError;
pub use run::{Failure, Summary, SyncError, Unreachable, run};
