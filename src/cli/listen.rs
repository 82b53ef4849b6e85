//! `switchyard listen CHANNEL` (like `nats sub`): broadcasts and presence changes as they come;
//! and `switchyard broadcast CHANNEL [BODY]`, their sending side.
//!
//! `listen` waits on broadcasts and on presence in two threads (the client's two blocking
//! queues) and prints from one, so lines never interleave. Each broadcast is acknowledged as it
//! is taken, which is what completes the sender's `broadcast`.
//!
//! `--json` prints one object per line:
//! `{"event":"broadcast","sender":UUID,"id":UUID,"body":TEXT}` (`"body_hex"` instead of
//! `"body"` when the body is not UTF-8), `{"event":"joined","peer":UUID}`,
//! `{"event":"left","peer":UUID}`.

use std::io;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use switchyard::client::{Broadcast, Client, Error, PresenceEvent};

use super::args::{parse_duration, BodySource, ChannelArg, ConnectArgs};
use super::exit::CliError;
use super::write_out;

/// `switchyard listen`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard listen orders                       # human-readable lines
  switchyard listen orders --json | jq .         # one JSON object per line
  switchyard listen orders --count 1             # exit after the first event

JSON lines: {\"event\":\"broadcast\",\"sender\":..,\"id\":..,\"body\":..} (\"body_hex\" when the body
is not UTF-8), {\"event\":\"joined\",\"peer\":..}, {\"event\":\"left\",\"peer\":..}.")]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The channel: a UUID or a name.
    channel: ChannelArg,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Exit after this many events (broadcasts and presence changes).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

/// One thing `listen` prints.
enum Event {
    Broadcast(Broadcast),
    Presence(PresenceEvent),
}

/// Prints events until `--count`, or until the connection is gone for good.
pub(crate) fn run_listen(args: &ListenArgs) -> Result<(), CliError> {
    let client = Arc::new(args.connect.connect(args.channel.id, true)?);
    eprintln!(
        "switchyard: listening on {} at {} as {} ({} other peers)",
        args.channel,
        args.connect.url,
        client.client_id(),
        client.peers().len()
    );
    let (events, received) = mpsc::channel::<Result<Event, Error>>();
    let waiters = [
        spawn_waiter(&client, &events, |c| {
            c.next_broadcast(None).map(Event::Broadcast)
        }),
        spawn_waiter(&client, &events, |c| {
            c.next_presence(None).map(Event::Presence)
        }),
    ];
    drop(events);
    let result = print_events(args, &received);
    // Wakes both waiters (their `next_*` return `Closed`), so they can be joined.
    client.close();
    for waiter in waiters {
        let _ = waiter.join();
    }
    result
}

/// A thread that hands `next` results to `events` until one fails or nobody listens.
fn spawn_waiter(
    client: &Arc<Client>,
    events: &mpsc::Sender<Result<Event, Error>>,
    next: fn(&Client) -> Result<Event, Error>,
) -> std::thread::JoinHandle<()> {
    let client = Arc::clone(client);
    let events = events.clone();
    std::thread::spawn(move || loop {
        let event = next(&client);
        let failed = event.is_err();
        if events.send(event).is_err() || failed {
            return;
        }
    })
}

fn print_events(
    args: &ListenArgs,
    received: &mpsc::Receiver<Result<Event, Error>>,
) -> Result<(), CliError> {
    let stdout = io::stdout();
    let mut printed = 0u64;
    for event in received {
        let event = event.map_err(|e| CliError::client("listening", e))?;
        let line = if args.json {
            json_line(&event)
        } else {
            human_line(&event)
        };
        write_out(&mut stdout.lock(), format!("{line}\n").as_bytes())?;
        printed += 1;
        if args.count == Some(printed) {
            break;
        }
    }
    Ok(())
}

fn human_line(event: &Event) -> String {
    match event {
        Event::Broadcast(b) => format!(
            "broadcast from {} ({} bytes): {}",
            b.sender,
            b.body.len(),
            String::from_utf8_lossy(&b.body).escape_debug()
        ),
        Event::Presence(PresenceEvent::Joined(peer)) => format!("joined {peer}"),
        Event::Presence(PresenceEvent::Left(peer)) => format!("left {peer}"),
        Event::Presence(other) => format!("presence {other:?}"),
    }
}

fn json_line(event: &Event) -> String {
    let value = match event {
        Event::Broadcast(b) => {
            let mut value = json!({
                "event": "broadcast",
                "sender": b.sender.to_string(),
                "id": b.id.to_string(),
            });
            match std::str::from_utf8(&b.body) {
                Ok(text) => value["body"] = json!(text),
                Err(_) => value["body_hex"] = json!(hex(&b.body)),
            }
            value
        }
        Event::Presence(PresenceEvent::Joined(peer)) => {
            json!({"event": "joined", "peer": peer.to_string()})
        }
        Event::Presence(PresenceEvent::Left(peer)) => {
            json!({"event": "left", "peer": peer.to_string()})
        }
        // A kind of presence event added later: named, never dropped silently.
        Event::Presence(other) => json!({"event": format!("{other:?}")}),
    };
    value.to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `switchyard broadcast`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard broadcast orders 'cache flush'      # prints the number of peers that acked
  date | switchyard broadcast orders             # the body from stdin
  switchyard broadcast orders x --json           # {\"acks\":N}

Exits 9 when no other peer is on the channel, 10 when some peers did not acknowledge (they are
listed on stderr).")]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The channel: a UUID or a name.
    channel: ChannelArg,
    /// The body; `-` reads stdin, as does no BODY when stdin is not a terminal.
    body: Option<String>,
    /// How long the peers have to acknowledge, e.g. 5s, 250ms.
    #[arg(long, short = 't', default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print `{"acks":N}` instead of N.
    #[arg(long)]
    json: bool,
}

/// Sends the broadcast and prints the ack count.
pub(crate) fn run_broadcast(args: &BroadcastArgs) -> Result<(), CliError> {
    let body = BodySource::from_arg(args.body.as_deref()).read_all()?;
    let client = args.connect.connect(args.channel.id, false)?;
    match client.broadcast(&body, args.timeout) {
        Ok(acks) => {
            let line = if args.json {
                json!({ "acks": acks }).to_string()
            } else {
                acks.to_string()
            };
            write_out(&mut io::stdout().lock(), format!("{line}\n").as_bytes())
        }
        Err(Error::BroadcastIncomplete { missing }) => {
            for peer in &missing {
                eprintln!("switchyard: no ack from {peer}");
            }
            Err(CliError::client(
                "broadcast",
                Error::BroadcastIncomplete { missing },
            ))
        }
        Err(e) => Err(CliError::client("broadcast", e)),
    }
}
