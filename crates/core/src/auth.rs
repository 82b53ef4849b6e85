//! Access tokens: which token a HELLO must carry (its payload) to join a channel, and the
//! comparison of a presented token with the expected one.
//!
//! A channel with its own token requires that token; otherwise the broker-wide token, when one
//! is set, is required; otherwise anyone may join. A token is never shown: [`AccessToken`]'s
//! `Debug`, `Display` and `Serialize` print `<redacted>`.
//!
//! The comparison ([`AccessToken::matches`]) runs in time that depends only on the length of the
//! *presented* token (which the client already knows), never on where the first differing byte
//! is or on the expected token's length: it walks every presented byte, pairs it with the
//! expected token's byte at the same index modulo its length (no branch on the secret length),
//! ORs the differences together, and folds in the length difference at the end. No dependency is
//! needed for this; `subtle` would add nothing the loop below does not do (and its slice
//! comparison returns early on a length mismatch).

use hashbrown::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::ids::ChannelId;

/// What a token prints as, wherever it is shown.
pub const REDACTED: &str = "<redacted>";

/// A secret access token (non-empty bytes). Its `Debug`, `Display` and `Serialize` show
/// [`REDACTED`]; equality is the constant-time [`AccessToken::matches`].
#[derive(Clone)]
pub struct AccessToken(Vec<u8>);

impl AccessToken {
    /// A token of these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> AccessToken {
        AccessToken(bytes.into())
    }

    /// Its length in bytes (not secret enough to hide: validation reports ranges).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty token (which configuration refuses).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is this token, compared in constant time (see the module docs).
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

/// `expected == presented`, in time depending only on `presented.len()`.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    if expected.is_empty() {
        // Configuration refuses empty tokens; never let one match anything.
        return false;
    }
    let n = expected.len();
    let mut diff: u8 = 0;
    for (i, &byte) in presented.iter().enumerate() {
        // black_box keeps the optimiser from turning the accumulation into an early exit.
        diff = std::hint::black_box(diff | (byte ^ expected[i % n]));
    }
    let length_diff = (n ^ presented.len()) as u64;
    // Fold the length difference into one bit without a data-dependent branch.
    let length_bit = ((length_diff | length_diff.wrapping_neg()) >> 63) as u8;
    std::hint::black_box(diff | length_bit) == 0
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &AccessToken) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for AccessToken {}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl FromStr for AccessToken {
    type Err = String;

    /// The UTF-8 bytes of `s` (what a client puts in its HELLO payload).
    fn from_str(s: &str) -> Result<AccessToken, String> {
        if s.is_empty() {
            return Err(String::from("an access token must not be empty"));
        }
        Ok(AccessToken::new(s.as_bytes()))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for AccessToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for AccessToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AccessToken, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        Ok(AccessToken::new(text.into_bytes()))
    }
}

/// The proof that a HELLO comes from the client that holds a client id on a channel: 16 random
/// bytes the broker gives in every WELCOME (its header's request id field) and the client
/// presents in its HELLO (the same field) to take over or resume that id (PROTOCOL.md §5).
///
/// One secret per (channel, client id), kept while the id is present (connected, or departed in
/// its grace period) and the same in every WELCOME. Never printed: `Debug` shows [`REDACTED`];
/// compared in constant time.
#[derive(Clone, Copy)]
pub struct ResumeSecret([u8; 16]);

impl ResumeSecret {
    /// A fresh random secret (122 random bits from the OS, as a version-4 UUID).
    pub fn random() -> ResumeSecret {
        ResumeSecret(*crate::ids::RequestId::random().as_bytes())
    }

    /// The secret a HELLO presents (its request id field's bytes); `None` for the nil id.
    pub fn presented(bytes: [u8; 16]) -> Option<ResumeSecret> {
        (bytes != [0; 16]).then_some(ResumeSecret(bytes))
    }

    /// Its 16 bytes, as they travel in the WELCOME's request id field.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// Whether `presented` is this secret, in constant time.
    pub fn matches(&self, presented: &ResumeSecret) -> bool {
        constant_time_eq(&self.0, &presented.0)
    }
}

impl fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The tokens the router checks HELLOs against. `Default`: none (no authentication).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// Required on channels without a token of their own, when set.
    pub broker: Option<AccessToken>,
    /// Per channel; wins over `broker`.
    pub channels: HashMap<ChannelId, AccessToken>,
}

impl Tokens {
    /// True when no token is configured: any client may join any channel.
    pub fn is_empty(&self) -> bool {
        self.broker.is_none() && self.channels.is_empty()
    }

    /// The token a HELLO for `channel` must carry, if any.
    pub fn required_for(&self, channel: ChannelId) -> Option<&AccessToken> {
        self.channels.get(&channel).or(self.broker.as_ref())
    }

    /// Whether a HELLO for `channel` with payload `presented` may join.
    pub fn admits(&self, channel: ChannelId, presented: &[u8]) -> bool {
        match self.required_for(channel) {
            Some(token) => token.matches(presented),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_tokens_match_and_any_difference_does_not() {
        let token = AccessToken::new(b"s3cret".to_vec());
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b""));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3crets"));
        assert!(!token.matches(b"S3cret"));
        assert!(!token.matches(b"s3creT"));
        // The same bytes repeated (the modulo pairing) is still a length mismatch.
        assert!(!token.matches(b"s3crets3cret"));
        assert!(!AccessToken::new(Vec::new()).matches(b""));
    }

    #[test]
    fn resume_secrets_match_only_themselves_and_never_print() {
        let secret = ResumeSecret::random();
        let same = ResumeSecret::presented(secret.to_bytes()).unwrap();
        assert!(secret.matches(&same));
        assert!(!secret.matches(&ResumeSecret::random()));
        assert!(ResumeSecret::presented([0; 16]).is_none());
        assert_eq!(format!("{secret:?}"), REDACTED);
    }

    #[test]
    fn tokens_never_print() {
        let token: AccessToken = "hunter2".parse().unwrap();
        assert_eq!(format!("{token:?}"), REDACTED);
        assert_eq!(format!("{token}"), REDACTED);
        let tokens = Tokens {
            broker: Some(token),
            channels: HashMap::new(),
        };
        assert!(!format!("{tokens:?}").contains("hunter2"));
        assert!("".parse::<AccessToken>().is_err());
    }

    #[test]
    fn a_channel_token_wins_over_the_broker_token() {
        let ch = ChannelId::from_bytes([1; 16]);
        let other = ChannelId::from_bytes([2; 16]);
        let mut tokens = Tokens::default();
        assert!(tokens.admits(ch, b""));
        tokens.broker = Some(AccessToken::new(b"all".to_vec()));
        assert!(tokens.admits(ch, b"all") && !tokens.admits(ch, b""));
        tokens
            .channels
            .insert(ch, AccessToken::new(b"one".to_vec()));
        assert!(tokens.admits(ch, b"one") && !tokens.admits(ch, b"all"));
        assert!(tokens.admits(other, b"all") && !tokens.admits(other, b"one"));
    }
}
