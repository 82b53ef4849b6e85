//! `switchyard peers CHANNEL` and `switchyard ping`: what is on a channel, and how far the
//! broker is.

use std::io;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use switchyard::ids::ChannelId;

use super::args::{parse_duration, ChannelArg, ConnectArgs};
use super::exit::CliError;
use super::write_out;

/// `switchyard peers`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard peers orders                        # one client id per line
  switchyard peers orders --json                 # [\"..\", \"..\"]

The list is of the other peers: this command joins the channel to ask, and is not in it.")]
pub(crate) struct PeersArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The channel: a UUID or a name.
    channel: ChannelArg,
    /// How long to wait for the broker's answer, e.g. 5s.
    #[arg(long, short = 't', default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

/// Prints the channel's other peers.
pub(crate) fn run_peers(args: &PeersArgs) -> Result<(), CliError> {
    let client = args.connect.connect(args.channel.id, false)?;
    let peers = client
        .fetch_peers(args.timeout)
        .map_err(|e| CliError::client("peers", e))?;
    let text = if args.json {
        let ids: Vec<String> = peers.iter().map(ToString::to_string).collect();
        format!("{}\n", json!(ids))
    } else {
        peers.iter().map(|peer| format!("{peer}\n")).collect()
    };
    write_out(&mut io::stdout().lock(), text.as_bytes())
}

/// `switchyard ping`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard ping                                # one round trip
  switchyard ping --count 10                     # ten, then min/avg/max
  switchyard ping --json                         # {\"seq\":1,\"rtt_us\":..} per ping

Pings are sent back to back over one connection (joined to a fresh random channel, or --channel).")]
pub(crate) struct PingArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// How many pings.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// How long to wait for each pong, e.g. 5s.
    #[arg(long, short = 't', default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// The channel to join (a connection always joins one); default a fresh random one.
    #[arg(long)]
    channel: Option<ChannelArg>,
    /// One JSON object per ping.
    #[arg(long)]
    json: bool,
}

/// Pings the broker `--count` times and prints each round trip, then a summary.
pub(crate) fn run_ping(args: &PingArgs) -> Result<(), CliError> {
    let channel = args
        .channel
        .as_ref()
        .map_or_else(ChannelId::random, |c| c.id);
    let client = args.connect.connect(channel, false)?;
    let stdout = io::stdout();
    let mut rtts = Vec::new();
    for seq in 1..=args.count {
        let rtt = client
            .ping(args.timeout)
            .map_err(|e| CliError::client("ping", e))?;
        let line = if args.json {
            json!({"seq": seq, "rtt_us": rtt.as_micros() as u64}).to_string()
        } else {
            format!(
                "pong from {}: seq={seq} time={}",
                args.connect.url,
                millis(rtt)
            )
        };
        write_out(&mut stdout.lock(), format!("{line}\n").as_bytes())?;
        rtts.push(rtt);
    }
    if rtts.len() > 1 && !args.json {
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        let line = format!(
            "{} pings: min/avg/max = {} / {} / {}\n",
            rtts.len(),
            millis(min),
            millis(avg),
            millis(max)
        );
        write_out(&mut stdout.lock(), line.as_bytes())?;
    }
    Ok(())
}

/// A round trip in milliseconds with microsecond precision.
pub(crate) fn millis(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1e3)
}
