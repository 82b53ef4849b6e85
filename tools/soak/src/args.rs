//! The command line: the flags (clap), their parsers and the checks across them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::{body, raw};

/// A bounded soak run of the switchyard broker: churn, faults, end-to-end checks, RSS.
///
/// Starts a broker process, drives it with raw-protocol and client-library senders and
/// receivers on several channels for --duration (clients connect and leave all the time,
/// receivers are killed mid-request, senders vanish mid-request), checks that every request
/// got exactly one answer, derived from its own bytes, or an expected error, and that the
/// broker returns to idle (every state count zero) with its RSS back within a documented bound
/// of its baseline. Exit status 0 only if every check passed.
#[derive(Parser, Debug)]
#[command(about, long_about)]
pub struct Args {
    /// How long the load runs, in total (e.g. 20s, 5m, 1m30s, 500ms; a bare number is
    /// seconds). Draining and the idle checks add a few seconds per round.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the schedule: sizes, behaviours, timeouts, lifetimes, kills. The same seed gives
    /// the same schedule (the interleaving with the broker still varies).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rounds the duration is split into. After each, every client leaves and the broker must
    /// be idle; its RSS there is compared round to round (drift = leak).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Channels, each with its own set of clients below.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Raw-protocol senders per channel (each churns: a random lifetime, then a graceful leave
    /// or a vanish mid-request).
    #[arg(long, default_value_t = 2)]
    pub raw_senders: usize,
    /// Churned raw-protocol receivers per channel (graceful leave, or killed with an RST), on
    /// top of one stable raw receiver per channel that stays the whole round.
    #[arg(long, default_value_t = 2)]
    pub raw_receivers: usize,
    /// Receiver child processes per channel, killed with SIGKILL every --kill-every-ms or so.
    #[arg(long, default_value_t = 1)]
    pub child_receivers: usize,
    /// Client-library senders per channel (reconnecting every 20-80 operations).
    #[arg(long, default_value_t = 1)]
    pub library_senders: usize,
    /// Client-library receivers per channel (graceful churn).
    #[arg(long, default_value_t = 1)]
    pub library_receivers: usize,
    /// Receive window of every receiver.
    #[arg(long, default_value_t = 3)]
    pub window: u32,
    /// Requests a raw sender keeps in flight at most.
    #[arg(long, default_value_t = 3)]
    pub in_flight: usize,
    /// Smallest request or response body, bytes (at least the 64-byte self-describing head).
    #[arg(long, default_value_t = 64)]
    pub min_body: usize,
    /// Largest request or response body, bytes (sizes are log-uniform in between).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Largest broadcast body, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_broadcast: usize,
    /// A sender waits 0..this many ms between two operations.
    #[arg(long, default_value_t = 20)]
    pub think_ms: u64,
    /// A receiver asked to answer takes 0..this many ms (a modelled service time).
    #[arg(long, default_value_t = 20)]
    pub service_ms: u32,
    /// Timeout of the requests that should be answered (a timeout there fails the run). Those
    /// answered late or never get 200-1000 ms.
    #[arg(long, default_value_t = 20_000)]
    pub timeout_ms: u32,
    /// How long past its timeout an operation may go without any outcome before it counts as
    /// unanswered.
    #[arg(long, default_value_t = 5_000)]
    pub grace_ms: u64,
    /// Percent of requests whose receiver answers after their timeout.
    #[arg(long, default_value_t = 5.0)]
    pub late_pct: f64,
    /// Percent of requests whose receiver never answers.
    #[arg(long, default_value_t = 3.0)]
    pub never_pct: f64,
    /// Percent of requests whose receiver cancels them.
    #[arg(long, default_value_t = 2.0)]
    pub cancel_pct: f64,
    /// Percent of a sender's operations that are broadcasts.
    #[arg(long, default_value_t = 5.0)]
    pub broadcast_pct: f64,
    /// Churned clients live a random 1/4..1 of this, ms.
    #[arg(long, default_value_t = 5_000)]
    pub lifetime_ms: u64,
    /// A receiver child process is killed every 1/2..3/2 of this, ms.
    #[arg(long, default_value_t = 2_000)]
    pub kill_every_ms: u64,
    /// Period of the broker's RSS and metrics samples, ms.
    #[arg(long, default_value_t = 250)]
    pub sample_ms: u64,
    /// Allocator slack in the RSS bound, MiB: the bound is what the broker keeps on purpose
    /// (its buffer pools, container capacity) plus this; the summary prints each part, and
    /// `RssBound` in examples/soak/main.rs derives them.
    #[arg(long, default_value_t = 16)]
    pub rss_slack_mib: u64,
    /// Most the broker's idle RSS may grow from the first round's to the last one's, MiB.
    #[arg(long, default_value_t = 8)]
    pub drift_mib: u64,
    /// Make the harness misbehave once per round (its 50th raw response), to prove the checks
    /// catch it: `swap` answers a request with another one's response, `corrupt` flips a byte of
    /// a response, `silence` drops a request that should be answered; with --tls,
    /// `tls-handshake` speaks plain TCP to the TLS listener (a failed handshake). The run must
    /// then FAIL.
    #[arg(long, value_parser = parse_sabotage)]
    pub sabotage: Option<raw::Sabotage>,
    /// Append the JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Free text recorded in the JSON line (e.g. what else loaded the machine).
    #[arg(long)]
    pub note: Option<String>,
    /// The client-library clients (senders, receivers, receiver processes) connect over TLS,
    /// to a TLS listener of the broker with a self-signed certificate generated for the run
    /// (in a temporary directory, removed at the end); raw-protocol clients stay on plain TCP.
    #[arg(long)]
    pub tls: bool,

    /// Internal: run as the broker (`broker`) or a receiver child (`receiver`).
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal (receiver role): the broker's address.
    #[arg(long, hide = true)]
    pub addr: Option<SocketAddr>,
    /// Internal (receiver role): the channel.
    #[arg(long, hide = true)]
    pub channel: Option<String>,
    /// Internal (receiver role): connect over TLS, trusting this certificate (PEM).
    #[arg(long, hide = true)]
    pub tls_ca: Option<PathBuf>,
    /// Internal (broker role): the TLS listener's certificate (PEM).
    #[arg(long, hide = true)]
    pub tls_cert: Option<PathBuf>,
    /// Internal (broker role): the TLS listener's private key (PEM).
    #[arg(long, hide = true)]
    pub tls_key: Option<PathBuf>,
}

pub fn parse_sabotage(text: &str) -> Result<raw::Sabotage, String> {
    match text {
        "swap" => Ok(raw::Sabotage::Swap),
        "corrupt" => Ok(raw::Sabotage::Corrupt),
        "silence" => Ok(raw::Sabotage::Silence),
        "tls-handshake" => Ok(raw::Sabotage::TlsHandshake),
        _ => Err("one of swap, corrupt, silence, tls-handshake".into()),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(Duration::from_secs_f64(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text}: a unit (ms, s, m, h) must follow {rest}"))?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text}: not a duration"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{text}: unknown unit {unit:?} (ms, s, m, h)")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = tail;
    }
    Ok(total)
}

/// The broker's high watermark (PROTOCOL.md §9.1): above it a broadcast copy to a slow peer is
/// dropped (§7), which this soak could not tell from a broker bug. The load is sized below it.
pub const HIGH_WATERMARK: usize = 4 << 20;

pub fn validate(args: &Args) -> Result<(), String> {
    if args.rounds == 0 || args.channels == 0 {
        return Err("--rounds and --channels must be at least 1".into());
    }
    if args.min_body < body::HEAD_LEN || args.max_body < args.min_body {
        return Err(format!(
            "bodies must be {} bytes at least (their head), and --max-body >= --min-body",
            body::HEAD_LEN
        ));
    }
    if args.max_broadcast < args.min_body {
        return Err("--max-broadcast must be >= --min-body".into());
    }
    // What the broker may have queued toward one connection at once: the requests it holds (a
    // receiver's window), or the responses it awaits (a sender's in-flight), plus broadcast
    // copies from every sender of the channel.
    let senders = args.raw_senders + args.library_senders;
    let queued = (args.window as usize).max(args.in_flight) * args.max_body
        + (senders + 1) * args.max_broadcast;
    if queued >= HIGH_WATERMARK {
        return Err(format!(
            "max(--window, --in-flight) x --max-body + broadcasts = {queued} bytes could reach the \
             broker's 4 MiB high watermark, where it legitimately drops slow broadcast peers; \
             lower them"
        ));
    }
    let pct = args.late_pct + args.never_pct + args.cancel_pct;
    if !(0.0..=100.0).contains(&pct) || !(0.0..=100.0).contains(&args.broadcast_pct) {
        return Err("percentages must be within 0..100 (late + never + cancel together)".into());
    }
    if args.sabotage == Some(raw::Sabotage::TlsHandshake) && !args.tls {
        return Err("--sabotage tls-handshake needs --tls".into());
    }
    if args.timeout_ms < 2_000 {
        return Err(
            "--timeout-ms below 2000 would make slow answers indistinguishable from lost ones"
                .into(),
        );
    }
    Ok(())
}
