//! `loadgen`: the load generator that measures switchyard side by side with NATS.
//!
//! # Design
//! - Two back-ends speak their wire protocols directly over TCP: [`switchyard`] (PROTOCOL.md
//!   frames) and [`nats`] (the NATS client text protocol). Each is only a [`net::Protocol`]:
//!   message writers and a parser over byte buffers. Sockets, buffers and the event loop are
//!   the same code for both ([`net`]), so the client overhead is equal.
//! - One mio poll loop on one thread drives every connection of a scenario — requesters,
//!   receivers, peers and idle connections alike: no thread per connection, no allocation per
//!   request once warm, writes batched per loop turn. The machine has two cores; the broker gets
//!   the other one. The harness's own CPU use is reported with every figure.
//! - The scenarios ([`scenarios`]) are written once, generic over the back-end; [`report`]
//!   turns each measurement into a human block and a JSON line, and `compare` aggregates JSON
//!   lines of many runs (median, min–max) into the side-by-side table of `benches/compare.sh`.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod clients;
mod nats;
mod net;
mod report;
mod scenarios;
mod switchyard;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use net::Protocol;
use report::{Probe, Record};
use scenarios::{Bench, Settings};

/// Load generator for switchyard and NATS: request/reply latency and throughput, broadcast
/// fan-out, large bodies, idle connections and scaling, over loopback TCP.
///
/// Each scenario prints a human block and one JSON line per measured figure set. Give the
/// broker's pid (--broker-pid) to get its CPU seconds per 1000 operations and its memory.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// 1 requester, 1 receiver, strictly sequential: p50/p90/p99/p99.9 round trip.
    RrLatency(RunArgs),
    /// --requesters × --outstanding in flight, --receivers answering: requests/s, p50/p99.
    RrThroughput(RunArgs),
    /// 1 sender, --peers peers: deliveries/s (switchyard acked broadcast; NATS plain publish).
    Fanout(RunArgs),
    /// Sequential request/reply of --large-size bodies: MiB/s.
    Large(RunArgs),
    /// --idle-conns connections after the handshake: broker RSS per connection.
    IdleConns(RunArgs),
    /// rr-latency beside --scale-idle idle connections, rr-throughput with --scale-receivers.
    Scale(RunArgs),
    /// Every scenario in turn (rr-latency, rr-throughput, fanout, large, idle-conns, scale).
    All(RunArgs),
    /// The Rust client libraries, blocking and async, side by side: sequential round trips and
    /// pipelined requests on one connection (what an application pays for the library).
    Clients(clients::ClientsArgs),
    /// Reads JSON lines written with --json and prints the switchyard vs NATS table.
    Compare {
        /// Files of JSON lines (every round, every back-end).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The switchyard wire protocol (PROTOCOL.md).
    Switchyard,
    /// The NATS client protocol.
    Nats,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Wire protocol to speak.
    #[arg(long, value_enum, default_value_t = Backend::Switchyard)]
    backend: Backend,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// The broker's process id: enables its CPU (per 1000 operations) and RSS figures.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name of the back-end in the reports (default: the --backend name), e.g. nats-gomaxprocs1.
    #[arg(long)]
    label: Option<String>,
    /// Append each record's JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Request, response and broadcast body size in bytes.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// rr-latency: measured requests.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// rr-latency: warm-up requests (not measured).
    #[arg(long, default_value_t = 2_000)]
    warmup_requests: u64,
    /// rr-throughput and fanout: measured duration in seconds.
    #[arg(long, default_value_t = 4.0)]
    duration_secs: f64,
    /// rr-throughput and fanout: warm-up duration in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// rr-throughput: requester connections.
    #[arg(long, default_value_t = 4)]
    requesters: usize,
    /// rr-throughput: requests in flight per requester.
    #[arg(long, default_value_t = 32)]
    outstanding: u32,
    /// rr-throughput: receivers (NATS: one queue group).
    #[arg(long, default_value_t = 4)]
    receivers: usize,
    /// switchyard receivers' RECEIVE window (0: requesters × outstanding, so one receiver could
    /// hold every request in flight and credit never throttles).
    #[arg(long, default_value_t = 0)]
    window: u32,
    /// fanout: peers receiving every broadcast.
    #[arg(long, default_value_t = 100)]
    peers: usize,
    /// fanout: broadcasts in flight (NATS: window × peers deliveries outstanding).
    #[arg(long, default_value_t = 8)]
    broadcast_window: u32,
    /// large: body size in bytes (one frame for switchyard: at most the broker's max payload).
    #[arg(long, default_value_t = 1 << 20)]
    large_size: usize,
    /// large: measured requests (a tenth more, at least 2, warm up first).
    #[arg(long, default_value_t = 50)]
    large_requests: u64,
    /// idle-conns: connections to open.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// idle-conns and scale: idle connections per switchyard channel (NATS: each has its own
    /// subscription). Presence traffic grows with the square of this number.
    #[arg(long, default_value_t = 100)]
    idle_per_channel: usize,
    /// scale: idle connection counts for the rr-latency steps.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    scale_idle: Vec<usize>,
    /// scale: receiver counts for the rr-throughput steps.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    scale_receivers: Vec<usize>,
    /// scale: measured requests per rr-latency step (a tenth more warm up).
    #[arg(long, default_value_t = 5_000)]
    scale_requests: u64,
    /// scale: measured seconds per rr-throughput step (a quarter more warm up).
    #[arg(long, default_value_t = 2.0)]
    scale_secs: f64,
    /// Handshakes in progress at once while opening many connections.
    #[arg(long, default_value_t = 256)]
    connect_batch: usize,
    /// Raise this process's open-file limit (RLIMIT_NOFILE) to at least this.
    #[arg(long, default_value_t = 65_536)]
    nofile: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    RrLatency,
    RrThroughput,
    Fanout,
    Large,
    IdleConns,
    Scale,
}

const ALL: [Scenario; 6] = [
    Scenario::RrLatency,
    Scenario::RrThroughput,
    Scenario::Fanout,
    Scenario::Large,
    Scenario::IdleConns,
    Scenario::Scale,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenarios, args): (&[Scenario], RunArgs) = match cli.command {
        Command::RrLatency(a) => (&[Scenario::RrLatency], a),
        Command::RrThroughput(a) => (&[Scenario::RrThroughput], a),
        Command::Fanout(a) => (&[Scenario::Fanout], a),
        Command::Large(a) => (&[Scenario::Large], a),
        Command::IdleConns(a) => (&[Scenario::IdleConns], a),
        Command::Scale(a) => (&[Scenario::Scale], a),
        Command::All(a) => (&ALL, a),
        Command::Clients(a) => {
            return match clients::run(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen clients: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Compare { files } => {
            return match report::compare(&files) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen compare: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match raise_open_files_limit(args.nofile) {
        Ok(limit) if limit < args.nofile => {
            eprintln!(
                "loadgen: open-file limit is {limit} (wanted {})",
                args.nofile
            )
        }
        Ok(_) => {}
        Err(e) => eprintln!("loadgen: cannot raise the open-file limit: {e}"),
    }
    let settings = settings(&args);
    let probe = Probe::new(args.broker_pid);
    let nonce = u64::from_be_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 of 16 bytes"),
    );
    let mut failed = false;
    for &scenario in scenarios {
        let result = match args.backend {
            Backend::Switchyard => {
                let mut bench = Bench::new(switchyard::Switchyard::new(nonce), &settings, &probe);
                run(&mut bench, scenario)
            }
            Backend::Nats => {
                let mut bench = Bench::new(nats::Nats::new(nonce), &settings, &probe);
                run(&mut bench, scenario)
            }
        };
        match result.and_then(|records| emit(&records, args.json.as_ref())) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("loadgen: {scenario:?} against {}: {e}", settings.label);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn settings(args: &RunArgs) -> Settings {
    let label = args.label.clone().unwrap_or_else(|| {
        match args.backend {
            Backend::Switchyard => "switchyard",
            Backend::Nats => "nats",
        }
        .to_owned()
    });
    let window = if args.window == 0 {
        u32::try_from(args.requesters)
            .unwrap_or(u32::MAX)
            .saturating_mul(args.outstanding)
            .max(1)
    } else {
        args.window
    };
    Settings {
        addr: args.addr,
        label,
        body_size: args.body_size,
        requests: args.requests,
        warmup_requests: args.warmup_requests,
        duration: Duration::from_secs_f64(args.duration_secs),
        warmup_duration: Duration::from_secs_f64(args.warmup_secs),
        requesters: args.requesters,
        outstanding: args.outstanding.max(1),
        receivers: args.receivers.max(1),
        window,
        peers: args.peers.max(1),
        broadcast_window: args.broadcast_window.max(1),
        large_size: args.large_size,
        large_requests: args.large_requests.max(1),
        idle_conns: args.idle_conns,
        idle_per_channel: args.idle_per_channel,
        scale_idle: args.scale_idle.clone(),
        scale_receivers: args.scale_receivers.clone(),
        scale_requests: args.scale_requests.max(1),
        scale_duration: Duration::from_secs_f64(args.scale_secs),
        connect_batch: args.connect_batch,
    }
}

fn run<P: Protocol + Clone>(
    bench: &mut Bench<'_, P>,
    scenario: Scenario,
) -> io::Result<Vec<Record>> {
    match scenario {
        Scenario::RrLatency => bench.rr_latency(),
        Scenario::RrThroughput => bench.rr_throughput(),
        Scenario::Fanout => bench.fanout(),
        Scenario::Large => bench.large(),
        Scenario::IdleConns => bench.idle_conns(),
        Scenario::Scale => bench.scale(),
    }
}

/// Prints each record (human block, then its JSON line) and appends the JSON lines to `json`.
fn emit(records: &[Record], json: Option<&PathBuf>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for record in records {
        write!(stdout, "{}", record.human())?;
        writeln!(stdout, "{}", record.json())?;
    }
    stdout.flush()?;
    if let Some(path) = json {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        for record in records {
            writeln!(file, "{}", record.json())?;
        }
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE to at least `wanted` (the hard limit too, when we may); returns the
/// soft limit now in force. 10 000 idle connections need 10 000 descriptors here.
#[allow(unsafe_code)] // the one FFI call of the load generator; see SAFETY
fn raise_open_files_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the rlimit struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit reads only the rlimit struct we pass, which outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(wanted);
    }
    // Not allowed to raise the hard limit: go as far as it allows.
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}
