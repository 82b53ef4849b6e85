//! The machinery behind the table of settings (`settings.rs`): the [`settings!`] macro that
//! turns one entry per key into the file struct, the flags, the defaults, the validation and the
//! mapping onto [`ServerConfig`]; the [`Value`] trait that says how each value type becomes a
//! flag; [`Accepted`], a key's accepted values in data (so --help and the error message print the
//! same range that is checked); and [`Size`], a byte count that accepts units.
//!
//! Nothing here names a particular key: a key is stated in `settings.rs` and nowhere else.

use clap::{Arg, ArgAction, ArgMatches};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{BrokerConfig, ChannelToken, ConfigError};
use crate::auth::AccessToken;
#[cfg(doc)]
use crate::server::ServerConfig;

/// How a type of setting is a flag, how a flag's value overrides the file's, and how it prints.
pub(crate) trait Value: Clone + Sized {
    /// The flag (long name, value name and help already set) told how to parse this type.
    fn flag(arg: Arg) -> Arg;
    /// The flag's value, when it was given.
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self>;
    /// A given flag wins over the file: replaces the value (collections add to it instead).
    fn override_with(&mut self, flag: Self) {
        *self = flag;
    }
    /// The value as a number, for range checks; `None` for values that are not numbers.
    fn number(&self) -> Option<u64> {
        None
    }
    /// A number of this type in words for --help (sizes with units).
    fn show_number(n: u64) -> String {
        n.to_string()
    }
    /// The value as --help shows a default.
    fn show(&self) -> String;
}

/// Types parsed from the flag's text with [`FromStr`], shown with [`fmt::Display`].
macro_rules! parsed_value {
    ($($ty:ty),+) => {$(
        impl Value for $ty {
            fn flag(arg: Arg) -> Arg {
                arg.value_parser(clap::value_parser!($ty))
            }
            fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
                matches.get_one::<$ty>(id).cloned()
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )+};
}
parsed_value!(String);

/// A listen address: a socket address, `localhost:PORT` or `:PORT` (see `addr.rs`).
impl Value for SocketAddr {
    fn flag(arg: Arg) -> Arg {
        arg.value_parser(super::addr::parse_listen_addr)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<SocketAddr>(id).copied()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for u64 {
    fn flag(arg: Arg) -> Arg {
        // The range is checked with the file's values, after the merge (`Accepted::check`), so a
        // flag and a key get the same message.
        arg.value_parser(clap::value_parser!(u64))
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<u64>(id).copied()
    }
    fn number(&self) -> Option<u64> {
        Some(*self)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for Size {
    fn flag(arg: Arg) -> Arg {
        arg.value_parser(clap::value_parser!(Size))
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<Size>(id).copied()
    }
    fn number(&self) -> Option<u64> {
        Some(self.0)
    }
    fn show_number(n: u64) -> String {
        Size(n).to_string()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A switch: present means `true`; absent leaves the file's value.
impl Value for bool {
    fn flag(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_flag(id).then_some(true)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for Option<PathBuf> {
    fn flag(arg: Arg) -> Arg {
        arg.value_parser(clap::value_parser!(PathBuf))
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<PathBuf>(id).cloned().map(Some)
    }
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| String::from("none"), |p| p.display().to_string())
    }
}

impl Value for Option<AccessToken> {
    fn flag(arg: Arg) -> Arg {
        arg.value_parser(clap::value_parser!(AccessToken))
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<AccessToken>(id).cloned().map(Some)
    }
    fn show(&self) -> String {
        // Never the token: `AccessToken` displays as `<redacted>`.
        self.as_ref()
            .map_or_else(|| String::from("none"), ToString::to_string)
    }
}

/// `--channel-token UUID=TOKEN`, repeatable; each adds to (or replaces one channel of) the file's
/// table.
impl Value for BTreeMap<String, AccessToken> {
    fn flag(arg: Arg) -> Arg {
        arg.value_parser(clap::value_parser!(ChannelToken))
            .action(ArgAction::Append)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        let flags = matches.get_many::<ChannelToken>(id)?;
        Some(
            flags
                .map(|f| (f.channel.clone(), f.token.clone()))
                .collect(),
        )
    }
    fn override_with(&mut self, flag: Self) {
        self.extend(flag);
    }
    fn show(&self) -> String {
        if self.is_empty() {
            String::from("none")
        } else {
            format!("{} channels", self.len())
        }
    }
}

/// One end of a range: a constant, or another key's value. A key named must come earlier in
/// the table: it is validated first.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    /// This number.
    Is(u64),
    /// The value of that key.
    Key(&'static str),
    /// Just below the value of that key (as an upper bound).
    Below(&'static str),
}

/// What a key accepts, as data: `--help` describes it and [`Accepted::check`] enforces it, so the
/// two cannot disagree.
#[derive(Clone, Copy)]
pub(crate) enum Accepted {
    /// Whatever parses as the setting's type (described in words); the type is the check.
    Parsed(&'static str),
    /// A number in `min ..= max`.
    Range(Bound, Bound),
    /// 0 (off), or a number in `min ..= max`.
    OffOr(u64, u64),
    /// A rule of its own: described in words and checked by the function, which gets the key.
    Rule(
        &'static str,
        fn(&BrokerConfig, &'static str) -> Result<(), ConfigError>,
    ),
}

/// A range from constant `min` to constant `max`.
pub(crate) const fn range(min: u64, max: u64) -> Accepted {
    Accepted::Range(Bound::Is(min), Bound::Is(max))
}

/// A range from constant `min` to the value of the key `max` (an earlier key of the table).
pub(crate) const fn up_to_key(min: u64, max: &'static str) -> Accepted {
    Accepted::Range(Bound::Is(min), Bound::Key(max))
}

/// A range from constant `min` to just below the value of the key `max`.
pub(crate) const fn below_key(min: u64, max: &'static str) -> Accepted {
    Accepted::Range(Bound::Is(min), Bound::Below(max))
}

impl Accepted {
    /// In words, for `--help`: numbers as `show` writes them, keys as their flags.
    pub(crate) fn describe(&self, show: fn(u64) -> String) -> String {
        let bound = |b: Bound| match b {
            Bound::Is(n) => show(n),
            Bound::Key(key) | Bound::Below(key) => key.replace('_', "-"),
        };
        match *self {
            Accepted::Parsed(words) | Accepted::Rule(words, _) => String::from(words),
            Accepted::Range(min, max @ Bound::Below(_)) => {
                format!("{} ..< {}", bound(min), bound(max))
            }
            Accepted::Range(min, max) => format!("{} ..= {}", bound(min), bound(max)),
            Accepted::OffOr(min, max) => format!("0 (off) or {} ..= {}", show(min), show(max)),
        }
    }

    /// Checks `key`'s value (`number`, when it is one) in `config`, where the keys before it
    /// have been checked already.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming the key and the range with numbers (other keys'
    /// values resolved), or the rule's own error.
    pub(crate) fn check(
        &self,
        config: &BrokerConfig,
        key: &'static str,
        number: Option<u64>,
    ) -> Result<(), ConfigError> {
        let resolve = |b: Bound| match b {
            Bound::Is(n) => n,
            // INVARIANT: the table test checks that every named key exists and is a number.
            Bound::Key(other) => config.number(other).unwrap_or_default(),
            Bound::Below(other) => config.number(other).unwrap_or_default().saturating_sub(1),
        };
        let (min, max, off) = match *self {
            Accepted::Parsed(_) => return Ok(()),
            Accepted::Rule(_, rule) => return rule(config, key),
            Accepted::Range(min, max) => (resolve(min), resolve(max), false),
            Accepted::OffOr(min, max) => (min, max, true),
        };
        // A range on a key that is not a number is a mistake in the table, which the table
        // test catches; such a value cannot be out of a range it does not have.
        debug_assert!(number.is_some(), "`{key}` has a range but is not a number");
        let Some(value) = number else {
            return Ok(());
        };
        if (off && value == 0) || (min..=max).contains(&value) {
            return Ok(());
        }
        Err(ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            accepted: if off {
                format!("0 (off) or {min} ..= {max}")
            } else {
                format!("{min} ..= {max}")
            },
        })
    }

    /// The key this range depends on, if any.
    #[cfg(test)]
    pub(crate) fn depends_on(&self) -> Option<&'static str> {
        match *self {
            Accepted::Range(Bound::Key(key) | Bound::Below(key), _)
            | Accepted::Range(_, Bound::Key(key) | Bound::Below(key)) => Some(key),
            _ => None,
        }
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Units a size may carry, largest first (the order `Display` tries them in).
const UNITS: [(&str, u64); 3] = [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];

/// A number of bytes. Parses from a plain integer or an integer with a binary unit (`64KiB`,
/// `1 MiB`, `1GiB`, `512B`); displays with the largest unit that divides it exactly, so what
/// `--print-config` prints parses back to the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// `kib` KiB.
    pub const fn kib(kib: u64) -> Size {
        Size(kib * KIB)
    }

    /// `mib` MiB.
    pub const fn mib(mib: u64) -> Size {
        Size(mib * MIB)
    }

    /// `gib` GiB.
    pub const fn gib(gib: u64) -> Size {
        Size(gib * GIB)
    }

    /// The byte count as a `usize`, saturating (a 32-bit host cannot hold more anyway).
    pub fn to_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl From<usize> for Size {
    fn from(bytes: usize) -> Size {
        Size(bytes as u64)
    }
}

impl From<u32> for Size {
    fn from(bytes: u32) -> Size {
        Size(u64::from(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match UNITS
            .iter()
            .find(|(_, unit)| self.0 != 0 && self.0.is_multiple_of(*unit))
        {
            Some((name, unit)) => write!(f, "{}{name}", self.0 / unit),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits);
        let bad =
            || format!("{s:?} is not a size: expected bytes, or a number with B, KiB, MiB or GiB");
        let number: u64 = number.parse().map_err(|_| bad())?;
        let multiplier = match unit.trim() {
            "" | "B" => 1,
            unit => UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
                .ok_or_else(bad)?,
        };
        number
            .checked_mul(multiplier)
            .map(Size)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

/// A whole unit prints as a string (`"1MiB"`), anything else as a TOML integer.
impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shown = self.to_string();
        match shown.parse::<u64>() {
            Ok(n) => serializer.serialize_u64(n),
            Err(_) => serializer.serialize_str(&shown),
        }
    }
}

/// A TOML integer (bytes) or a string with a unit.
impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "bytes, or a string such as \"64KiB\" or \"1MiB\""
        )]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Bytes(n) => Ok(Size(n)),
            Either::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Declares every setting from one table (see `settings.rs` for the grammar, by example). From
/// the entries it generates:
///
/// - `BrokerConfig`: one public field per key, the entry's doc as the field's doc; `serde` gives
///   the TOML file (`default`, `deny_unknown_fields`), and `Default` the entries' defaults;
/// - `Overrides`: one optional flag per key (`--key-with-dashes`, or the entry's `flag`), whose
///   `--help` is the entry's doc, its default and its accepted values;
/// - `BrokerConfig::apply` (flags win), `check_keys` (each key against its `Accepted`, in table
///   order), `apply_to` (the mapping onto `ServerConfig`), `number` (a key's value for ranges
///   that name it) and `KEYS` (the table's keys and accepted values, for tests and docs).
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $(#[serde($($serde:tt)*)])*
        $key:ident: $ty:ty, $value_name:literal $(, flag $flag:literal)? {
            default: $default:expr,
            accepted: $accepted:expr,
            into: $into:expr $(,)?
        }
    )+) => {
        /// The effective configuration of a broker: one field per key of the file (and flag).
        /// `Default` gives the documented defaults (those of [`ServerConfig::default`](crate::server::ServerConfig::default) where the
        /// server has the setting).
        #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct BrokerConfig {
            $(
                $(#[doc = $doc])+
                $(#[serde($($serde)*)])*
                pub $key: $ty,
            )+
        }

        impl Default for BrokerConfig {
            fn default() -> Self {
                let server = $crate::server::ServerConfig::default();
                BrokerConfig {
                    $($key: {
                        let default: fn(&$crate::server::ServerConfig) -> $ty = $default;
                        default(&server)
                    },)+
                }
            }
        }

        /// Command-line overrides: one optional flag per key (`None`: not given, the file's or
        /// the default value stays).
        #[derive(Clone, Debug, Default)]
        pub struct Overrides {
            $(
                $(#[doc = $doc])+
                pub $key: Option<$ty>,
            )+
        }

        impl clap::Args for Overrides {
            fn augment_args(command: clap::Command) -> clap::Command {
                let defaults = BrokerConfig::default();
                command$(.arg(<$ty as $crate::config::setting::Value>::flag(
                    clap::Arg::new(stringify!($key))
                        .long(settings!(@flag $key $(, $flag)?))
                        .value_name($value_name)
                        .help($crate::config::setting::help_text(
                            &[$($doc),+],
                            &<$ty as $crate::config::setting::Value>::show(&defaults.$key),
                            &$crate::config::setting::Accepted::describe(&$accepted, <$ty as $crate::config::setting::Value>::show_number),
                        )),
                )))+
            }

            fn augment_args_for_update(command: clap::Command) -> clap::Command {
                Self::augment_args(command)
            }
        }

        impl clap::FromArgMatches for Overrides {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(Overrides {
                    $($key: <$ty as $crate::config::setting::Value>::from_matches(matches, stringify!($key)),)+
                })
            }

            fn update_from_arg_matches(
                &mut self,
                matches: &clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                $(if let Some(flag) = <$ty as $crate::config::setting::Value>::from_matches(matches, stringify!($key)) {
                    self.$key = Some(flag);
                })+
                Ok(())
            }
        }

        impl BrokerConfig {
            /// The keys in table order, each with what it accepts.
            #[cfg(test)]
            pub(crate) const KEYS: &'static [(&'static str, $crate::config::setting::Accepted)] =
                &[$((stringify!($key), $accepted)),+];

            /// Applies command-line overrides (flags win over the file).
            pub fn apply(&mut self, flags: &Overrides) {
                $(if let Some(flag) = &flags.$key {
                    $crate::config::setting::Value::override_with(&mut self.$key, flag.clone());
                })+
            }

            /// The value of a numeric key (for ranges that name another key).
            pub(crate) fn number(&self, key: &str) -> Option<u64> {
                match key {
                    $(stringify!($key) => $crate::config::setting::Value::number(&self.$key),)+
                    _ => None,
                }
            }

            /// Each key against its accepted values, in table order.
            pub(super) fn check_keys(&self) -> Result<(), $crate::config::ConfigError> {
                $($crate::config::setting::Accepted::check(
                    &$accepted,
                    self,
                    stringify!($key),
                    $crate::config::setting::Value::number(&self.$key),
                )?;)+
                Ok(())
            }

            /// Sets what each key maps to in `server`.
            pub(super) fn apply_to(&self, server: &mut $crate::server::ServerConfig) {
                $({
                    let into: fn(&mut $crate::server::ServerConfig, &BrokerConfig) = $into;
                    into(server, self);
                })+
            }
        }
    };
    (@flag $key:ident) => { stringify!($key).replace('_', "-") };
    (@flag $key:ident, $flag:literal) => { $flag };
}
pub(crate) use settings;

/// A flag's `--help`: the doc's lines joined, then its default and accepted values.
pub(crate) fn help_text(doc: &[&str], default: &str, accepted: &str) -> String {
    let doc: Vec<&str> = doc.iter().map(|line| line.trim()).collect();
    format!(
        "{} [default: {default}; accepted: {accepted}]",
        doc.join(" ")
    )
}
