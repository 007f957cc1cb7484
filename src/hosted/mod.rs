//! Private packages hosted by hexmirror: their state in SQLite ([`db`]) and
//! the writer that validates a change and publishes it ([`writer`]). Their
//! registry records are pure index code: [`crate::index::hosted`].

pub mod db;
pub mod writer;

pub use crate::index::hosted as record;
