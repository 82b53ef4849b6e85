//! The connection handle, and the wire ids re-exported so the core names every id from one place.
//!
//! [`ConnId`] is the broker-local handle of one connection: a slab slot plus a generation, so a
//! handle kept by a timer or a queue after its connection closed can never reach the connection
//! that later reuses the slot (the ABA guard).

use std::fmt;

pub use switchyard_proto::{ChannelId, ClientId, RequestId};

/// Broker-local handle of one connection: slab slot plus generation (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ConnId {
    /// Index of the connection's slot in the connection slab.
    pub slot: u32,
    /// Incremented each time the slot is reused.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.slot, self.generation)
    }
}
