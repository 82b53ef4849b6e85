//! The body of a scrape: the exposition text (format 0.0.4) of one snapshot of the broker.
//!
//! A pure function of its inputs — the server's and router's stats, errors sent by code,
//! channel sizes and the endpoint's own outcome counters — so every scrape of one turn gets the
//! same text, and the format is tested without a socket. Every family gets `# HELP` and
//! `# TYPE`; label values are escaped as the format requires.

use std::fmt::Write as _;

use super::Outcome;
use crate::ids::ChannelId;
use crate::protocol::ErrorCode;
use crate::server::ServerStats;

/// Renders the exposition text (format 0.0.4): `# HELP`, `# TYPE`, then the samples, per family.
pub(super) fn render(
    stats: &ServerStats,
    errors: &[(ErrorCode, u64)],
    channels: &[(ChannelId, usize)],
    outcomes: &[u64; Outcome::ALL.len()],
) -> String {
    let r = &stats.router;
    let mut out = String::with_capacity(4096 + 64 * channels.len());
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP switchyard_{name} {help}");
        let _ = writeln!(out, "# TYPE switchyard_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "switchyard_{name}{labels} {value}");
        }
    };
    let one = |value: u64| [(String::new(), value)];
    let gauge = |value: usize| one(value as u64);

    family(
        "connections",
        "gauge",
        "Open broker connections.",
        &gauge(stats.sockets),
    );
    family(
        "connections_opened_total",
        "counter",
        "Broker connections accepted.",
        &one(stats.accepted),
    );
    family(
        "connections_refused_total",
        "counter",
        "Broker connections refused at accept by a connection limit (LIMIT_EXCEEDED).",
        &one(stats.refused),
    );
    family(
        "accept_errors_total",
        "counter",
        "Accept calls that failed for lack of descriptors or memory (the backlog waits).",
        &one(stats.accept_errors),
    );
    family(
        "accept_starved",
        "gauge",
        "1 while accepting is starved of descriptors or memory and connections wait in the backlog.",
        &one(u64::from(stats.accept_starved)),
    );
    family(
        "connections_closed_total",
        "counter",
        "Broker connections closed, for any reason.",
        &one(stats.closed),
    );
    family(
        "tls_connections",
        "gauge",
        "Open broker connections of the TLS listener (also counted in connections).",
        &gauge(stats.tls_sockets),
    );
    family(
        "tls_connections_opened_total",
        "counter",
        "Broker connections accepted on the TLS listener (also counted in connections_opened_total).",
        &one(stats.tls_accepted),
    );
    family(
        "tls_handshake_failures_total",
        "counter",
        "TLS connections closed before their TLS handshake completed (TLS error, not TLS, \
         certificate refused by the client, EOF, handshake timeout).",
        &one(stats.tls_handshake_failures),
    );
    family(
        "takeovers_total",
        "counter",
        "Connections replaced by a newer one with the same client id.",
        &one(r.takeovers),
    );
    family(
        "handshake_failures_total",
        "counter",
        "Handshakes refused.",
        &one(r.handshake_failures),
    );
    family(
        "channels",
        "gauge",
        "Channels with at least one member.",
        &gauge(r.channels),
    );
    let peers: Vec<(String, u64)> = channels
        .iter()
        .map(|(id, n)| {
            (
                format!("{{channel=\"{}\"}}", escape(&id.to_string())),
                *n as u64,
            )
        })
        .collect();
    family(
        "channel_peers",
        "gauge",
        "Members of each of the busiest channels (metrics_channel_series of them; none by default).",
        &peers,
    );
    family(
        "requests_pending",
        "gauge",
        "Requests waiting for a receiver.",
        &gauge(r.pending_requests),
    );
    family(
        "requests_in_flight",
        "gauge",
        "Requests assigned to a receiver and not yet complete.",
        &gauge(r.assignments),
    );
    family(
        "broadcasts_in_flight",
        "gauge",
        "Broadcasts not yet complete.",
        &gauge(r.broadcasts),
    );
    family(
        "timers_armed",
        "gauge",
        "Armed timers (requests, broadcasts, heartbeats, presence grace, shutdown deadline).",
        &gauge(r.armed_timers),
    );
    family(
        "buffered_bytes",
        "gauge",
        "Bytes held for clients: read buffers, outbound queues and frames of waiting requests.",
        &gauge(stats.buffered_bytes()),
    );
    family(
        "frames_in_total",
        "counter",
        "Frames decoded from connections.",
        &one(stats.frames_in),
    );
    family(
        "frames_out_total",
        "counter",
        "Frames queued to connections.",
        &one(r.frames_out),
    );
    family(
        "bytes_in_total",
        "counter",
        "Bytes read from connections.",
        &one(stats.bytes_in),
    );
    family(
        "bytes_out_total",
        "counter",
        "Bytes written to connections.",
        &one(r.bytes_out),
    );
    let by_code: Vec<(String, u64)> = errors
        .iter()
        .map(|(code, n)| (format!("{{code=\"{}\"}}", code_name(*code)), *n))
        .collect();
    family(
        "errors_sent_total",
        "counter",
        "Error frames sent, by code (codes never sent are absent).",
        &by_code,
    );
    family(
        "request_timeouts_total",
        "counter",
        "Requests that timed out (no receiver in time, or no complete response).",
        &one(r.timeouts),
    );
    family(
        "late_frames_dropped_total",
        "counter",
        "Frames dropped because their request had ended or never existed.",
        &one(r.late_frames_dropped),
    );
    family(
        "backpressure_pauses_total",
        "counter",
        "Times a producer's reading was paused by flow control.",
        &one(r.backpressure_pauses),
    );
    family(
        "paused_connections",
        "gauge",
        "Connections whose reading is paused by flow control.",
        &gauge(r.paused_connections),
    );
    family(
        "presence_ghosts",
        "gauge",
        "Departed peers still present for the others during their presence grace period.",
        &gauge(r.ghosts),
    );
    let scrapes: Vec<(String, u64)> = Outcome::ALL
        .iter()
        .zip(outcomes)
        .map(|(o, n)| (format!("{{outcome=\"{}\"}}", o.label()), *n))
        .collect();
    family(
        "metrics_scrapes_total",
        "counter",
        "Metrics connections ended, by outcome (this scrape is not yet counted).",
        &scrapes,
    );
    out
}

/// The code's name as PROTOCOL.md spells it.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
        ErrorCode::MalformedFrame => "MALFORMED_FRAME",
        ErrorCode::UnknownFrameType => "UNKNOWN_FRAME_TYPE",
        ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
        ErrorCode::HandshakeRequired => "HANDSHAKE_REQUIRED",
        ErrorCode::DuplicateHello => "DUPLICATE_HELLO",
        ErrorCode::ChannelMismatch => "CHANNEL_MISMATCH",
        ErrorCode::UnexpectedFrame => "UNEXPECTED_FRAME",
        ErrorCode::ClientIdInUse => "CLIENT_ID_IN_USE",
        ErrorCode::GoingAway => "GOING_AWAY",
        ErrorCode::HeartbeatTimeout => "HEARTBEAT_TIMEOUT",
        ErrorCode::Replaced => "REPLACED",
        ErrorCode::Unauthorized => "UNAUTHORIZED",
        ErrorCode::NoReceiver => "NO_RECEIVER",
        ErrorCode::Timeout => "TIMEOUT",
        ErrorCode::PeerGone => "PEER_GONE",
        ErrorCode::Cancelled => "CANCELLED",
        ErrorCode::NoPeers => "NO_PEERS",
        ErrorCode::BroadcastIncomplete => "BROADCAST_INCOMPLETE",
        ErrorCode::UnknownRequest => "UNKNOWN_REQUEST",
        ErrorCode::DuplicateRequest => "DUPLICATE_REQUEST",
        ErrorCode::StreamOrder => "STREAM_ORDER",
        ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
        ErrorCode::ShuttingDown => "SHUTTING_DOWN",
        ErrorCode::PresenceOverflow => "PRESENCE_OVERFLOW",
    }
}

/// A label value escaped as the text format requires (backslash, double quote, newline).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let stats = ServerStats::default();
        let text = render(
            &stats,
            &[(ErrorCode::NoReceiver, 2)],
            &[(ChannelId::NIL, 3)],
            &[0; Outcome::ALL.len()],
        );
        assert!(text.contains("switchyard_errors_sent_total{code=\"NO_RECEIVER\"} 2\n"));
        assert!(text.contains(&format!(
            "switchyard_channel_peers{{channel=\"{}\"}} 3\n",
            ChannelId::NIL
        )));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// The cost of a scrape, in counts: with per-channel series off (the default: the server
    /// passes no channel list), the body of a broker with 100 000 channels has the same lines as
    /// one with a single channel and a few KiB, not the ~7.5 MB of one line per channel. With
    /// them on, exactly the N lines it is given.
    #[test]
    fn a_scrape_does_not_grow_with_the_number_of_channels() {
        let outcomes = [0; Outcome::ALL.len()];
        let body = |channels: usize, series: &[(ChannelId, usize)]| {
            let mut stats = ServerStats::default();
            stats.router.channels = channels;
            stats.sockets = channels;
            render(&stats, &[(ErrorCode::NoReceiver, 1)], series, &outcomes)
        };
        let one = body(1, &[]);
        let many = body(100_000, &[]);
        assert_eq!(many.lines().count(), one.lines().count());
        // The two bodies differ only in the digits of the counts.
        assert!(
            many.len() <= one.len() + 2 * 5,
            "{} vs {}",
            many.len(),
            one.len()
        );
        assert!(many.len() < 8 * 1024, "{} bytes", many.len());
        assert!(!many.contains("switchyard_channel_peers{"));
        let busiest: Vec<(ChannelId, usize)> = (0..3u8)
            .map(|n| (ChannelId::from_bytes([n; 16]), 10 - n as usize))
            .collect();
        let with = body(100_000, &busiest);
        assert_eq!(with.lines().count(), one.lines().count() + 3);
        assert_eq!(with.matches("switchyard_channel_peers{").count(), 3);
    }
}
