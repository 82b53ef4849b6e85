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

mod args;
mod body;
mod broker;
mod child;
mod ledger;
mod library;
mod raw;
mod report;
mod sampler;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
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

use args::{validate, Args};
use report::Outcome;
use sampler::{RssBound, Sampler};

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
        PresenceOverflow => "PRESENCE_OVERFLOW",
    }
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
