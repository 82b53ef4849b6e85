//! `switchyard bench`: a quick benchmark against a running broker (like `nats bench`, much
//! smaller): `--receivers` echo receivers and `--senders` senders, one thread and one connection
//! each (the blocking client), on a fresh random channel. Each sender sends requests back to
//! back (closed loop, one in flight) until `--duration` is over or its share of `--requests` is
//! sent, recording each round trip in its own histogram; the histograms are merged at the end.
//!
//! The heavier load generator that compares with NATS side by side is `tools/loadgen`.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use switchyard::client::{Client, Error};
use switchyard::config::Size;
use switchyard::ids::ChannelId;

use super::args::{parse_duration, ConnectArgs};
use super::exit::CliError;
use super::write_out;

/// `switchyard bench`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard bench                               # 1 receiver, 1 sender, 128 B, 5 s
  switchyard bench --receivers 2 --senders 8 --size 4KiB --duration 10s
  switchyard bench --requests 100000 --json

Latency is per request, from sending it to the end of its response (one in flight per sender).
MiB/s counts request and response bodies. For a load generator that also runs NATS side by side
(open loop, fan-out, many connections), see tools/loadgen (cargo run -p switchyard-loadgen).")]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Echo receivers (threads, one connection each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    receivers: u32,
    /// Senders (threads, one connection each, one request in flight each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    senders: u32,
    /// How long to send, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Send this many requests in all instead (split over the senders); wins over --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Request body size (the echoed response is the same), e.g. 128, 4KiB, 1MiB.
    #[arg(long, default_value = "128")]
    size: Size,
    /// Each receiver's receive window.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Timeout of each request, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Highest latency the histograms hold: a request cannot outlive its timeout by much, and a
/// minute covers every `--timeout` worth benchmarking (longer values are clamped to it).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// The wall clock of the measurement. The CLI is a driver like the server: it may read the
/// clock (clippy.toml keeps the sans-IO layers from doing so).
#[allow(clippy::disallowed_methods)] // the benchmark measures real time
fn now() -> Instant {
    Instant::now()
}

/// An empty latency histogram in nanoseconds, 3 significant digits (as tools/loadgen).
fn histogram() -> Histogram<u64> {
    // Fails only for bounds that are invalid, and these are constants that are not.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid constant histogram bounds")
}

/// What one sender measured.
struct SenderResult {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<Error>,
}

/// Runs the benchmark and prints its table.
pub(crate) fn run(args: &BenchArgs) -> Result<(), CliError> {
    let channel = ChannelId::random();
    let receivers = (0..args.receivers)
        .map(|_| {
            let client = Arc::new(args.connect.connect(channel, false)?);
            client
                .set_receive_window(args.window)
                .map_err(|e| CliError::client("setting the receive window", e))?;
            Ok(client)
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let serving: Vec<_> = receivers
        .iter()
        .map(|client| {
            let client = Arc::clone(client);
            thread::spawn(move || echo(&client))
        })
        .collect();
    let senders = (0..args.senders)
        .map(|_| args.connect.connect(channel, false))
        .collect::<Result<Vec<_>, CliError>>()?;
    let body = vec![0x5a_u8; args.size.to_usize()];
    let started = now();
    let deadline = started + args.duration;
    let results: Vec<SenderResult> = thread::scope(|scope| {
        let handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let quota = args.requests.map(|total| share(total, args.senders, i));
                let body = &body;
                scope.spawn(move || send_loop(client, body, args.timeout, deadline, quota))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = started.elapsed();
    for client in &receivers {
        client.close(); // wakes `next_request` with `Closed`: the echo threads end
    }
    for handle in serving {
        let _ = handle.join();
    }
    report(args, &results, elapsed)?;
    match results.into_iter().find_map(|r| r.first_error) {
        Some(error) => Err(CliError::client("bench request", error)),
        None => Ok(()),
    }
}

/// Sender `i`'s share of `total` requests (the first ones take the remainder).
fn share(total: u64, senders: u32, i: usize) -> u64 {
    let senders = u64::from(senders);
    total / senders + u64::from((i as u64) < total % senders)
}

/// Echoes requests until the client is closed.
fn echo(client: &Client) {
    while let Ok(mut request) = client.next_request(None) {
        // A request that fails (its sender gave up) is the sender's to count.
        if let Ok(body) = request.read_body() {
            let _ = request.respond(&body);
        }
    }
}

/// Sends requests one after another until `deadline` or `quota`.
fn send_loop(
    client: &Client,
    body: &[u8],
    timeout: Duration,
    deadline: Instant,
    quota: Option<u64>,
) -> SenderResult {
    let mut result = SenderResult {
        latencies: histogram(),
        errors: 0,
        first_error: None,
    };
    let mut sent = 0u64;
    loop {
        match quota {
            Some(quota) if sent >= quota => break,
            None if now() >= deadline => break,
            _ => {}
        }
        let start = now();
        match client.request(body, timeout) {
            Ok(_) => {
                let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                result
                    .latencies
                    .saturating_record(ns.clamp(1, MAX_LATENCY_NS));
            }
            Err(e) => {
                result.errors += 1;
                let fatal = e.is_connection_fatal();
                result.first_error.get_or_insert(e);
                if fatal {
                    break;
                }
            }
        }
        sent += 1;
    }
    result
}

/// Prints the table (or the JSON object) of the merged results.
fn report(args: &BenchArgs, results: &[SenderResult], elapsed: Duration) -> Result<(), CliError> {
    let mut latencies = histogram();
    for result in results {
        // Same bounds on every histogram: adding cannot fail.
        let _ = latencies.add(&result.latencies);
    }
    let ok = latencies.len();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let rate = ok as f64 / secs;
    // A request body out and the same size back.
    let mib_per_sec = rate * 2.0 * args.size.0 as f64 / f64::from(1 << 20);
    let quantile = |q: f64| Duration::from_nanos(latencies.value_at_quantile(q));
    let (p50, p90, p99) = (quantile(0.50), quantile(0.90), quantile(0.99));
    let max = Duration::from_nanos(latencies.max());
    let text = if args.json {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        json!({
            "receivers": args.receivers,
            "senders": args.senders,
            "size": args.size.0,
            "seconds": secs,
            "requests": ok,
            "errors": errors,
            "requests_per_sec": rate,
            "mib_per_sec": mib_per_sec,
            "p50_us": us(p50),
            "p90_us": us(p90),
            "p99_us": us(p99),
            "max_us": us(max),
        })
        .to_string()
            + "\n"
    } else {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        format!(
            "switchyard bench: {} receivers, {} senders, {} B bodies, {:.2} s against {}\n\
             {:>10} {:>7} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9}\n\
             {:>10} {:>7} {:>11.1} {:>8.2} {:>9} {:>9} {:>9} {:>9}\n",
            args.receivers,
            args.senders,
            args.size.0,
            secs,
            args.connect.url,
            "requests",
            "errors",
            "req/s",
            "MiB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            ok,
            errors,
            rate,
            mib_per_sec,
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
        )
    };
    write_out(&mut io::stdout().lock(), text.as_bytes())
}
