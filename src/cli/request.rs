//! `switchyard request CHANNEL [BODY]`: the sender side (like `nats req`, `mosquitto_rr`).
//!
//! A body from stdin is streamed with `Client::request_with` as it is read, unless `--count`
//! repeats it (then it is read once, into memory). The response is streamed to stdout as it
//! arrives, byte for byte; with `--count` above 1, a response that does not end in a newline is
//! followed by one, so responses stay apart on a terminal.

use std::io::{self, Read, Write};
use std::time::Duration;

use clap::Args;
use switchyard::client::{Client, Error, RequestOptions, Response};

use super::args::{parse_duration, BodySource, ChannelArg, ConnectArgs};
use super::exit::CliError;
use super::write_out;

/// `switchyard request`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard request orders 'hello'              # prints the response
  switchyard request orders < query.json         # the body from stdin, streamed
  switchyard request orders ping --count 3       # three requests, one after another
  switchyard request orders x --timeout 250ms --no-wait
  SWITCHYARD_URL=tcp://broker:7878 switchyard request orders hi

Exits 5 when no receiver took the request, 6 on a timeout, 7 when the receiver left, 8 when it
cancelled (see `switchyard --help` for every exit code).")]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The channel: a UUID or a name.
    channel: ChannelArg,
    /// The request body; `-` reads stdin, as does no BODY when stdin is not a terminal.
    body: Option<String>,
    /// Send the request this many times, one after another.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// How long the broker waits for a receiver and the whole response, e.g. 5s, 250ms.
    #[arg(long, short = 't', default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Fail at once (exit 5) when no receiver has room, instead of waiting for one.
    #[arg(long)]
    no_wait: bool,
}

/// Sends the request(s).
pub(crate) fn run(args: &RequestArgs) -> Result<(), CliError> {
    let client = args.connect.connect(args.channel.id, false)?;
    let options = RequestOptions {
        timeout: Some(args.timeout),
        no_wait: args.no_wait,
    };
    let source = BodySource::from_arg(args.body.as_deref());
    if args.count == 1 {
        if let BodySource::Stdin = source {
            let response = client
                .request_with(&mut io::stdin().lock(), options)
                .map_err(|e| CliError::client("request", e))?;
            stream_to_stdout(response)?;
            return Ok(());
        }
    }
    let body = source.read_all()?;
    for _ in 0..args.count {
        let last = send_one(&client, &body, options)?;
        if args.count > 1 && last != Some(b'\n') {
            write_out(&mut io::stdout().lock(), b"\n")?;
        }
    }
    Ok(())
}

/// One request with `body`; returns the response's last byte.
fn send_one(client: &Client, body: &[u8], options: RequestOptions) -> Result<Option<u8>, CliError> {
    let mut body = body;
    let response = client
        .request_with(&mut body, options)
        .map_err(|e| CliError::client("request", e))?;
    stream_to_stdout(response)
}

/// Copies the response to stdout as it arrives; returns its last byte. Keeps the two sides'
/// errors apart: a failing response is the client's error (its exit code), a failing stdout is
/// local I/O.
fn stream_to_stdout(mut response: Response) -> Result<Option<u8>, CliError> {
    // 64 KiB: the broker's default max payload, so one frame is usually one read and one write.
    let mut buf = vec![0u8; 64 * 1024];
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut last = None;
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CliError::client("response", client_error(e))),
        };
        last = Some(buf[n - 1]);
        out.write_all(&buf[..n]).map_err(|error| CliError::Io {
            doing: "writing the response to stdout",
            error,
        })?;
    }
    write_out(&mut out, b"")?;
    Ok(last)
}

/// The client error inside an `io::Error` from a body's `Read` (see `From<Error> for
/// io::Error`); a plain I/O error is the connection's.
pub(crate) fn client_error(error: io::Error) -> Error {
    if !error.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::Io(error);
    }
    let kind = error.kind();
    match error.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(typed)) => *typed,
        // Checked just above to hold a client error; keep the kind rather than panic.
        _ => Error::Io(io::Error::from(kind)),
    }
}
