//! The table of settings: every key of the broker's configuration, stated once.
//!
//! Each entry is
//!
//! ```text
//! /// Doc: the field's doc and the flag's --help (default and accepted values are appended).
//! key: Type, "VALUE_NAME" [, flag "other-flag-name"] {
//!     default: |server_defaults| ..,         // from ServerConfig::default() where it has one
//!     accepted: range(min, max) | ..,        // checked by validate(), printed by --help
//!     into: |server_config, config| ..,      // what the key sets in ServerConfig
//! }
//! ```
//!
//! and [`settings!`] generates the file struct, the flags, the defaults, the range checks and the
//! mapping from it. Adding a key is adding an entry here (and a row to README.md's table).
//!
//! Invariants (checked by `tests.rs`): a range that names another key names an earlier, numeric
//! one, because keys are validated in table order; the defaults pass validation and map onto
//! exactly [`ServerConfig::default`](crate::server::ServerConfig::default).
//!
//! Rules that join several keys (the TLS listener needs its two files; no token beyond loopback
//! needs `allow_unauthenticated`) are not one key's: they are in `BrokerConfig::validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use super::addr::LISTEN_ADDR_FORMS;
use super::setting::{below_key, range, settings, up_to_key, Accepted, Size};
use super::{ConfigError, DEFAULT_METRICS_LISTEN};
use crate::auth::{AccessToken, REDACTED};
use crate::protocol::{MAX_HELLO_PAYLOAD, MAX_PAYLOAD_CEILING};

/// A duration as whole milliseconds (the defaults are whole milliseconds).
fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A count as the server's `usize`, saturating.
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

settings! {
    /// Address to listen on.
    #[serde(deserialize_with = "super::addr::deserialize_listen_addr")]
    listen: SocketAddr, "ADDR" {
        default: |d| d.listen,
        accepted: Accepted::Parsed(LISTEN_ADDR_FORMS),
        into: |s, c| s.listen = c.listen,
    }

    /// Log level; RUST_LOG, when set, wins.
    log_level: String, "LEVEL" {
        default: |_| String::from("info"),
        accepted: Accepted::Rule("off, error, warn, info, debug or trace", check_log_level),
        // The binary's logger reads it (`BrokerConfig::log_filter`); the server has no level.
        into: |_, _| {},
    }

    /// Largest payload of one frame, bytes.
    max_payload: Size, "SIZE" {
        default: |d| Size::from(d.router.max_payload),
        accepted: range(1, MAX_PAYLOAD_CEILING as u64),
        into: |s, c| {
            s.router.max_payload = u32::try_from(c.max_payload.0).unwrap_or(MAX_PAYLOAD_CEILING)
        },
    }

    /// Requested timeouts are clamped to this, ms.
    max_timeout_ms: u64, "MS" {
        default: |d| ms(d.router.max_timeout),
        // A day: longer is a job queue's business, not a broker's.
        accepted: range(1, 86_400_000),
        into: |s, c| s.router.max_timeout = Duration::from_millis(c.max_timeout_ms),
    }

    /// Timeout of a request or broadcast whose start says 0, ms.
    default_timeout_ms: u64, "MS" {
        default: |d| ms(d.router.default_timeout),
        accepted: up_to_key(1, "max_timeout_ms"),
        into: |s, c| s.router.default_timeout = Duration::from_millis(c.default_timeout_ms),
    }

    /// Outbound queue size per connection above which its producers are paused, bytes.
    high_watermark_bytes: Size, "SIZE" {
        default: |d| Size::from(d.router.high_watermark),
        accepted: range(Size::kib(64).0, Size::gib(1).0),
        into: |s, c| s.router.high_watermark = c.high_watermark_bytes.to_usize(),
    }

    /// Paused producers resume when the queue drains below this, bytes.
    low_watermark_bytes: Size, "SIZE" {
        default: |d| Size::from(d.router.low_watermark),
        accepted: below_key(0, "high_watermark_bytes"),
        into: |s, c| s.router.low_watermark = c.low_watermark_bytes.to_usize(),
    }

    /// Bytes one connection's waiting requests may hold before it is no longer read.
    max_held_bytes: Size, "SIZE" {
        default: |d| Size::from(d.router.max_held_bytes),
        accepted: range(Size::kib(64).0, Size::gib(1).0),
        into: |s, c| s.router.max_held_bytes = c.max_held_bytes.to_usize(),
    }

    /// Bytes the broker may hold for its clients in all (queues, held frames, read buffers).
    max_buffered_bytes: Size, "SIZE" {
        default: |d| Size::from(d.router.max_buffered_bytes),
        accepted: range(Size::mib(1).0, Size::gib(1024).0),
        into: |s, c| s.router.max_buffered_bytes = c.max_buffered_bytes.to_usize(),
    }

    /// Requests that may wait for a receiver on one channel.
    max_waiting_per_channel: u64, "N" {
        default: |d| d.router.max_waiting_per_channel as u64,
        accepted: range(1, 1_000_000),
        into: |s, c| s.router.max_waiting_per_channel = count(c.max_waiting_per_channel),
    }

    /// Bytes read from one connection per loop turn.
    read_budget_bytes: Size, "SIZE" {
        default: |d| Size::from(d.read_budget),
        accepted: range(Size::kib(4).0, Size::mib(64).0),
        into: |s, c| s.read_budget = c.read_budget_bytes.to_usize(),
    }

    /// Bytes written to one connection per loop turn.
    write_budget_bytes: Size, "SIZE" {
        default: |d| Size::from(d.write_budget),
        accepted: range(Size::kib(4).0, Size::mib(64).0),
        into: |s, c| s.write_budget = c.write_budget_bytes.to_usize(),
    }

    /// After activity, poll without sleeping this long, µs; 0 = never spin.
    busy_poll_us: u64, "US" {
        default: |d| u64::try_from(d.busy_poll.as_micros()).unwrap_or(u64::MAX),
        // 10 ms: past that, spinning burns a core for nothing a sleep would not give.
        accepted: range(0, 10_000),
        into: |s, c| s.busy_poll = Duration::from_micros(c.busy_poll_us),
    }

    /// A connection silent this long is pinged, ms; 0 disables heartbeats.
    heartbeat_interval_ms: u64, "MS" {
        default: |d| ms(d.router.heartbeat_interval),
        // Below 10 ms pings would be most of the traffic.
        accepted: Accepted::OffOr(10, 3_600_000),
        into: |s, c| s.router.heartbeat_interval = Duration::from_millis(c.heartbeat_interval_ms),
    }

    /// Pings a silent connection may leave unanswered before it is closed.
    heartbeat_misses: u64, "N" {
        default: |d| u64::from(d.router.heartbeat_misses),
        accepted: range(1, 100),
        into: |s, c| s.router.heartbeat_misses = u32::try_from(c.heartbeat_misses).unwrap_or(u32::MAX),
    }

    /// How long a departed peer stays present (for a reconnect) before PEER_LEFT goes out, ms.
    presence_grace_ms: u64, "MS" {
        default: |d| ms(d.router.presence_grace),
        accepted: range(0, 600_000),
        into: |s, c| s.router.presence_grace = Duration::from_millis(c.presence_grace_ms),
    }

    /// On SIGINT/SIGTERM, how long in-flight requests get to finish, ms.
    drain_deadline_ms: u64, "MS" {
        default: |d| ms(d.drain_deadline),
        accepted: range(0, 600_000),
        into: |s, c| s.drain_deadline = Duration::from_millis(c.drain_deadline_ms),
    }

    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`.
    metrics_listen: String, "ADDR" {
        // The library serves no metrics by default; the broker binary does, on loopback.
        default: |_| String::from(DEFAULT_METRICS_LISTEN),
        accepted: Accepted::Rule("IP:PORT, localhost:PORT, :PORT or `off`", |c, _| {
            c.metrics_addr().map(drop)
        }),
        into: |s, c| s.metrics_listen = c.metrics_addr().ok().flatten(),
    }

    /// Per-channel series in a scrape: the members of this many busiest channels; 0 = none.
    metrics_channel_series: u64, "N" {
        default: |d| d.metrics_channel_series as u64,
        // A scrape lists at most this many lines of them; choosing them is one pass over the
        // channels per scrape.
        accepted: range(0, 1_000),
        into: |s, c| s.metrics_channel_series = count(c.metrics_channel_series),
    }

    /// Address of the TLS listener, or `off` (plain TCP only); needs tls-cert and tls-key.
    tls_listen: String, "ADDR" {
        default: |d| d.tls.as_ref().map_or_else(|| String::from("off"), |t| t.listen.to_string()),
        accepted: Accepted::Rule("IP:PORT, localhost:PORT, :PORT or `off`", |c, _| {
            c.tls_addr().map(drop)
        }),
        // The listener takes tls_cert and tls_key with it.
        into: |s, c| s.tls = c.tls_listener(),
    }

    /// PEM file with the TLS certificate chain (the broker's own certificate first).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>, "FILE" {
        default: |d| d.tls.as_ref().map(|t| t.cert_path.clone()),
        accepted: Accepted::Parsed("a PEM file, with tls-listen"),
        into: |_, _| {}, // part of tls_listen's listener
    }

    /// PEM file with the TLS certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>, "FILE" {
        default: |d| d.tls.as_ref().map(|t| t.key_path.clone()),
        accepted: Accepted::Parsed("a PEM file, with tls-listen"),
        into: |_, _| {}, // part of tls_listen's listener
    }

    /// Broker connections open at once; one more gets LIMIT_EXCEEDED and is closed.
    max_connections: u64, "N" {
        default: |d| d.max_connections as u64,
        accepted: range(1, 1_000_000),
        into: |s, c| s.max_connections = count(c.max_connections),
    }

    /// Broker connections open at once from one IP address (loopback is exempt).
    max_connections_per_ip: u64, "N" {
        default: |d| d.max_connections_per_ip as u64,
        accepted: up_to_key(1, "max_connections"),
        into: |s, c| s.max_connections_per_ip = count(c.max_connections_per_ip),
    }

    /// Connections awaiting their HELLO at once; one more evicts the oldest (HANDSHAKE_REQUIRED).
    max_unauthenticated: u64, "N" {
        default: |d| d.router.max_unauthenticated as u64,
        // Above max_connections it is never reached (harmless), so no joint rule is needed.
        accepted: range(1, 1_000_000),
        into: |s, c| s.router.max_unauthenticated = count(c.max_unauthenticated),
    }

    /// Channels that may exist at once.
    max_channels: u64, "N" {
        default: |d| d.router.max_channels as u64,
        accepted: range(1, 10_000_000),
        into: |s, c| s.router.max_channels = count(c.max_channels),
    }

    /// Peers per channel (members and departed peers in their grace period).
    max_peers_per_channel: u64, "N" {
        default: |d| d.router.max_peers_per_channel as u64,
        // A WELCOME lists every other peer: 65 534 is what the default max payload carries
        // before its reserve; `BrokerConfig::validate` ties it to max_payload exactly.
        accepted: range(1, 65_534),
        into: |s, c| s.router.max_peers_per_channel = count(c.max_peers_per_channel),
    }

    /// Requests and broadcasts one connection may have in flight as their sender.
    max_in_flight_per_connection: u64, "N" {
        default: |d| d.router.max_in_flight_per_connection as u64,
        accepted: range(1, 1_000_000),
        into: |s, c| {
            s.router.max_in_flight_per_connection = count(c.max_in_flight_per_connection)
        },
    }

    /// Requests and broadcasts in flight in the whole broker.
    max_requests_in_flight: u64, "N" {
        default: |d| d.router.max_requests_in_flight as u64,
        accepted: range(1, 100_000_000),
        into: |s, c| s.router.max_requests_in_flight = count(c.max_requests_in_flight),
    }

    /// A connection without a completed handshake this long after accept is closed, ms; 0 = off.
    handshake_timeout_ms: u64, "MS" {
        default: |d| ms(d.router.handshake_timeout),
        accepted: range(0, 3_600_000),
        into: |s, c| s.router.handshake_timeout = Duration::from_millis(c.handshake_timeout_ms),
    }

    /// Allow a non-loopback listen address with no access token configured.
    allow_unauthenticated: bool, "BOOL" {
        default: |_| false,
        accepted: Accepted::Parsed("true or false"),
        // A start-up check (`BrokerConfig::validate`), nothing the server keeps.
        into: |_, _| {},
    }

    /// Broker-wide access token clients send in HELLO (a file keeps it out of the process list).
    #[serde(skip_serializing)]
    auth_token: Option<AccessToken>, "TOKEN" {
        default: |d| d.router.tokens.broker.clone(),
        accepted: Accepted::Rule("1 ..= 4096 bytes (and at most max-payload)", |c, key| match &c.auth_token {
            Some(token) => check_token(c, key, token),
            None => Ok(()),
        }),
        into: |s, c| s.router.tokens = c.tokens(), // with channel_tokens
    }

    /// One channel's access token, wins over the broker-wide one there; repeatable.
    #[serde(skip_serializing)]
    channel_tokens: BTreeMap<String, AccessToken>, "UUID=TOKEN", flag "channel-token" {
        // The server's are keyed by ChannelId, and it has none by default.
        default: |_| BTreeMap::new(),
        accepted: Accepted::Rule(
            "a non-nil channel UUID = 1 ..= 4096 bytes (and at most max-payload)",
            check_channel_tokens,
        ),
        into: |_, _| {}, // part of auth_token's `tokens`
    }
}

/// `log_level` is a [`log::LevelFilter`].
fn check_log_level(config: &BrokerConfig, key: &'static str) -> Result<(), ConfigError> {
    match config.log_level.parse::<log::LevelFilter>() {
        Ok(_) => Ok(()),
        Err(_) => Err(ConfigError::OutOfRange {
            key,
            value: format!("{:?}", config.log_level),
            accepted: String::from("one of off, error, warn, info, debug, trace"),
        }),
    }
}

/// A token travels as a HELLO payload, so it fits in `max_payload` and in the payload limit
/// before the handshake ([`MAX_HELLO_PAYLOAD`], 4 KiB: a longer HELLO is refused at its header,
/// so a longer token could never be presented); and it is not the
/// placeholder `--print-config` shows in its place, which a printed configuration fed back with
/// its token lines uncommented would otherwise make the token.
fn check_token(
    config: &BrokerConfig,
    key: &'static str,
    token: &AccessToken,
) -> Result<(), ConfigError> {
    if token.matches(REDACTED.as_bytes()) {
        return Err(ConfigError::RedactedToken { key });
    }
    let max = config.max_payload.0.min(u64::from(MAX_HELLO_PAYLOAD));
    if token.is_empty() || token.len() as u64 > max {
        return Err(ConfigError::OutOfRange {
            key,
            // Never the token itself.
            value: format!("a token of {} bytes", token.len()),
            accepted: format!(
                "1 ..= {max} bytes (the smaller of max_payload and {MAX_HELLO_PAYLOAD})"
            ),
        });
    }
    Ok(())
}

/// Every channel key is a non-nil UUID, and every token passes [`check_token`].
fn check_channel_tokens(config: &BrokerConfig, key: &'static str) -> Result<(), ConfigError> {
    for (channel, token) in &config.channel_tokens {
        match Uuid::parse_str(channel) {
            Ok(id) if !id.is_nil() => {}
            _ => {
                return Err(ConfigError::OutOfRange {
                    key,
                    value: format!("{channel:?}"),
                    accepted: String::from("a non-nil channel UUID as the key"),
                })
            }
        }
        check_token(config, key, token)?;
    }
    Ok(())
}
