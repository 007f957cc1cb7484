//! Private packages hosted by hexmirror: their state in SQLite ([`db`]), the
//! rules a change must pass ([`rules`], pure), the writer that applies a
//! change and publishes it ([`writer`]), and its only door ([`service`]). Their registry records are pure
//! index code: [`crate::index::hosted`].

pub mod catalog;
pub mod db;
pub mod rules;
pub mod service;
pub mod writer;

pub use crate::index::hosted as record;
