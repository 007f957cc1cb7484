//! Private packages hosted by hexmirror: their state in SQLite ([`db`]),
//! their registry records ([`record`], pure), and the writer that validates
//! a change and publishes it as a new generation ([`writer`]).

pub mod db;
pub mod record;
pub mod writer;
