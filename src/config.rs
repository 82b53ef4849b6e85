//! Broker configuration: documented defaults, an optional TOML file, command-line flags (flags
//! win), and validation that names the offending key and its accepted range.
//!
//! Every key of the file is also a flag (`max_payload` ⇔ `--max-payload`). A file may set any
//! subset of the keys; unknown keys are errors, so a typo never silently falls back to a default.
//! [`BrokerConfig::validate`] runs after the layers are merged; the broker does not start with an
//! invalid configuration. Validation reads the TLS certificate and key files (when TLS is on), so
//! a missing or unusable file stops the broker before it binds anything.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use uuid::Uuid;

use crate::auth::{AccessToken, Tokens};
use crate::ids::ChannelId;
use crate::protocol::{DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_CEILING};
use crate::router::RouterConfig;
use crate::server::{ServerConfig, TlsListenerConfig};
use crate::tls::TlsConfigError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// The effective configuration of a broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// Largest payload of one frame, bytes.
    pub max_payload: u64,
    /// Timeout of a request or broadcast whose start says 0, milliseconds.
    pub default_timeout_ms: u64,
    /// Longer requested timeouts are clamped to this, milliseconds.
    pub max_timeout_ms: u64,
    /// Outbound queue size above which producers feeding a connection are paused, bytes.
    pub high_watermark_bytes: u64,
    /// Paused producers resume when the queue drains below this, bytes.
    pub low_watermark_bytes: u64,
    /// Bytes one connection's waiting requests may hold before it is no longer read.
    pub max_held_bytes: u64,
    /// Requests that may wait for a receiver on one channel.
    pub max_waiting_per_channel: u64,
    /// Bytes read from one connection per loop turn.
    pub read_budget_bytes: u64,
    /// Bytes written to one connection per loop turn.
    pub write_budget_bytes: u64,
    /// After activity, poll without sleeping for this long, microseconds (0 = never spin).
    pub busy_poll_us: u64,
    /// A connection silent this long is pinged, milliseconds; 0 disables heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Pings a silent connection may leave unanswered before it is closed.
    pub heartbeat_misses: u64,
    /// How long a departed peer stays present before PEER_LEFT goes out, milliseconds.
    pub presence_grace_ms: u64,
    /// How long a graceful shutdown lets in-flight requests finish, milliseconds.
    pub drain_deadline_ms: u64,
    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`.
    pub metrics_listen: String,
    /// Address of the TLS listener, or `off` (plain TCP only). Needs `tls_cert` and `tls_key`.
    pub tls_listen: String,
    /// PEM file with the TLS certificate chain (the broker's certificate first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the TLS certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Broker connections open at once; one more gets LIMIT_EXCEEDED and is closed.
    pub max_connections: u64,
    /// Broker connections open at once from one IP address.
    pub max_connections_per_ip: u64,
    /// Channels that may exist at once.
    pub max_channels: u64,
    /// Peers (members and departed peers in their grace period) per channel.
    pub max_peers_per_channel: u64,
    /// Requests and broadcasts one connection may have in flight as their sender.
    pub max_in_flight_per_connection: u64,
    /// A connection without a completed handshake this long after accept is closed,
    /// milliseconds; 0 disables.
    pub handshake_timeout_ms: u64,
    /// Let the broker listen on a non-loopback address with no access token configured.
    pub allow_unauthenticated: bool,
    /// Broker-wide access token: required in the HELLO of every channel without its own token.
    /// Printed as `<redacted>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AccessToken>,
    /// Per-channel access tokens (`"channel uuid" = "token"`); a channel's own token wins over
    /// `auth_token`. Printed as `<redacted>`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_tokens: BTreeMap<String, AccessToken>,
}

/// The broker binary's metrics address (the library's [`ServerConfig`] serves no metrics by
/// default): next to the broker's default port, loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7879";

impl Default for BrokerConfig {
    fn default() -> Self {
        let router = RouterConfig::default();
        let server = ServerConfig::default();
        BrokerConfig {
            listen: server.listen,
            log_level: String::from("info"),
            max_payload: u64::from(DEFAULT_MAX_PAYLOAD),
            default_timeout_ms: router.default_timeout.as_millis() as u64,
            max_timeout_ms: router.max_timeout.as_millis() as u64,
            high_watermark_bytes: router.high_watermark as u64,
            low_watermark_bytes: router.low_watermark as u64,
            max_held_bytes: router.max_held_bytes as u64,
            max_waiting_per_channel: router.max_waiting_per_channel as u64,
            read_budget_bytes: server.read_budget as u64,
            write_budget_bytes: server.write_budget as u64,
            busy_poll_us: server.busy_poll.as_micros() as u64,
            heartbeat_interval_ms: router.heartbeat_interval.as_millis() as u64,
            heartbeat_misses: u64::from(router.heartbeat_misses),
            presence_grace_ms: router.presence_grace.as_millis() as u64,
            drain_deadline_ms: server.drain_deadline.as_millis() as u64,
            metrics_listen: String::from(DEFAULT_METRICS_LISTEN),
            tls_listen: String::from("off"),
            tls_cert: None,
            tls_key: None,
            max_connections: server.max_connections as u64,
            max_connections_per_ip: server.max_connections_per_ip as u64,
            max_channels: router.max_channels as u64,
            max_peers_per_channel: router.max_peers_per_channel as u64,
            max_in_flight_per_connection: router.max_in_flight_per_connection as u64,
            handshake_timeout_ms: router.handshake_timeout.as_millis() as u64,
            allow_unauthenticated: false,
            auth_token: None,
            channel_tokens: BTreeMap::new(),
        }
    }
}

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

/// Command-line overrides: one optional flag per key. Unset flags leave the file's (or the
/// default) value.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on [default: 127.0.0.1:7878].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log level: error, warn, info, debug, trace [default: info]; RUST_LOG, when set, wins.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Largest payload of one frame, bytes [default: 1048576; 1 ..= 16777216].
    #[arg(long)]
    pub max_payload: Option<u64>,
    /// Timeout of a request that says 0, ms [default: 30000; 1 ..= max-timeout-ms].
    #[arg(long)]
    pub default_timeout_ms: Option<u64>,
    /// Requested timeouts are clamped to this, ms [default: 3600000; 1 ..= 86400000].
    #[arg(long)]
    pub max_timeout_ms: Option<u64>,
    /// Outbound queue high watermark per connection, bytes [default: 4194304; 64 KiB ..= 1 GiB].
    #[arg(long)]
    pub high_watermark_bytes: Option<u64>,
    /// Outbound queue low watermark per connection, bytes [default: 1048576; below the high watermark].
    #[arg(long)]
    pub low_watermark_bytes: Option<u64>,
    /// Bytes held per connection for waiting requests, bytes [default: 4194304; 64 KiB ..= 1 GiB].
    #[arg(long)]
    pub max_held_bytes: Option<u64>,
    /// Requests waiting for a receiver per channel [default: 4096; 1 ..= 1000000].
    #[arg(long)]
    pub max_waiting_per_channel: Option<u64>,
    /// Bytes read per connection per loop turn [default: 262144; 4 KiB ..= 64 MiB].
    #[arg(long)]
    pub read_budget_bytes: Option<u64>,
    /// Bytes written per connection per loop turn [default: 1048576; 4 KiB ..= 64 MiB].
    #[arg(long)]
    pub write_budget_bytes: Option<u64>,
    /// After activity, poll without sleeping this long, µs; 0 = never [default: 0; 0 ..= 10000].
    #[arg(long)]
    pub busy_poll_us: Option<u64>,
    /// Ping a connection silent this long, ms; 0 = off [default: 10000; 0 or 10 ..= 3600000].
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Unanswered pings before a silent connection is closed [default: 3; 1 ..= 100].
    #[arg(long)]
    pub heartbeat_misses: Option<u64>,
    /// A departed peer's PEER_LEFT waits this long for a reconnect, ms [default: 1000; 0 ..= 600000].
    #[arg(long)]
    pub presence_grace_ms: Option<u64>,
    /// On SIGINT/SIGTERM, in-flight requests get this long to finish, ms [default: 5000; 0 ..= 600000].
    #[arg(long)]
    pub drain_deadline_ms: Option<u64>,
    /// Prometheus endpoint (GET /metrics): a socket address, or `off` [default: 127.0.0.1:7879].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// TLS listener: a socket address, or `off`; needs --tls-cert and --tls-key [default: off].
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<String>,
    /// PEM file with the TLS certificate chain (the broker's own certificate first).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the TLS certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Connections open at once; more get LIMIT_EXCEEDED [default: 10000; 1 ..= 1000000].
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Connections open at once from one IP [default: 1000; 1 ..= max-connections].
    #[arg(long)]
    pub max_connections_per_ip: Option<u64>,
    /// Channels that may exist at once [default: 100000; 1 ..= 10000000].
    #[arg(long)]
    pub max_channels: Option<u64>,
    /// Peers per channel [default: 10000; 1 ..= 65534].
    #[arg(long)]
    pub max_peers_per_channel: Option<u64>,
    /// Requests and broadcasts in flight per sending connection [default: 10000; 1 ..= 1000000].
    #[arg(long)]
    pub max_in_flight_per_connection: Option<u64>,
    /// Close a connection without a handshake after this long, ms; 0 = off [default: 10000; 0 ..= 3600000].
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Broker-wide access token clients send in HELLO (a file keeps it out of the process list).
    #[arg(long, value_name = "TOKEN")]
    pub auth_token: Option<AccessToken>,
    /// One channel's access token, wins over --auth-token there; repeatable.
    #[arg(long = "channel-token", value_name = "UUID=TOKEN")]
    pub channel_tokens: Vec<ChannelToken>,
    /// Allow a non-loopback --listen address with no access token configured.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

impl BrokerConfig {
    /// Parses a (possibly partial) TOML configuration; missing keys keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming `path` (used only for the message).
    pub fn from_toml(text: &str, path: &Path) -> Result<BrokerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        BrokerConfig::from_toml(&text, path)
    }

    /// Applies command-line overrides (flags win over the file).
    pub fn apply(&mut self, flags: &Overrides) {
        macro_rules! take {
            ($($key:ident),*) => { $( if let Some(v) = &flags.$key { self.$key = v.clone(); } )* };
        }
        take!(
            listen,
            log_level,
            max_payload,
            default_timeout_ms,
            max_timeout_ms,
            high_watermark_bytes,
            low_watermark_bytes,
            max_held_bytes,
            max_waiting_per_channel,
            read_budget_bytes,
            write_budget_bytes,
            busy_poll_us,
            heartbeat_interval_ms,
            heartbeat_misses,
            presence_grace_ms,
            drain_deadline_ms,
            metrics_listen,
            tls_listen,
            max_connections,
            max_connections_per_ip,
            max_channels,
            max_peers_per_channel,
            max_in_flight_per_connection,
            handshake_timeout_ms
        );
        if let Some(path) = &flags.tls_cert {
            self.tls_cert = Some(path.clone());
        }
        if let Some(path) = &flags.tls_key {
            self.tls_key = Some(path.clone());
        }
        if let Some(token) = &flags.auth_token {
            self.auth_token = Some(token.clone());
        }
        for flag in &flags.channel_tokens {
            self.channel_tokens
                .insert(flag.channel.clone(), flag.token.clone());
        }
        if flags.allow_unauthenticated {
            self.allow_unauthenticated = true;
        }
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

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        // A token travels as a HELLO payload: it cannot be longer than the max payload.
        let token_range = |key: &'static str, token: &AccessToken| {
            if token.is_empty() || token.len() as u64 > self.max_payload {
                Err(ConfigError::OutOfRange {
                    key,
                    // Never the token itself.
                    value: format!("a token of {} bytes", token.len()),
                    accepted: format!("1 ..= max_payload ({}) bytes", self.max_payload),
                })
            } else {
                Ok(())
            }
        };
        if let Some(token) = &self.auth_token {
            token_range("auth_token", token)?;
        }
        for (channel, token) in &self.channel_tokens {
            match Uuid::parse_str(channel) {
                Ok(id) if !id.is_nil() => {}
                _ => {
                    return Err(ConfigError::OutOfRange {
                        key: "channel_tokens",
                        value: format!("{channel:?}"),
                        accepted: String::from("a non-nil channel UUID as the key"),
                    })
                }
            }
            token_range("channel_tokens", token)?;
        }
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

    /// Checks every value against its accepted range.
    ///
    /// # Errors
    /// The first [`ConfigError::OutOfRange`] found, in key order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.log_level.parse::<log::LevelFilter>().is_err() {
            return Err(ConfigError::OutOfRange {
                key: "log_level",
                value: format!("{:?}", self.log_level),
                accepted: String::from("one of off, error, warn, info, debug, trace"),
            });
        }
        check(
            "max_payload",
            self.max_payload,
            1,
            u64::from(MAX_PAYLOAD_CEILING),
        )?;
        check("max_timeout_ms", self.max_timeout_ms, 1, 86_400_000)?;
        check(
            "default_timeout_ms",
            self.default_timeout_ms,
            1,
            self.max_timeout_ms,
        )?;
        check(
            "high_watermark_bytes",
            self.high_watermark_bytes,
            64 * KIB,
            GIB,
        )?;
        check(
            "low_watermark_bytes",
            self.low_watermark_bytes,
            0,
            self.high_watermark_bytes - 1,
        )?;
        check("max_held_bytes", self.max_held_bytes, 64 * KIB, GIB)?;
        check(
            "max_waiting_per_channel",
            self.max_waiting_per_channel,
            1,
            1_000_000,
        )?;
        check(
            "read_budget_bytes",
            self.read_budget_bytes,
            4 * KIB,
            64 * MIB,
        )?;
        check(
            "write_budget_bytes",
            self.write_budget_bytes,
            4 * KIB,
            64 * MIB,
        )?;
        check("busy_poll_us", self.busy_poll_us, 0, 10_000)?;
        self.metrics_addr()?;
        check("max_connections", self.max_connections, 1, 1_000_000)?;
        check(
            "max_connections_per_ip",
            self.max_connections_per_ip,
            1,
            self.max_connections,
        )?;
        check("max_channels", self.max_channels, 1, 10_000_000)?;
        // A WELCOME lists every other peer: 65 534 is what the default max payload carries.
        check(
            "max_peers_per_channel",
            self.max_peers_per_channel,
            1,
            65_534,
        )?;
        check(
            "max_in_flight_per_connection",
            self.max_in_flight_per_connection,
            1,
            1_000_000,
        )?;
        check(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            0,
            3_600_000,
        )?;
        self.validate_tls()?;
        self.validate_tokens()
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

    /// The TLS listener's address: `None` for `off`.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] when `tls_listen` is neither `off` nor a socket address.
    pub fn tls_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.tls_listen.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.tls_listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::OutOfRange {
                key: "tls_listen",
                value: format!("{:?}", self.tls_listen),
                accepted: String::from("a socket address (IP:port) or `off`"),
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
    /// [`ConfigError::OutOfRange`] when `metrics_listen` is neither `off` nor a socket address.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_listen.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.metrics_listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::OutOfRange {
                key: "metrics_listen",
                value: format!("{:?}", self.metrics_listen),
                accepted: String::from("a socket address (IP:port) or `off`"),
            })
    }

    /// The log level (after [`BrokerConfig::validate`]; `info` if it does not parse).
    pub fn log_filter(&self) -> log::LevelFilter {
        self.log_level.parse().unwrap_or(log::LevelFilter::Info)
    }

    /// The configuration as TOML, every key present (tokens only when set, as `<redacted>`):
    /// what `--print-config` shows.
    pub fn to_toml(&self) -> String {
        // Serializing a struct of plain scalars cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// The server configuration this describes (call [`BrokerConfig::validate`] first; values
    /// out of range are clamped here, never trusted).
    pub fn server_config(&self) -> ServerConfig {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        ServerConfig {
            listen: self.listen,
            router: RouterConfig {
                max_payload: u32::try_from(self.max_payload.min(u64::from(MAX_PAYLOAD_CEILING)))
                    .unwrap_or(MAX_PAYLOAD_CEILING),
                default_timeout: Duration::from_millis(self.default_timeout_ms),
                max_timeout: Duration::from_millis(self.max_timeout_ms),
                high_watermark: clamp(self.high_watermark_bytes),
                low_watermark: clamp(self.low_watermark_bytes),
                max_held_bytes: clamp(self.max_held_bytes),
                max_waiting_per_channel: clamp(self.max_waiting_per_channel),
                heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
                heartbeat_misses: u32::try_from(self.heartbeat_misses).unwrap_or(u32::MAX),
                presence_grace: Duration::from_millis(self.presence_grace_ms),
                max_channels: clamp(self.max_channels),
                max_peers_per_channel: clamp(self.max_peers_per_channel),
                max_in_flight_per_connection: clamp(self.max_in_flight_per_connection),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                tokens: self.tokens(),
            },
            read_budget: clamp(self.read_budget_bytes),
            write_budget: clamp(self.write_budget_bytes),
            busy_poll: Duration::from_micros(self.busy_poll_us),
            drain_deadline: Duration::from_millis(self.drain_deadline_ms),
            metrics_listen: self.metrics_addr().ok().flatten(),
            metrics_timeout: ServerConfig::default().metrics_timeout,
            max_connections: clamp(self.max_connections),
            max_connections_per_ip: clamp(self.max_connections_per_ip),
            tls: self.tls_listener(),
        }
    }
}

fn check(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            accepted: format!("{min} ..= {max}"),
        })
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_channel_token_flag_parses_and_never_prints_its_token() {
        let flag: super::ChannelToken = "00000000-0000-0000-0000-000000000001=hunter2"
            .parse()
            .unwrap();
        assert!(!format!("{flag:?}").contains("hunter2"));
        assert!("no-equals".parse::<super::ChannelToken>().is_err());
    }

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_server_defaults() {
        let config = BrokerConfig::default();
        config.validate().unwrap();
        let server = config.server_config();
        let expected = ServerConfig::default();
        assert_eq!(server.listen, expected.listen);
        assert_eq!(server.router.max_payload, expected.router.max_payload);
        assert_eq!(server.router.high_watermark, expected.router.high_watermark);
        assert_eq!(server.read_budget, expected.read_budget);
        assert_eq!(server.max_connections, expected.max_connections);
        assert_eq!(
            server.max_connections_per_ip,
            expected.max_connections_per_ip
        );
        assert_eq!(server.router.max_channels, expected.router.max_channels);
        assert_eq!(
            server.router.max_peers_per_channel,
            expected.router.max_peers_per_channel
        );
        assert_eq!(
            server.router.max_in_flight_per_connection,
            expected.router.max_in_flight_per_connection
        );
        assert_eq!(
            server.router.handshake_timeout,
            expected.router.handshake_timeout
        );
    }

    #[test]
    fn resource_limits_are_keys_and_flags_with_ranges() {
        let mut config = BrokerConfig::from_toml(
            "max_connections = 50\nmax_channels = 7\nhandshake_timeout_ms = 0\n",
            Path::new("x"),
        )
        .unwrap();
        config.apply(&Overrides {
            max_connections_per_ip: Some(5),
            max_peers_per_channel: Some(3),
            max_in_flight_per_connection: Some(2),
            ..Overrides::default()
        });
        config.validate().unwrap();
        let server = config.server_config();
        assert_eq!(
            (server.max_connections, server.max_connections_per_ip),
            (50, 5)
        );
        assert_eq!(server.router.max_channels, 7);
        assert_eq!(server.router.max_peers_per_channel, 3);
        assert_eq!(server.router.max_in_flight_per_connection, 2);
        assert!(server.router.handshake_timeout.is_zero());

        let refused = |config: BrokerConfig, key: &str, range: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(range),
                "{err}"
            );
        };
        let base = BrokerConfig::default();
        refused(
            BrokerConfig {
                max_connections: 0,
                ..base.clone()
            },
            "max_connections",
            "1 ..= 1000000",
        );
        refused(
            BrokerConfig {
                max_connections_per_ip: 20_000,
                ..base.clone()
            },
            "max_connections_per_ip",
            "1 ..= 10000",
        );
        refused(
            BrokerConfig {
                max_channels: 0,
                ..base.clone()
            },
            "max_channels",
            "1 ..= 10000000",
        );
        refused(
            BrokerConfig {
                max_peers_per_channel: 70_000,
                ..base.clone()
            },
            "max_peers_per_channel",
            "1 ..= 65534",
        );
        refused(
            BrokerConfig {
                max_in_flight_per_connection: 0,
                ..base.clone()
            },
            "max_in_flight_per_connection",
            "1 ..= 1000000",
        );
        refused(
            BrokerConfig {
                handshake_timeout_ms: 3_600_001,
                ..base
            },
            "handshake_timeout_ms",
            "0 ..= 3600000",
        );
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults_and_flags_win() {
        let path = Path::new("test.toml");
        let mut config =
            BrokerConfig::from_toml("max_payload = 4096\nlisten = \"127.0.0.1:9000\"\n", path)
                .unwrap();
        assert_eq!(config.max_payload, 4096);
        assert_eq!(config.default_timeout_ms, 30_000);
        config.apply(&Overrides {
            max_payload: Some(8192),
            ..Overrides::default()
        });
        assert_eq!(config.max_payload, 8192);
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_the_key_named() {
        let path = Path::new("bad.toml");
        let err = BrokerConfig::from_toml("max_paylod = 1\n", path).unwrap_err();
        assert!(err.to_string().contains("max_paylod"), "{err}");
        let err = BrokerConfig::from_toml("max_payload = \"big\"\n", path).unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_range() {
        let mut config = BrokerConfig {
            max_payload: 0,
            ..BrokerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`max_payload`") && err.contains("1 ..= 16777216"),
            "{err}"
        );

        config = BrokerConfig {
            low_watermark_bytes: 5 * MIB,
            ..BrokerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("low_watermark_bytes") && err.contains("0 ..= 4194303"),
            "{err}"
        );

        config = BrokerConfig {
            default_timeout_ms: 7_200_000,
            ..BrokerConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_timeout_ms"));

        config = BrokerConfig {
            log_level: "loud".into(),
            ..BrokerConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("log_level"));
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        let config = BrokerConfig::default();
        assert_eq!(
            config.server_config().metrics_listen,
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        let mut config =
            BrokerConfig::from_toml("metrics_listen = \"off\"\n", Path::new("x")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.server_config().metrics_listen, None);
        config.apply(&Overrides {
            metrics_listen: Some("0.0.0.0:9100".into()),
            ..Overrides::default()
        });
        assert_eq!(
            config.server_config().metrics_listen,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        config.metrics_listen = "localhost".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("metrics_listen") && err.contains("off"),
            "{err}"
        );
    }

    #[test]
    fn tokens_come_from_the_file_and_flags_and_never_print() {
        let ch = "6f1c1a52-35b1-4b8e-9c5e-2f0a9d3c7e11";
        let mut config = BrokerConfig::from_toml(
            &format!(
                "auth_token = \"broker-secret\"\n[channel_tokens]\n\"{ch}\" = \"file-secret\"\n"
            ),
            Path::new("x"),
        )
        .unwrap();
        config.validate().unwrap();
        let other = "0b7f0ab5-8d3a-4c52-a3c9-9d0f1e6b2a44";
        config.apply(&Overrides {
            channel_tokens: vec![format!("{other}=flag-secret").parse().unwrap()],
            ..Overrides::default()
        });
        config.validate().unwrap();
        let tokens = config.server_config().router.tokens;
        let id = |s: &str| ChannelId(Uuid::parse_str(s).unwrap());
        assert!(tokens.admits(id(ch), b"file-secret") && !tokens.admits(id(ch), b"broker-secret"));
        assert!(tokens.admits(id(other), b"flag-secret"));
        assert!(tokens.admits(ChannelId::random(), b"broker-secret"));
        assert!(!tokens.admits(ChannelId::random(), b""));

        for shown in [
            config.to_toml(),
            format!("{config:?}"),
            format!("{:?}", config.server_config()),
        ] {
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn no_tokens_beyond_loopback_needs_allow_unauthenticated() {
        let mut config = BrokerConfig {
            listen: "0.0.0.0:7878".parse().unwrap(),
            ..BrokerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`allow_unauthenticated = true`") && err.contains("0.0.0.0:7878"),
            "{err}"
        );
        config.allow_unauthenticated = true;
        config.validate().unwrap();
        config.allow_unauthenticated = false;
        config.auth_token = Some("t".parse().unwrap());
        config.validate().unwrap();
        config.auth_token = Some(AccessToken::new(Vec::new()));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`auth_token`"), "{err}");
        config.auth_token = None;
        config
            .channel_tokens
            .insert("nope".into(), "hidden".parse().unwrap());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("`channel_tokens`") && !err.contains("hidden"),
            "{err}"
        );
        // Loopback needs no token (the default).
        BrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn tls_needs_the_listener_and_both_files_and_errors_name_the_key_or_file() {
        use switchyard_testkit::Scratch;
        let dir = Scratch::new("config");
        let (cert, key) = dir.self_signed("broker");
        let (_, other_key) = dir.self_signed("other");
        let on = |cert: Option<&Path>, key: Option<&Path>| BrokerConfig {
            tls_listen: "127.0.0.1:0".into(),
            tls_cert: cert.map(Path::to_owned),
            tls_key: key.map(Path::to_owned),
            ..BrokerConfig::default()
        };
        let message = |config: BrokerConfig| config.validate().unwrap_err().to_string();

        // Off by default: no TLS listener.
        assert_eq!(BrokerConfig::default().server_config().tls, None);

        // The pieces must come together.
        let err = message(on(None, Some(&key)));
        assert!(err.contains("`tls_cert` (--tls-cert) is required"), "{err}");
        let err = message(on(Some(&cert), None));
        assert!(err.contains("`tls_key` (--tls-key) is required"), "{err}");
        let err = message(BrokerConfig {
            tls_key: Some(key.clone()),
            ..BrokerConfig::default()
        });
        assert!(
            err.contains("`tls_key`") && err.contains("`tls_listen` is off"),
            "{err}"
        );
        let err = message(BrokerConfig {
            tls_cert: Some(cert.clone()),
            ..BrokerConfig::default()
        });
        assert!(
            err.contains("`tls_cert`") && err.contains("`tls_listen` is off"),
            "{err}"
        );
        let err = message(BrokerConfig {
            tls_listen: "port 7443".into(),
            ..on(Some(&cert), Some(&key))
        });
        assert!(err.contains("`tls_listen`") && err.contains("off"), "{err}");

        // The files are read at validation, and the errors name them.
        let missing = dir.0.join("missing.crt");
        let err = on(Some(&missing), Some(&key)).validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Tls(TlsConfigError::Read { path, .. }) if *path == missing),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing.crt"), "{err}");
        let err = on(Some(&key), Some(&key)).validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Tls(TlsConfigError::NoCertificate { path }) if *path == key),
            "{err:?}"
        );
        let err = on(Some(&cert), Some(&cert)).validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Tls(TlsConfigError::NoKey { path }) if *path == cert),
            "{err:?}"
        );
        let err = on(Some(&cert), Some(&other_key)).validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Tls(TlsConfigError::KeyMismatch { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("other.key") && err.to_string().contains("broker.crt"),
            "{err}"
        );

        // Flags set the same keys; a good pair is a TLS listener; print-config shows it.
        let mut config = BrokerConfig::default();
        config.apply(&Overrides {
            tls_listen: Some("127.0.0.1:7443".into()),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..Overrides::default()
        });
        config.validate().unwrap();
        let tls = config.server_config().tls.expect("a TLS listener");
        assert_eq!(tls.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!((tls.cert_path, tls.key_path), (cert.clone(), key.clone()));
        let printed = config.to_toml();
        assert!(
            printed.contains("tls_listen = \"127.0.0.1:7443\""),
            "{printed}"
        );
        assert!(printed.contains("tls_cert = "), "{printed}");
        assert_eq!(
            BrokerConfig::from_toml(&printed, Path::new("x")).unwrap(),
            config
        );
        assert!(BrokerConfig::default()
            .to_toml()
            .contains("tls_listen = \"off\""));

        // A TLS listener beyond loopback needs tokens like the plain one.
        let err = message(BrokerConfig {
            tls_listen: "0.0.0.0:7443".into(),
            ..on(Some(&cert), Some(&key))
        });
        assert!(err.contains("0.0.0.0:7443"), "{err}");
    }

    #[test]
    fn printed_config_parses_back_to_the_same() {
        let config = BrokerConfig {
            max_waiting_per_channel: 17,
            ..BrokerConfig::default()
        };
        let printed = config.to_toml();
        assert!(
            printed.contains("max_waiting_per_channel = 17"),
            "{printed}"
        );
        assert_eq!(
            BrokerConfig::from_toml(&printed, Path::new("x")).unwrap(),
            config
        );
    }
}
