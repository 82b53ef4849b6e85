//! The wire identifiers, shared by the broker and every client.
//!
//! The three wire identifiers ([`ClientId`], [`ChannelId`], [`RequestId`]) are 16-byte UUIDs as they
//! appear in the frame header.

use std::fmt;
use uuid::Uuid;

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The all-zero id, which the protocol uses for "none" / "not yet assigned".
            pub const NIL: Self = Self(Uuid::nil());

            /// A fresh random (v4) id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Builds the id from its 16 wire bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }

            /// The 16 wire bytes of the id.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// True for the all-zero id.
            pub fn is_nil(&self) -> bool {
                self.0.is_nil()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }
    };
}

wire_id!(
    /// Identifies one client (a service instance) on a channel. Chosen by the client, or assigned
    /// by the broker when the hello carries the nil id.
    ClientId
);
wire_id!(
    /// Identifies a channel: the rendezvous point of the peers that exchange requests.
    ChannelId
);
wire_id!(
    /// Identifies one request (or broadcast) stream. Chosen by the sender; unique among the requests
    /// in flight on the broker.
    RequestId
);
