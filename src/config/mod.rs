//! Broker configuration: documented defaults, an optional TOML file, command-line flags (flags
//! win), and validation that names the offending key and its accepted range.
//!
//! Every setting is stated once, in the table of `settings.rs`: its key, its flag, its doc (the
//! flag's `--help`), its default, its accepted values and what it sets in [`ServerConfig`]. The
//! `settings!` macro makes the rest from that table: [`BrokerConfig`] (the file's
//! keys), [`Overrides`] (the flags), the defaults, the range checks and the mapping. `setting.rs`
//! holds that machinery, `file.rs` the TOML side, this module the errors and the rules that join
//! several keys.
//!
//! Every key of the file is also a flag (`max_payload` ⇔ `--max-payload`). A file may set any
//! subset of the keys; unknown keys are errors, so a typo never silently falls back to a default.
//! Sizes accept binary units (`64KiB`, `1MiB`, `1GiB`) or plain bytes, in the file and as flags;
//! listen addresses accept `localhost:PORT` and `:PORT` for `127.0.0.1:PORT` (`addr.rs`).
//! [`BrokerConfig::validate`] runs after the layers are merged; the broker does not start with an
//! invalid configuration. Validation reads the TLS certificate and key files (when TLS is on), so
//! a missing or unusable file stops the broker before it binds anything.
//!
//! Tokens never print: `Debug` shows `<redacted>`, and [`BrokerConfig::to_toml`]
//! (`--print-config`) writes them commented out, so its output fed back through `--config` is
//! the same configuration without tokens; a token that is the literal `<redacted>` is refused.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use uuid::Uuid;

use crate::auth::{AccessToken, Tokens, REDACTED};
use crate::ids::ChannelId;
use crate::server::{ServerConfig, TlsListenerConfig};
use crate::tls::TlsConfigError;

mod addr;
mod file;
mod setting;
mod settings;
#[cfg(test)]
mod tests;

pub use setting::Size;
pub use settings::{BrokerConfig, Overrides};

/// The broker binary's metrics address (the library's [`ServerConfig`] serves no metrics by
/// default): next to the broker's default port, loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7879";

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (syntax, unknown key, wrong type).
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, naming the line and key.
        message: String,
    },
    /// A value is outside its accepted range.
    OutOfRange {
        /// The key (as in the file; the flag is the same with dashes).
        key: &'static str,
        /// The value given.
        value: String,
        /// The accepted range, in words.
        accepted: String,
    },
    /// No access token is configured and the listen address is not a loopback address, without
    /// `allow_unauthenticated`.
    Unauthenticated {
        /// The listen address.
        listen: SocketAddr,
    },
    /// A key is set (or missing) in a way that contradicts another one: the TLS files without
    /// `tls_listen`, or `tls_listen` without one of the files.
    Inconsistent {
        /// The key at fault (as in the file; the flag is the same with dashes).
        key: &'static str,
        /// What is wrong with it, in words.
        message: &'static str,
    },
    /// A token is the placeholder `<redacted>` that `--print-config` shows in a token's place:
    /// a printed configuration was fed back with its token lines uncommented. Put the real
    /// token there.
    RedactedToken {
        /// The key (`auth_token` or `channel_tokens`).
        key: &'static str,
    },
    /// The TLS certificate or key file is unusable (the error names the file).
    Tls(TlsConfigError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read config file {}: {error}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "invalid config file {}: {message}", path.display())
            }
            ConfigError::OutOfRange {
                key,
                value,
                accepted,
            } => write!(
                f,
                "invalid value {value} for `{key}` (--{}): accepted {accepted}",
                key.replace('_', "-")
            ),
            ConfigError::Unauthenticated { listen } => write!(
                f,
                "refusing to listen on {listen} (not a loopback address) with no access tokens \
                 configured: any client could join any channel; set `auth_token` \
                 (--auth-token) or `channel_tokens` (--channel-token UUID=TOKEN), or set \
                 `allow_unauthenticated = true` (--allow-unauthenticated) to accept that"
            ),
            ConfigError::Inconsistent { key, message } => {
                write!(f, "`{key}` (--{}) {message}", key.replace('_', "-"))
            }
            ConfigError::RedactedToken { key } => write!(
                f,
                "`{key}` is the placeholder \"{REDACTED}\" that --print-config shows instead of \
                 a token; set the real token"
            ),
            ConfigError::Tls(error) => write!(f, "TLS: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            ConfigError::Tls(error) => Some(error),
            _ => None,
        }
    }
}

impl BrokerConfig {
    /// Checks every key against its accepted values (in table order), then the rules that join
    /// keys: the TLS listener with both its files (which are read and checked against each
    /// other), and access tokens or `allow_unauthenticated` beyond loopback.
    ///
    /// # Errors
    /// The first error found: [`ConfigError::OutOfRange`] naming the key and its range,
    /// [`ConfigError::RedactedToken`], [`ConfigError::Inconsistent`], [`ConfigError::Tls`] or
    /// [`ConfigError::Unauthenticated`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_keys()?;
        self.check_peer_lists()?;
        self.validate_tls()?;
        if !self.has_tokens() && !self.allow_unauthenticated {
            let tls_listen = self.tls_addr().ok().flatten();
            for listen in std::iter::once(self.listen).chain(tls_listen) {
                if !listen.ip().is_loopback() {
                    return Err(ConfigError::Unauthenticated { listen });
                }
            }
        }
        Ok(())
    }

    /// Every peer list the broker sends fits in one frame of `max_payload` (PROTOCOL.md §9.1):
    /// `max_peers_per_channel` is at most `(max_payload − 84) / 16 + 1`. The two keys are
    /// coupled rather than the lists split across frames: no client has to reassemble a list.
    fn check_peer_lists(&self) -> Result<(), ConfigError> {
        let max_payload = u32::try_from(self.max_payload.0).unwrap_or(u32::MAX);
        let fit = crate::router::RouterConfig::max_peers_for_payload(max_payload);
        if self.max_peers_per_channel > fit as u64 {
            return Err(ConfigError::OutOfRange {
                key: "max_peers_per_channel",
                value: self.max_peers_per_channel.to_string(),
                accepted: if fit == 0 {
                    format!(
                        "none with max_payload {max_payload}: it must be at least {} bytes \
                         (an empty peer list)",
                        crate::protocol::PEER_LIST_OVERHEAD
                    )
                } else {
                    format!(
                        "1 ..= {fit} with max_payload {max_payload} (a WELCOME, PEERS or \
                         BROADCAST_INCOMPLETE frame lists the other peers in one frame: \
                         (max_payload - 84) / 16 + 1); raise max_payload or lower this"
                    )
                },
            });
        }
        Ok(())
    }

    /// `tls_listen` and both files together, or none of them; then the files are read and the
    /// key checked against the certificate.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let inconsistent = |key, message| Err(ConfigError::Inconsistent { key, message });
        if self.tls_addr()?.is_none() {
            if self.tls_cert.is_some() {
                return inconsistent("tls_cert", "is set but `tls_listen` is off");
            }
            if self.tls_key.is_some() {
                return inconsistent("tls_key", "is set but `tls_listen` is off");
            }
            return Ok(());
        }
        if self.tls_cert.is_none() {
            return inconsistent("tls_cert", "is required with `tls_listen`");
        }
        if self.tls_key.is_none() {
            return inconsistent("tls_key", "is required with `tls_listen`");
        }
        if let Some(tls) = self.tls_listener() {
            tls.load().map_err(ConfigError::Tls)?;
        }
        Ok(())
    }

    /// True when at least one access token is configured.
    pub fn has_tokens(&self) -> bool {
        self.auth_token.is_some() || !self.channel_tokens.is_empty()
    }

    /// The access tokens (call [`BrokerConfig::validate`] first: channels that do not parse
    /// are skipped here).
    pub fn tokens(&self) -> Tokens {
        Tokens {
            broker: self.auth_token.clone(),
            channels: self
                .channel_tokens
                .iter()
                .filter_map(|(channel, token)| {
                    Some((ChannelId(Uuid::parse_str(channel).ok()?), token.clone()))
                })
                .collect(),
        }
    }

    /// The TLS listener's address: `None` for `off`.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] when `tls_listen` is neither `off` nor a listen address
    /// (`IP:PORT`, `localhost:PORT`, `:PORT`).
    pub fn tls_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.tls_listen.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        addr::parse_listen_addr(&self.tls_listen)
            .map(Some)
            .map_err(|_| ConfigError::OutOfRange {
                key: "tls_listen",
                value: format!("{:?}", self.tls_listen),
                accepted: format!("{} or `off`", addr::LISTEN_ADDR_FORMS),
            })
    }

    /// The TLS listener this describes, when `tls_listen` and both files are set.
    pub fn tls_listener(&self) -> Option<TlsListenerConfig> {
        Some(TlsListenerConfig {
            listen: self.tls_addr().ok().flatten()?,
            cert_path: self.tls_cert.clone()?,
            key_path: self.tls_key.clone()?,
        })
    }

    /// The metrics endpoint's address: `None` for `off`.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] when `metrics_listen` is neither `off` nor a listen address
    /// (`IP:PORT`, `localhost:PORT`, `:PORT`).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_listen.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        addr::parse_listen_addr(&self.metrics_listen)
            .map(Some)
            .map_err(|_| ConfigError::OutOfRange {
                key: "metrics_listen",
                value: format!("{:?}", self.metrics_listen),
                accepted: format!("{} or `off`", addr::LISTEN_ADDR_FORMS),
            })
    }

    /// The log level (after [`BrokerConfig::validate`]; `info` if it does not parse).
    pub fn log_filter(&self) -> log::LevelFilter {
        self.log_level.parse().unwrap_or(log::LevelFilter::Info)
    }

    /// The server configuration this describes (call [`BrokerConfig::validate`] first; values
    /// out of range are clamped here, never trusted). What the broker has no key for keeps
    /// [`ServerConfig::default`].
    pub fn server_config(&self) -> ServerConfig {
        let mut server = ServerConfig::default();
        self.apply_to(&mut server);
        server
    }
}

/// `--channel-token UUID=TOKEN`: one channel's token on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelToken {
    /// The channel (as written: validated with the rest of the configuration).
    pub channel: String,
    /// Its token.
    pub token: AccessToken,
}

impl FromStr for ChannelToken {
    type Err = String;

    fn from_str(s: &str) -> Result<ChannelToken, String> {
        let (channel, token) = s
            .split_once('=')
            .ok_or_else(|| String::from("expected CHANNEL_UUID=TOKEN"))?;
        Ok(ChannelToken {
            channel: channel.trim().to_owned(),
            token: token.parse()?,
        })
    }
}
