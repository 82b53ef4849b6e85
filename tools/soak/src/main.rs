//! A bounded soak run of the switchyard broker, with churn and fault injection:
//!
//! ```text
//! cargo run --release --example soak -- --duration 60s --seed 7
//! cargo run --release --example soak -- --duration 60s --tls
//! cargo run --release --example soak -- --help
//! ```
//!
//! The broker runs in its own process (this program re-executed as `--role broker`), so its
//! resident memory is its own. Against it, on loopback, for `--duration`:
//! - on each of `--channels` channels: raw-protocol senders and receivers (one mio loop,
//!   `raw.rs`), library-client senders and receivers (`library.rs`), and receivers in child
//!   processes (`child.rs`);
//! - requests of log-uniform sizes up to `--max-body`, some streamed in chunks, each asking its
//!   receiver to answer, answer late, never answer, or cancel; broadcasts with acks;
//! - churn: clients connect and leave all the time; receivers are killed mid-request (child
//!   processes with SIGKILL, raw ones with an RST); senders vanish mid-request (RST or FIN in
//!   the middle of a body, RST while awaiting answers);
//! - with `--tls`, the client-library clients (receiver children included) connect to the
//!   broker's TLS listener with a certificate generated for the run, while the raw clients stay
//!   on plain TCP, on the same channels (`tls.rs`).
//!
//! Every body carries its id and a pattern derived from it (`body.rs`); every response carries
//! the hash of the request bytes it answers. Every outcome is classified as expected or not
//! (`ledger.rs`); a response to another request, a second answer, a request delivered twice,
//! an unexplained error or timeout, or a request left unanswered fails the run.
//!
//! The run is split into `--rounds`. At the end of each, every client leaves and the broker
//! must return to idle — every state count of its metrics endpoint zero — and its RSS is
//! sampled there. At the end: RSS back within a bound of its start-up baseline (derived from
//! what the broker keeps on purpose, see [`RssBound`]), no drift between rounds' idle RSS beyond
//! allocator slack, and a graceful SIGTERM shutdown with exit status 0; with `--tls`, every TLS
//! connection the broker opened was one of the soak's and none failed its handshake. A
//! human-readable summary
//! and one JSON line (`--json FILE` appends it) report the figures; the exit status is 0 only
//! when every check passed.

// libc where std has no equivalent: kill by PID (the broker process, the watchdog) and
// SO_LINGER 0 (an RST mid-request). Each block is one FFI call on plain integers.
#![allow(unsafe_code)]

mod body;
mod broker;
mod child;
mod ledger;
mod library;
mod raw;
mod tls;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;
use mio::Poll;

use switchyard::client::Client;
use switchyard::ids::ChannelId;
use switchyard::protocol::ErrorCode;

use broker::{BrokerProcess, Memory, Metrics};
use ledger::{Ledger, CLOSING, DRAINING};
use switchyard_testkit::tls::Certs;
use tls::Endpoint;

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
struct Args {
    /// How long the load runs, in total (e.g. 20s, 5m, 1m30s, 500ms; a bare number is
    /// seconds). Draining and the idle checks add a few seconds per round.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the schedule: sizes, behaviours, timeouts, lifetimes, kills. The same seed gives
    /// the same schedule (the interleaving with the broker still varies).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds the duration is split into. After each, every client leaves and the broker must
    /// be idle; its RSS there is compared round to round (drift = leak).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Channels, each with its own set of clients below.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Raw-protocol senders per channel (each churns: a random lifetime, then a graceful leave
    /// or a vanish mid-request).
    #[arg(long, default_value_t = 2)]
    raw_senders: usize,
    /// Churned raw-protocol receivers per channel (graceful leave, or killed with an RST), on
    /// top of one stable raw receiver per channel that stays the whole round.
    #[arg(long, default_value_t = 2)]
    raw_receivers: usize,
    /// Receiver child processes per channel, killed with SIGKILL every --kill-every-ms or so.
    #[arg(long, default_value_t = 1)]
    child_receivers: usize,
    /// Client-library senders per channel (reconnecting every 20-80 operations).
    #[arg(long, default_value_t = 1)]
    library_senders: usize,
    /// Client-library receivers per channel (graceful churn).
    #[arg(long, default_value_t = 1)]
    library_receivers: usize,
    /// Receive window of every receiver.
    #[arg(long, default_value_t = 3)]
    window: u32,
    /// Requests a raw sender keeps in flight at most.
    #[arg(long, default_value_t = 3)]
    in_flight: usize,
    /// Smallest request or response body, bytes (at least the 64-byte self-describing head).
    #[arg(long, default_value_t = 64)]
    min_body: usize,
    /// Largest request or response body, bytes (sizes are log-uniform in between).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Largest broadcast body, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_broadcast: usize,
    /// A sender waits 0..this many ms between two operations.
    #[arg(long, default_value_t = 20)]
    think_ms: u64,
    /// A receiver asked to answer takes 0..this many ms (a modelled service time).
    #[arg(long, default_value_t = 20)]
    service_ms: u32,
    /// Timeout of the requests that should be answered (a timeout there fails the run). Those
    /// answered late or never get 200-1000 ms.
    #[arg(long, default_value_t = 20_000)]
    timeout_ms: u32,
    /// How long past its timeout an operation may go without any outcome before it counts as
    /// unanswered.
    #[arg(long, default_value_t = 5_000)]
    grace_ms: u64,
    /// Percent of requests whose receiver answers after their timeout.
    #[arg(long, default_value_t = 5.0)]
    late_pct: f64,
    /// Percent of requests whose receiver never answers.
    #[arg(long, default_value_t = 3.0)]
    never_pct: f64,
    /// Percent of requests whose receiver cancels them.
    #[arg(long, default_value_t = 2.0)]
    cancel_pct: f64,
    /// Percent of a sender's operations that are broadcasts.
    #[arg(long, default_value_t = 5.0)]
    broadcast_pct: f64,
    /// Churned clients live a random 1/4..1 of this, ms.
    #[arg(long, default_value_t = 5_000)]
    lifetime_ms: u64,
    /// A receiver child process is killed every 1/2..3/2 of this, ms.
    #[arg(long, default_value_t = 2_000)]
    kill_every_ms: u64,
    /// Period of the broker's RSS and metrics samples, ms.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Allocator slack in the RSS bound, MiB: the bound is what the broker keeps on purpose
    /// (its buffer pools, container capacity) plus this; the summary prints each part, and
    /// `RssBound` in examples/soak/main.rs derives them.
    #[arg(long, default_value_t = 16)]
    rss_slack_mib: u64,
    /// Most the broker's idle RSS may grow from the first round's to the last one's, MiB.
    #[arg(long, default_value_t = 8)]
    drift_mib: u64,
    /// Make the harness misbehave once per round (its 50th raw response), to prove the checks
    /// catch it: `swap` answers a request with another one's response, `corrupt` flips a byte of
    /// a response, `silence` drops a request that should be answered; with --tls,
    /// `tls-handshake` speaks plain TCP to the TLS listener (a failed handshake). The run must
    /// then FAIL.
    #[arg(long, value_parser = parse_sabotage)]
    sabotage: Option<raw::Sabotage>,
    /// Append the JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Free text recorded in the JSON line (e.g. what else loaded the machine).
    #[arg(long)]
    note: Option<String>,
    /// The client-library clients (senders, receivers, receiver processes) connect over TLS,
    /// to a TLS listener of the broker with a self-signed certificate generated for the run
    /// (in a temporary directory, removed at the end); raw-protocol clients stay on plain TCP.
    #[arg(long)]
    tls: bool,

    /// Internal: run as the broker (`broker`) or a receiver child (`receiver`).
    #[arg(long, hide = true)]
    role: Option<String>,
    /// Internal (receiver role): the broker's address.
    #[arg(long, hide = true)]
    addr: Option<SocketAddr>,
    /// Internal (receiver role): the channel.
    #[arg(long, hide = true)]
    channel: Option<String>,
    /// Internal (receiver role): connect over TLS, trusting this certificate (PEM).
    #[arg(long, hide = true)]
    tls_ca: Option<PathBuf>,
    /// Internal (broker role): the TLS listener's certificate (PEM).
    #[arg(long, hide = true)]
    tls_cert: Option<PathBuf>,
    /// Internal (broker role): the TLS listener's private key (PEM).
    #[arg(long, hide = true)]
    tls_key: Option<PathBuf>,
}

/// What every actor of a round needs to know.
pub struct Load {
    /// The plain listener: the raw-protocol clients always connect here.
    pub addr: SocketAddr,
    /// Where the client-library clients connect: the plain listener, or with `--tls` the TLS
    /// one.
    pub library: Endpoint,
    pub channels: Vec<ChannelId>,
    pub raw_senders: usize,
    pub raw_receivers: usize,
    pub child_receivers: usize,
    pub window: u32,
    pub in_flight: usize,
    pub min_body: usize,
    pub max_body: usize,
    pub max_broadcast: usize,
    pub think_ms: u64,
    pub service_ms: u32,
    pub timeout_ms: u32,
    pub grace: Duration,
    pub p_late: f64,
    pub p_never: f64,
    pub p_cancel: f64,
    pub p_broadcast: f64,
    pub lifetime_ms: u64,
    pub kill_every_ms: u64,
    pub max_payload: u32,
    pub sabotage: Option<raw::Sabotage>,
}

/// The clock. This is a load tool: it reads the clock to schedule work and to date outcomes.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Waits until `deadline`: a modelled delay (a service time, a think time, a round's length),
/// never a synchronisation — everything that waits for an event waits on the event.
pub fn pause_until(deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return;
        }
        thread::park_timeout(left);
    }
}

/// An error code's name as PROTOCOL.md spells it.
pub fn code_name(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        UnsupportedVersion => "UNSUPPORTED_VERSION",
        MalformedFrame => "MALFORMED_FRAME",
        UnknownFrameType => "UNKNOWN_FRAME_TYPE",
        PayloadTooLarge => "PAYLOAD_TOO_LARGE",
        HandshakeRequired => "HANDSHAKE_REQUIRED",
        DuplicateHello => "DUPLICATE_HELLO",
        ChannelMismatch => "CHANNEL_MISMATCH",
        UnexpectedFrame => "UNEXPECTED_FRAME",
        ClientIdInUse => "CLIENT_ID_IN_USE",
        GoingAway => "GOING_AWAY",
        HeartbeatTimeout => "HEARTBEAT_TIMEOUT",
        Replaced => "REPLACED",
        Unauthorized => "UNAUTHORIZED",
        NoReceiver => "NO_RECEIVER",
        Timeout => "TIMEOUT",
        PeerGone => "PEER_GONE",
        Cancelled => "CANCELLED",
        NoPeers => "NO_PEERS",
        BroadcastIncomplete => "BROADCAST_INCOMPLETE",
        UnknownRequest => "UNKNOWN_REQUEST",
        DuplicateRequest => "DUPLICATE_REQUEST",
        StreamOrder => "STREAM_ORDER",
        LimitExceeded => "LIMIT_EXCEEDED",
        ShuttingDown => "SHUTTING_DOWN",
    }
}

fn parse_sabotage(text: &str) -> Result<raw::Sabotage, String> {
    match text {
        "swap" => Ok(raw::Sabotage::Swap),
        "corrupt" => Ok(raw::Sabotage::Corrupt),
        "silence" => Ok(raw::Sabotage::Silence),
        "tls-handshake" => Ok(raw::Sabotage::TlsHandshake),
        _ => Err("one of swap, corrupt, silence, tls-handshake".into()),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
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

fn main() -> ExitCode {
    let args = Args::parse();
    match args.role.as_deref() {
        Some("broker") => {
            let tls = match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    eprintln!("soak --role broker needs both --tls-cert and --tls-key, or neither");
                    return ExitCode::from(2);
                }
            };
            return broker::broker_main(tls);
        }
        Some("receiver") => {
            let (Some(addr), Some(channel)) = (args.addr, args.channel.as_deref()) else {
                eprintln!("soak --role receiver needs --addr and --channel");
                return ExitCode::from(2);
            };
            let Ok(channel) = channel.parse::<uuid::Uuid>() else {
                eprintln!("soak --role receiver: bad --channel");
                return ExitCode::from(2);
            };
            let endpoint = match &args.tls_ca {
                None => Endpoint::plain(addr),
                Some(ca) => match Endpoint::tls(addr, ca) {
                    Ok(endpoint) => endpoint,
                    Err(e) => {
                        eprintln!("soak --role receiver: --tls-ca: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            return child::child_main(endpoint, ChannelId(channel), args.window);
        }
        Some(other) => {
            eprintln!("soak: unknown role {other}");
            return ExitCode::from(2);
        }
        None => {}
    }
    match soak(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

/// The broker's high watermark (PROTOCOL.md §9.1): above it a broadcast copy to a slow peer is
/// dropped (§7), which this soak could not tell from a broker bug. The load is sized below it.
const HIGH_WATERMARK: usize = 4 << 20;

fn validate(args: &Args) -> Result<(), String> {
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

/// Peaks seen by the sampler.
#[derive(Clone, Copy, Debug, Default)]
struct Peaks {
    rss_kib: u64,
    connections: u64,
    /// TLS connections open at once (counted in `connections` too).
    tls_connections: u64,
    streams: u64,
    buffered_bytes: u64,
    samples: u64,
    failed_samples: u64,
}

/// Samples the broker's RSS (`/proc`) and state gauges (`/metrics`) every period, keeping the
/// peaks. A fixed period is what a measurement needs; nothing waits on it.
struct Sampler {
    stop: mpsc::Sender<()>,
    peaks: Arc<Mutex<Peaks>>,
    handle: JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32, metrics: SocketAddr, period: Duration) -> Sampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let shared = peaks.clone();
        let handle = thread::spawn(move || loop {
            match stopped.recv_timeout(period) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let memory = broker::memory(pid);
            let scraped = broker::scrape(metrics);
            let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
            p.samples += 1;
            match (memory, scraped) {
                (Ok(memory), Ok(m)) => {
                    p.rss_kib = p.rss_kib.max(memory.rss_kib);
                    p.connections = p
                        .connections
                        .max(m.value("switchyard_connections").unwrap_or(0));
                    p.tls_connections = p
                        .tls_connections
                        .max(m.value("switchyard_tls_connections").unwrap_or(0));
                    let streams = m.value("switchyard_requests_pending").unwrap_or(0)
                        + m.value("switchyard_requests_in_flight").unwrap_or(0)
                        + m.value("switchyard_broadcasts_in_flight").unwrap_or(0);
                    p.streams = p.streams.max(streams);
                    p.buffered_bytes = p
                        .buffered_bytes
                        .max(m.value("switchyard_buffered_bytes").unwrap_or(0));
                }
                _ => p.failed_samples += 1,
            }
        });
        Sampler {
            stop,
            peaks,
            handle,
        }
    }

    fn finish(self) -> Peaks {
        let _ = self.stop.send(());
        let _ = self.handle.join();
        *self.peaks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The RSS the broker may keep, on purpose, once every client has left — what its final RSS
/// may exceed its baseline (after start-up and a small warm-up) by:
///
/// - **buffer pools**: the server's read-buffer pool and the router's outbound pool
///   (`src/pool.rs`, created in `src/server/mod.rs` and `src/router/mod.rs`) keep up to 256
///   drained buffers of at most 64 KiB each. A connection takes at most one buffer from each at
///   a time and gives it back drained, so each pool holds at most min(256, peak connections)
///   buffers: `2 x min(256, peak connections) x 64 KiB`;
/// - **container capacity**: the connection table, the router's slab and maps, the timer wheel
///   keep the capacity their peak needed (they do not shrink): generously 4 KiB per peak
///   connection and 1 KiB per peak request or broadcast in flight;
/// - **TLS** (`--tls`): rustls' buffers of each TLS connection, freed at its close but, like
///   any heap memory, possibly still resident: [`tls::ALLOWANCE_PER_CONNECTION_KIB`] (64 KiB of
///   records plus per-record buffers and session state) per peak TLS connection open at once
///   (the broker's read buffer and outbound queue of a TLS connection are the pools' and
///   containers' above, like a plain connection's);
/// - **allocator slack** (`--rss-slack-mib`, 16 MiB by default): glibc's malloc does not hand
///   every freed page back to the kernel. Freed 1 MiB payloads raise its mmap threshold, after
///   which such payloads come from the heap, whose top is only trimmed beyond twice that
///   threshold, and whose holes stay resident until reused.
///
/// A leak of state per request or per connection shows up instead in the state counts (which
/// must all be zero) and in the drift of the idle RSS from round to round (`--drift-mib`).
#[derive(Clone, Copy, Debug)]
struct RssBound {
    pools_kib: u64,
    containers_kib: u64,
    tls_kib: u64,
    slack_kib: u64,
}

impl RssBound {
    fn new(peaks: &Peaks, slack_mib: u64) -> RssBound {
        RssBound {
            pools_kib: 2 * peaks.connections.min(256) * 64,
            containers_kib: 4 * peaks.connections + peaks.streams,
            tls_kib: peaks.tls_connections * tls::ALLOWANCE_PER_CONNECTION_KIB,
            slack_kib: slack_mib * 1024,
        }
    }

    fn total_kib(&self) -> u64 {
        self.pools_kib + self.containers_kib + self.tls_kib + self.slack_kib
    }
}

/// What one round produced.
struct Round {
    counts: BTreeMap<String, u64>,
    samples: Vec<String>,
    idle: bool,
    idle_after: Duration,
    state: Vec<(&'static str, u64)>,
    idle_rss_kib: u64,
    load_time: Duration,
}

fn soak(args: &Args) -> Result<bool, String> {
    validate(args)?;
    body::self_check()?;
    let started = now();
    let round_length = args.duration / args.rounds;
    // Everything below is bounded; this only guards against a hang nobody foresaw: kill the
    // broker by its PID and exit, so CI fails instead of waiting forever.
    let watchdog_after = args.duration
        + (Duration::from_millis(u64::from(args.timeout_ms) + args.grace_ms)
            + Duration::from_secs(90))
            * args.rounds;

    println!(
        "soak: seed {}, {:?} in {} round(s), {} channel(s); per channel {} raw sender(s), 1 + {} \
         raw receiver(s), {} receiver process(es), {} library sender(s), {} library receiver(s)",
        args.seed,
        args.duration,
        args.rounds,
        args.channels,
        args.raw_senders,
        args.raw_receivers,
        args.child_receivers,
        args.library_senders,
        args.library_receivers
    );
    // Dropped (the directory removed) when this function returns, whichever way it does.
    let certs = if args.tls {
        Some(Certs::new("soak"))
    } else {
        None
    };
    let mut broker = BrokerProcess::start(certs.as_ref())?;
    let watchdog_pid = broker.pid;
    let finished = Arc::new(AtomicBool::new(false));
    {
        let finished = finished.clone();
        let cert_dir = certs.as_ref().map(|c| c.dir().to_owned());
        thread::spawn(move || {
            pause_until(now() + watchdog_after);
            if !finished.load(Ordering::SeqCst) {
                eprintln!("soak: watchdog: no end after {watchdog_after:?}; killing the broker");
                // SAFETY: kill(2) on our own broker child's PID; we exit right after.
                unsafe {
                    libc::kill(watchdog_pid as libc::pid_t, libc::SIGKILL);
                }
                // `exit` runs no destructor: the certificate directory goes here.
                if let Some(dir) = &cert_dir {
                    tls::remove_dir(dir);
                }
                std::process::exit(3);
            }
        });
    }
    println!(
        "broker: pid {}, listening on {}{}, metrics on http://{}/metrics",
        broker.pid,
        broker.addr,
        broker
            .tls_addr
            .map_or(String::new(), |a| format!(", TLS on {a}")),
        broker.metrics
    );
    let library = match (&certs, broker.tls_addr) {
        (Some(certs), Some(tls_addr)) => Endpoint::tls(tls_addr, &certs.cert)?,
        _ => Endpoint::plain(broker.addr),
    };
    let start_memory = broker.memory()?;
    // Warm up both transports the run uses, so that what their first use allocates once (for
    // TLS: rustls' and ring's lazily built tables, the session cache) is in the baseline.
    let max_payload = warm_up(&Endpoint::plain(broker.addr))?;
    let mut warm_up_tls_connects = 0;
    if library.is_tls() {
        warm_up(&library)?;
        warm_up_tls_connects = WARM_UP_CLIENTS;
    }
    let (warm, _) = wait_idle(&broker, Duration::from_secs(30))?;
    if !warm.is_idle() {
        return Err(format!(
            "the broker is not idle after the warm-up: {:?}",
            warm.state()
        ));
    }
    let baseline = broker.memory()?;
    println!(
        "baseline: RSS {} KiB after start-up ({} KiB) and warm-up",
        baseline.rss_kib, start_memory.rss_kib
    );
    let sampler = Sampler::start(
        broker.pid,
        broker.metrics,
        Duration::from_millis(args.sample_ms),
    );

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let result = run_round(args, &broker, &library, round, round_length, max_payload);
        if let Some(status) = broker.exited() {
            return Err(format!(
                "the broker died during round {}: {status}",
                round + 1
            ));
        }
        let round_report = result?;
        println!(
            "round {}: {} requests sent, {} ok, {} violation(s); idle {} after {:?}; idle RSS {} KiB",
            round + 1,
            round_report.counts.get("requests.sent").unwrap_or(&0),
            round_report.counts.get("requests.ok").unwrap_or(&0),
            violations(&round_report.counts),
            if round_report.idle { "yes" } else { "NO" },
            round_report.idle_after,
            round_report.idle_rss_kib
        );
        rounds.push(round_report);
    }
    let peaks = sampler.finish();
    let end_memory: Memory = broker.memory()?;
    let end_metrics = broker.scrape()?;
    let exit = broker.terminate(Duration::from_secs(15));
    finished.store(true, Ordering::SeqCst);
    let elapsed = now().saturating_duration_since(started);

    let outcome = Outcome {
        args,
        rounds: &rounds,
        baseline,
        start_memory,
        end_memory,
        peaks,
        bound: RssBound::new(&peaks, args.rss_slack_mib),
        end_metrics: &end_metrics,
        warm_up_tls_connects,
        exit,
        elapsed,
    };
    outcome.report()
}

/// Library clients the warm-up connects.
const WARM_UP_CLIENTS: u64 = 2;

/// A few library clients, a few small requests and a broadcast, so that the baseline includes
/// what any first use of the broker allocates once. Returns the broker's max payload.
fn warm_up(endpoint: &Endpoint) -> Result<u32, String> {
    let channel = ChannelId::random();
    let connect = || {
        Client::connect_with(endpoint.addr, channel, endpoint.options())
            .map_err(|e| format!("warm-up connect to {}: {e}", endpoint.addr))
    };
    let receiver = connect()?;
    let sender = connect()?;
    receiver.set_receive_window(4).map_err(|e| e.to_string())?;
    let max_payload = sender.limits().max_payload;
    thread::scope(|scope| -> Result<(), String> {
        let serving = scope.spawn(|| -> Result<(), String> {
            for _ in 0..20 {
                let mut request = receiver
                    .next_request(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                let body = request.read_body().map_err(|e| e.to_string())?;
                request.respond(&body).map_err(|e| e.to_string())?;
            }
            receiver
                .next_broadcast(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            Ok(())
        });
        for i in 0..20usize {
            let body = vec![i as u8; 64 << (i % 7)];
            let reply = sender
                .request(&body, Duration::from_secs(10))
                .map_err(|e| format!("warm-up request: {e}"))?;
            if reply != body {
                return Err("warm-up: wrong echo".into());
            }
        }
        sender
            .broadcast(b"warm-up", Duration::from_secs(10))
            .map_err(|e| format!("warm-up broadcast: {e}"))?;
        serving
            .join()
            .map_err(|_| "warm-up receiver panicked".to_string())?
    })?;
    receiver.close();
    sender.close();
    Ok(max_payload)
}

/// Polls the metrics until every state count is zero, for at most `within`. Returns the last
/// scrape and how long it took. (A tool, not a unit test: polling a remote process's metrics
/// with a deadline is what an operator would do.)
fn wait_idle(broker: &BrokerProcess, within: Duration) -> Result<(Metrics, Duration), String> {
    let start = now();
    loop {
        let metrics = broker.scrape()?;
        let waited = now().saturating_duration_since(start);
        if metrics.is_idle() || waited >= within {
            return Ok((metrics, waited));
        }
        pause_until(now() + Duration::from_millis(100));
    }
}

fn run_round(
    args: &Args,
    broker: &BrokerProcess,
    library: &Endpoint,
    round: u32,
    length: Duration,
    max_payload: u32,
) -> Result<Round, String> {
    let seed = args
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(u64::from(round));
    let load = Arc::new(Load {
        addr: broker.addr,
        library: library.clone(),
        channels: (0..args.channels).map(|_| ChannelId::random()).collect(),
        raw_senders: args.raw_senders,
        raw_receivers: args.raw_receivers,
        child_receivers: args.child_receivers,
        window: args.window,
        in_flight: args.in_flight,
        min_body: args.min_body,
        max_body: args.max_body,
        max_broadcast: args.max_broadcast,
        think_ms: args.think_ms,
        service_ms: args.service_ms,
        timeout_ms: args.timeout_ms,
        grace: Duration::from_millis(args.grace_ms),
        p_late: args.late_pct / 100.0,
        p_never: args.never_pct / 100.0,
        p_cancel: args.cancel_pct / 100.0,
        p_broadcast: args.broadcast_pct / 100.0,
        lifetime_ms: args.lifetime_ms.max(4),
        kill_every_ms: args.kill_every_ms,
        max_payload,
        sabotage: args.sabotage,
    });
    let ledger = Arc::new(Ledger::new());
    let (done_tx, done_rx) = mpsc::channel();
    let mut threads = Vec::new();
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = raw::waker(&poll).map_err(|e| format!("waker: {e}"))?;
    {
        let (load, ledger, done) = (load.clone(), ledger.clone(), done_tx.clone());
        threads.push(thread::spawn(move || {
            raw::run(load, ledger, seed, poll, done)
        }));
    }
    let mut senders = 1;
    for channel in 0..args.channels {
        for i in 0..args.library_receivers {
            let (load, ledger) = (load.clone(), ledger.clone());
            let seed = seed ^ (0x1000 + (channel * 64 + i) as u64);
            threads.push(thread::spawn(move || {
                library::receiver_actor(load, ledger, channel, seed)
            }));
        }
        for i in 0..args.library_senders {
            let (load, ledger, done) = (load.clone(), ledger.clone(), done_tx.clone());
            let seed = seed ^ (0x2000 + (channel * 64 + i) as u64);
            threads.push(thread::spawn(move || {
                library::sender_actor(load, ledger, channel, seed, done)
            }));
            senders += 1;
        }
    }
    if args.child_receivers > 0 {
        let (load, ledger) = (load.clone(), ledger.clone());
        threads.push(thread::spawn(move || {
            child::run(load, ledger, seed ^ 0x3000)
        }));
    }
    drop(done_tx);
    if args.sabotage == Some(raw::Sabotage::TlsHandshake) {
        if let Some(tls_addr) = broker.tls_addr {
            stray_tls_peer(tls_addr, &ledger);
        }
    }

    let load_start = now();
    let end = load_start + length;
    while now() < end {
        if broker_gone(broker) {
            break;
        }
        pause_until((now() + Duration::from_millis(250)).min(end));
    }
    let load_time = now().saturating_duration_since(load_start);
    // Drain: nothing new; every sender finishes what it has in flight (bounded by the longest
    // timeout plus grace) and leaves. Then the receivers leave.
    ledger.set_phase(DRAINING);
    let _ = waker.wake();
    let drain_deadline = now()
        + Duration::from_millis(u64::from(args.timeout_ms) + args.grace_ms)
        + Duration::from_secs(30);
    let mut done = 0;
    while done < senders {
        match done_rx.recv_timeout(drain_deadline.saturating_duration_since(now())) {
            Ok(_) => done += 1,
            Err(_) => {
                ledger.violation(
                    "drain_stuck",
                    format!(
                        "{} of {senders} sender groups did not finish in time",
                        senders - done
                    ),
                );
                break;
            }
        }
    }
    ledger.set_phase(CLOSING);
    let _ = waker.wake();
    for thread in threads {
        if thread.join().is_err() {
            ledger.violation("harness", "an actor thread panicked".into());
        }
    }
    ledger.judge();
    // Every client has left: the broker must come back to idle.
    let (metrics, idle_after) = wait_idle(broker, Duration::from_secs(30))?;
    let idle = metrics.is_idle();
    let idle_rss_kib = broker.memory()?.rss_kib;
    Ok(Round {
        counts: ledger.counts(),
        samples: ledger.samples(),
        idle,
        idle_after,
        state: metrics.state(),
        idle_rss_kib,
        load_time,
    })
}

/// `--sabotage tls-handshake`: a peer that speaks the plain protocol (a 64-byte header of
/// zeros) to the TLS listener and reads until the broker closes it — rustls refuses the
/// bytes, so the broker counts a TLS connection none of the soak's clients made and a failed
/// handshake, which the end of the run must catch.
fn stray_tls_peer(tls_addr: SocketAddr, ledger: &Ledger) {
    use std::io::{Read, Write};
    let result = (|| -> std::io::Result<()> {
        let mut stream = std::net::TcpStream::connect(tls_addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&[0; 64])?;
        let mut sink = Vec::new();
        // The broker's alert, then EOF (or a reset, which is as good an end).
        let _ = stream.read_to_end(&mut sink);
        Ok(())
    })();
    match result {
        Ok(()) => ledger.count("sabotage.stray_tls_peer", 1),
        Err(e) => ledger.violation("harness", format!("stray TLS peer: {e}")),
    }
}

fn broker_gone(broker: &BrokerProcess) -> bool {
    std::path::Path::new(&format!("/proc/{}/status", broker.pid))
        .metadata()
        .is_err()
        || broker.scrape().is_err()
}

fn violations(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.starts_with("violation."))
        .map(|(_, v)| v)
        .sum()
}

struct Outcome<'a> {
    args: &'a Args,
    rounds: &'a [Round],
    baseline: Memory,
    start_memory: Memory,
    end_memory: Memory,
    peaks: Peaks,
    bound: RssBound,
    end_metrics: &'a Metrics,
    /// TLS connections the warm-up made (counted by the broker, not in the rounds' counts).
    warm_up_tls_connects: u64,
    exit: Result<std::process::ExitStatus, String>,
    elapsed: Duration,
}

impl Outcome<'_> {
    /// Prints the summary and the JSON line; true when every check passed.
    fn report(&self) -> Result<bool, String> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for round in self.rounds {
            for (key, value) in &round.counts {
                *counts.entry(key.clone()).or_default() += value;
            }
        }
        let get = |key: &str| counts.get(key).copied().unwrap_or(0);
        let sum = |prefix: &str| -> u64 {
            counts
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        let total_violations = violations(&counts);
        let mismatches = get("violation.foreign_answer")
            + get("violation.corrupt_answer")
            + get("violation.foreign_request")
            + get("violation.corrupt_request")
            + get("violation.foreign_broadcast")
            + get("violation.corrupt_broadcast");
        let duplicates = get("violation.duplicate_answer")
            + get("violation.assigned_twice")
            + get("violation.broadcast_twice")
            + get("violation.duplicate_cancel");
        let bound = self.bound.total_kib();
        let growth = self
            .end_memory
            .rss_kib
            .saturating_sub(self.baseline.rss_kib);
        let rss_ok = growth <= bound;
        let first_idle = self.rounds.first().map_or(0, |r| r.idle_rss_kib);
        let last_idle = self.rounds.last().map_or(0, |r| r.idle_rss_kib);
        let drift = last_idle.saturating_sub(first_idle);
        let drift_ok = drift <= self.args.drift_mib * 1024;
        let idle_ok = self.rounds.iter().all(|r| r.idle) && self.end_metrics.is_idle();
        let exit_ok = matches!(&self.exit, Ok(status) if status.success());
        let load_ok = get("requests.ok") > 0
            && get("broadcasts.ok") > 0
            && (self.args.child_receivers == 0 || get("faults.sigkill_receiver") > 0);
        let tls = self.tls_figures(get("clients.tls_connects"));
        let tls_ok = tls.ok(self.args.tls);
        let pass =
            total_violations == 0 && rss_ok && drift_ok && idle_ok && exit_ok && load_ok && tls_ok;

        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "\n== soak summary ==");
        let load_time: Duration = self.rounds.iter().map(|r| r.load_time).sum();
        let _ = writeln!(
            w,
            "duration: {:.1} s of load in {} round(s), {:.1} s in all; seed {}",
            load_time.as_secs_f64(),
            self.rounds.len(),
            self.elapsed.as_secs_f64(),
            self.args.seed
        );
        let _ = writeln!(
            w,
            "requests: {} sent ({} streamed in chunks, {} via the client library); {} ok; {} \
             answered late but before the broker's timeout fired",
            get("requests.sent"),
            get("requests.streamed"),
            get("requests.library"),
            get("requests.ok"),
            get("requests.late_answer_ok")
        );
        let _ = writeln!(
            w,
            "  expected non-answers: {} timeouts, {} no-receiver, {} cancelled by the receiver, {} \
             peer gone ({} held by a killed receiver, {} during a kill), {} abandoned by a \
             vanished sender",
            get("requests.timeout_expected"),
            get("requests.no_receiver_expected"),
            get("requests.cancelled_expected"),
            get("requests.peer_gone"),
            get("requests.peer_gone_attributed"),
            get("requests.peer_gone_during_kill"),
            get("requests.abandoned_by_sender")
        );
        let _ = writeln!(
            w,
            "  unexpected: {} timeouts, {} other errors, {} unanswered",
            get("violation.timeout_unexpected"),
            get("violation.error_unexpected"),
            get("violation.unanswered")
        );
        let _ = writeln!(
            w,
            "  receivers: {} responses sent, {} late responses sent after the broker's CANCEL \
             (refused: {}), {} cancels received",
            get("receivers.responses_sent"),
            get("receivers.late_responses_sent"),
            get("receivers.late_response_refused"),
            get("receivers.cancel_received")
        );
        let _ = writeln!(
            w,
            "broadcasts: {} sent, {} acked by all ({} with an exact ack count), {} incomplete \
             because a peer left, {} copies delivered",
            get("broadcasts.sent"),
            get("broadcasts.ok"),
            get("broadcasts.ack_count_exact"),
            get("broadcasts.incomplete_peer_left"),
            get("broadcasts.delivered")
        );
        let _ = writeln!(
            w,
            "faults injected: {} receiver processes SIGKILLed ({} holding requests), {} raw \
             receivers reset ({} holding), {} senders reset mid-body, {} senders FIN mid-body, {} \
             senders reset awaiting answers, {} peers reset mid-broadcast",
            get("faults.sigkill_receiver"),
            get("faults.sigkill_receiver_holding"),
            get("faults.rst_receiver"),
            get("faults.rst_receiver_holding"),
            get("faults.rst_sender_mid_body"),
            get("faults.fin_sender_mid_body"),
            get("faults.rst_sender_awaiting"),
            get("faults.rst_peer_mid_broadcast")
        );
        let _ = writeln!(
            w,
            "clients: {} connects, {} disconnects ({} graceful leaves)",
            get("clients.connects"),
            get("clients.disconnects"),
            sum("clients.graceful_leave")
        );
        if self.args.tls {
            let _ = writeln!(
                w,
                "TLS: on for the client-library clients (raw clients on plain TCP): the broker \
                 opened {} TLS connections for {} made ({} by the load + {} warm-up), {} at \
                 once at the peak; {} handshake failures: {}",
                tls.opened,
                tls.expected,
                tls.expected - self.warm_up_tls_connects,
                self.warm_up_tls_connects,
                self.peaks.tls_connections,
                tls.handshake_failures,
                if tls_ok { "ok" } else { "MISMATCH" }
            );
        } else {
            let _ = writeln!(
                w,
                "TLS: off (every client on plain TCP; the broker opened {} TLS connections: {})",
                tls.opened,
                if tls_ok { "ok" } else { "MISMATCH" }
            );
        }
        let _ = writeln!(
            w,
            "checks: {} mismatches (answered with another request's bytes, or corrupt), {} \
             duplicates (answered twice, delivered twice), {total_violations} violations in all",
            mismatches, duplicates
        );
        for round in self.rounds {
            for sample in &round.samples {
                let _ = writeln!(w, "  ! {sample}");
            }
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(
            w,
            "broker RSS: start-up {:.1} MiB, baseline {:.1} MiB, peak {:.1} MiB (sampled; \
             VmHWM {:.1} MiB), idle after each round [{}] MiB, final {:.1} MiB",
            mib(self.start_memory.rss_kib),
            mib(self.baseline.rss_kib),
            mib(self.peaks.rss_kib),
            mib(self.end_memory.hwm_kib),
            self.rounds
                .iter()
                .map(|r| format!("{:.1}", mib(r.idle_rss_kib)))
                .collect::<Vec<_>>()
                .join(", "),
            mib(self.end_memory.rss_kib)
        );
        let _ = writeln!(
            w,
            "  final - baseline = {:.1} MiB, bound {:.1} MiB = pools {:.1} (2 x min(256, {} peak \
             connections) x 64 KiB) + containers {:.1} + TLS {:.1} ({} peak TLS connections x \
             {} KiB) + allocator slack {:.1}: {}",
            mib(growth),
            mib(bound),
            mib(self.bound.pools_kib),
            self.peaks.connections,
            mib(self.bound.containers_kib),
            mib(self.bound.tls_kib),
            self.peaks.tls_connections,
            tls::ALLOWANCE_PER_CONNECTION_KIB,
            mib(self.bound.slack_kib),
            if rss_ok { "ok" } else { "EXCEEDED" }
        );
        let _ = writeln!(
            w,
            "  idle RSS drift first -> last round {:.1} MiB (at most {} MiB): {}",
            mib(drift),
            self.args.drift_mib,
            if drift_ok { "ok" } else { "EXCEEDED" }
        );
        let _ = writeln!(
            w,
            "broker state at the end: {}",
            self.end_metrics
                .state()
                .iter()
                .map(|(k, v)| format!("{}={v}", k.trim_start_matches("switchyard_")))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (i, round) in self.rounds.iter().enumerate() {
            if !round.idle {
                let _ = writeln!(
                    w,
                    "  ! round {} did not return to idle within {:?}: {:?}",
                    i + 1,
                    round.idle_after,
                    round.state
                );
            }
        }
        let _ = writeln!(
            w,
            "broker exit: {}",
            match &self.exit {
                Ok(status) => status.to_string(),
                Err(e) => e.clone(),
            }
        );
        if !load_ok {
            let _ = writeln!(
                w,
                "  ! the load did too little to judge (no ok request, broadcast or kill)"
            );
        }
        let _ = writeln!(w, "verdict: {}", if pass { "PASS" } else { "FAIL" });
        print!("{out}");

        let json = self.json(&counts, mismatches, duplicates, pass, growth, drift, &tls);
        println!("{json}");
        if let Some(path) = &self.args.json {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(file, "{json}").map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(pass)
    }

    /// The broker's TLS counters at the end, against the TLS connects the soak's clients counted.
    fn tls_figures(&self, load_tls_connects: u64) -> TlsFigures {
        TlsFigures {
            opened: self
                .end_metrics
                .value("switchyard_tls_connections_opened_total")
                .unwrap_or(0),
            expected: load_tls_connects + self.warm_up_tls_connects,
            handshake_failures: self
                .end_metrics
                .value("switchyard_tls_handshake_failures_total")
                .unwrap_or(0),
        }
    }

    #[allow(clippy::too_many_arguments)] // the figures `report` computed, passed on as they are
    fn json(
        &self,
        counts: &BTreeMap<String, u64>,
        mismatches: u64,
        duplicates: u64,
        pass: bool,
        growth: u64,
        drift: u64,
        tls: &TlsFigures,
    ) -> String {
        let a = self.args;
        let group = |prefix: &str| -> String {
            let fields: Vec<String> = counts
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| format!("\"{k}\":{v}")))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        let state: Vec<String> = self
            .end_metrics
            .state()
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.trim_start_matches("switchyard_")))
            .collect();
        let errors: Vec<String> = self
            .end_metrics
            .errors_sent()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let idle: Vec<String> = self
            .rounds
            .iter()
            .map(|r| r.idle_rss_kib.to_string())
            .collect();
        #[allow(clippy::disallowed_methods)] // the record's wall-clock date
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let load_time: Duration = self.rounds.iter().map(|r| r.load_time).sum();
        format!(
            "{{\"tool\":\"soak\",\"unix_time\":{unix},\"seed\":{},\"duration_s\":{:.1},\
             \"elapsed_s\":{:.1},\"rounds\":{},\"config\":{{\"channels\":{},\"raw_senders\":{},\
             \"raw_receivers\":{},\"child_receivers\":{},\"library_senders\":{},\
             \"library_receivers\":{},\"window\":{},\"in_flight\":{},\"max_body\":{},\
             \"timeout_ms\":{},\"kill_every_ms\":{},\"lifetime_ms\":{}}},\"requests\":{},\
             \"broadcasts\":{},\"receivers\":{},\"faults\":{},\"clients\":{},\"violations\":{},\"sabotage\":{},\
             \"mismatches\":{mismatches},\"duplicates\":{duplicates},\"bytes\":{},\
             \"rss_kib\":{{\"start\":{},\"baseline\":{},\"peak_sampled\":{},\"hwm\":{},\
             \"idle_after_round\":[{}],\"final\":{},\"growth\":{growth},\"bound\":{},\
             \"drift\":{drift},\"drift_max\":{}}},\"peaks\":{{\"connections\":{},\"streams\":{},\
             \"buffered_bytes\":{}}},\"state_at_end\":{{{}}},\"broker_errors_sent\":{{{}}},\
             \"tls\":{{\"on\":{},\"connections_opened\":{},\"connects_made\":{},\
             \"handshake_failures\":{},\"peak_connections\":{},\"rss_allowance_kib\":{}}},\
             \"broker_exit\":\"{}\",\"verdict\":\"{}\",\"note\":\"{}\"}}",
            a.seed,
            load_time.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            a.rounds,
            a.channels,
            a.raw_senders,
            a.raw_receivers,
            a.child_receivers,
            a.library_senders,
            a.library_receivers,
            a.window,
            a.in_flight,
            a.max_body,
            a.timeout_ms,
            a.kill_every_ms,
            a.lifetime_ms,
            group("requests."),
            group("broadcasts."),
            group("receivers."),
            group("faults."),
            group("clients."),
            group("violation."),
            group("sabotage."),
            group("bytes."),
            self.start_memory.rss_kib,
            self.baseline.rss_kib,
            self.peaks.rss_kib,
            self.end_memory.hwm_kib,
            idle.join(","),
            self.end_memory.rss_kib,
            self.bound.total_kib(),
            a.drift_mib * 1024,
            self.peaks.connections,
            self.peaks.streams,
            self.peaks.buffered_bytes,
            state.join(","),
            errors.join(","),
            a.tls,
            tls.opened,
            tls.expected,
            tls.handshake_failures,
            self.peaks.tls_connections,
            self.bound.tls_kib,
            match &self.exit {
                Ok(status) => status.to_string(),
                Err(e) => e.clone(),
            }
            .replace('"', "'"),
            if pass { "pass" } else { "fail" },
            a.note.clone().unwrap_or_default().replace(['"', '\\'], "'"),
        )
    }
}

/// The broker's TLS counters at the end of a run, and the TLS connections the soak made.
struct TlsFigures {
    /// `switchyard_tls_connections_opened_total`.
    opened: u64,
    /// TLS connects the soak's clients completed (load and warm-up).
    expected: u64,
    /// `switchyard_tls_handshake_failures_total`.
    handshake_failures: u64,
}

impl TlsFigures {
    /// With `--tls`: every TLS connection the broker opened is one the soak made (no stray or
    /// lost one), at least one beyond the warm-up, and none failed its handshake — the soak's
    /// clients never give up mid-handshake (receiver children are killed only after their
    /// WELCOME), so a failure is the broker's or the client library's. Without: none at all.
    fn ok(&self, tls_on: bool) -> bool {
        if tls_on {
            self.handshake_failures == 0
                && self.opened == self.expected
                && self.opened > WARM_UP_CLIENTS
        } else {
            self.opened == 0 && self.handshake_failures == 0
        }
    }
}
