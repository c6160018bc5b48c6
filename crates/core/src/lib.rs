//! The pure core of Tillsync.
//!
//! Nothing in this crate performs I/O, reads a clock or draws randomness on
//! its own: time arrives as `now_ms` arguments and randomness through a seeded
//! [`ids::IdGen`]. That is what lets the same code run inside a till, inside
//! the hub and inside a seeded simulation of many tills.

pub mod change;
pub mod digest;
pub mod domain;
pub mod hlc;
pub mod ids;
pub mod merge;
pub mod money;
pub mod pin;
pub mod protocol;
pub mod schema;
pub mod stock;
pub mod wire;

pub use change::{Change, Op};
pub use hlc::{Hlc, HlcClock};
pub use ids::{IdGen, derived_id};
pub use merge::{Conflict, ConflictStatus, Policy, Write, WriteId};
pub use schema::{Kind, Lane, Schema, Scope, TableDecl};
