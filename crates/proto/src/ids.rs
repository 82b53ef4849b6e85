//! The wire identifiers, shared by the broker and every client.
//!
//! The three wire identifiers ([`ClientId`], [`ChannelId`], [`RequestId`]) are 16-byte UUIDs as they
//! appear in the frame header.
//!
//! A channel may also be named by a string: [`ChannelId::from_name`] derives a UUID version 5
//! from the name's UTF-8 bytes in the fixed namespace [`CHANNEL_NAMESPACE`] (PROTOCOL.md §5.1),
//! so every client, in any language, derives the same id with its own UUID library, and the
//! broker never sees names at all.

use std::fmt;
use std::str::FromStr;

pub use uuid::Uuid;

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

/// The namespace of channel names: `uuid5(NAMESPACE_URL, "switchyard:channel")`, that is
/// `dda4c0a4-9209-58ee-bed8-816189f73351` (PROTOCOL.md §5.1).
pub const CHANNEL_NAMESPACE: Uuid = Uuid::from_u128(0xdda4c0a4_9209_58ee_bed8_816189f73351);

/// The longest channel name, in bytes of UTF-8: longer ones are refused rather than hashed, so a
/// name is something a person can read in a log line.
pub const MAX_CHANNEL_NAME: usize = 255;

/// Why a string is neither a UUID nor a usable channel name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelNameError {
    /// The empty string names nothing.
    Empty,
    /// Longer than [`MAX_CHANNEL_NAME`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// It has a control character (a newline, a NUL...): names are meant to be printed.
    ControlCharacter,
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelNameError::Empty => f.write_str("a channel name must not be empty"),
            ChannelNameError::TooLong { len } => write!(
                f,
                "a channel name is at most {MAX_CHANNEL_NAME} bytes (this one has {len})"
            ),
            ChannelNameError::ControlCharacter => {
                f.write_str("a channel name must not contain control characters")
            }
        }
    }
}

impl std::error::Error for ChannelNameError {}

impl ChannelId {
    /// The channel named `name`: `uuid5(CHANNEL_NAMESPACE, name.as_bytes())`. Names are
    /// case-sensitive and taken byte for byte (no trimming, no normalisation).
    ///
    /// ```
    /// use switchyard_proto::ChannelId;
    /// let orders = ChannelId::from_name("orders").unwrap();
    /// assert_eq!(orders.to_string(), "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61");
    /// assert_eq!("orders".parse::<ChannelId>().unwrap(), orders);
    /// ```
    ///
    /// # Errors
    /// An empty name, one longer than [`MAX_CHANNEL_NAME`] bytes, or one with a control
    /// character.
    pub fn from_name(name: &str) -> Result<ChannelId, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME {
            return Err(ChannelNameError::TooLong { len: name.len() });
        }
        if name.chars().any(char::is_control) {
            return Err(ChannelNameError::ControlCharacter);
        }
        Ok(ChannelId(Uuid::new_v5(&CHANNEL_NAMESPACE, name.as_bytes())))
    }
}

impl FromStr for ChannelId {
    type Err = ChannelNameError;

    /// A UUID in any of its usual spellings (hyphenated, simple, braced, `urn:uuid:`) is that
    /// channel; any other string is a channel name ([`ChannelId::from_name`]).
    fn from_str(s: &str) -> Result<ChannelId, ChannelNameError> {
        match Uuid::parse_str(s) {
            Ok(uuid) => Ok(ChannelId(uuid)),
            Err(_) => ChannelId::from_name(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_documented_derivation() {
        assert_eq!(
            CHANNEL_NAMESPACE,
            Uuid::new_v5(&Uuid::NAMESPACE_URL, b"switchyard:channel")
        );
        assert_eq!(
            CHANNEL_NAMESPACE.to_string(),
            "dda4c0a4-9209-58ee-bed8-816189f73351"
        );
    }

    #[test]
    fn names_derive_fixed_version_5_ids() {
        let orders = ChannelId::from_name("orders").unwrap();
        assert_eq!(orders.to_string(), "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61");
        assert_eq!(orders.0.get_version_num(), 5);
        assert_ne!(orders, ChannelId::from_name("Orders").unwrap());
        assert_ne!(orders, ChannelId::from_name(" orders").unwrap());
        // Multi-byte names hash their UTF-8 bytes.
        let snow = ChannelId::from_name("snö").unwrap();
        assert_eq!(snow.0, Uuid::new_v5(&CHANNEL_NAMESPACE, "snö".as_bytes()));
    }

    #[test]
    fn from_str_takes_a_uuid_in_any_spelling_or_else_a_name() {
        let id = ChannelId::random();
        let simple = id.0.simple().to_string();
        for text in [
            id.to_string(),
            simple,
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            id.to_string().to_uppercase(),
        ] {
            assert_eq!(text.parse::<ChannelId>().unwrap(), id, "{text}");
        }
        assert_eq!(
            "orders".parse::<ChannelId>().unwrap(),
            ChannelId::from_name("orders").unwrap()
        );
        assert_eq!("".parse::<ChannelId>(), Err(ChannelNameError::Empty));
        assert_eq!(
            "a\nb".parse::<ChannelId>(),
            Err(ChannelNameError::ControlCharacter)
        );
        let long = "x".repeat(MAX_CHANNEL_NAME + 1);
        assert_eq!(
            long.parse::<ChannelId>(),
            Err(ChannelNameError::TooLong { len: 256 })
        );
        assert!("x".repeat(MAX_CHANNEL_NAME).parse::<ChannelId>().is_ok());
    }
}
