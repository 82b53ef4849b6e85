//! `switchyard reply CHANNEL`: a receiver (like `nats reply`).
//!
//! Requests are handled one at a time, in the order the broker assigned them; `--window` is how
//! many the broker may hand this receiver ahead (they wait in the client). For parallel work,
//! run several repliers on the channel: the broker spreads requests over them (competing
//! consumers).
//!
//! With `--count N` the receiver never takes more than N requests: before answering request k
//! it lowers its window to N - k, so the broker cannot assign one it would have to abandon
//! (the window counts held requests, and the one being answered still holds its slot until the
//! response is sent).
//!
//! `--command CMD` runs `sh -c CMD` per request with the body on its stdin and the request's
//! sender and id in `SWITCHYARD_SENDER` / `SWITCHYARD_REQUEST_ID`; its stdout (buffered in full,
//! so a failure can still cancel) is the response, its stderr goes to the replier's stderr. A
//! command that cannot start or exits non-zero cancels the request: the sender gets CANCELLED
//! (`request` exits 8), and the replier goes on with the next request.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use clap::Args;
use switchyard::client::{Error, IncomingRequest};

use super::args::{ChannelArg, ConnectArgs};
use super::exit::CliError;

/// `switchyard reply`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  switchyard reply orders                        # echo every request (--echo)
  switchyard reply orders --body 'pong'          # answer every request with `pong`
  switchyard reply orders --command 'tr a-z A-Z' # the command's stdout is the response
  switchyard reply orders --command 'jq .id' --window 8 --count 100

A --command that fails (cannot start, or exits non-zero) cancels its request: the sender gets
CANCELLED (`switchyard request` exits 8); the replier logs it and goes on.")]
pub(crate) struct ReplyArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The channel: a UUID or a name.
    channel: ChannelArg,
    /// Answer each request with its own body (the default).
    #[arg(long, group = "answer")]
    echo: bool,
    /// Answer each request with this body.
    #[arg(long, group = "answer", value_name = "TEXT")]
    body: Option<String>,
    /// Answer each request with the stdout of `sh -c CMD`, fed the request body on stdin.
    #[arg(long, group = "answer", value_name = "CMD")]
    command: Option<String>,
    /// Requests the broker may assign to this receiver at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Exit after this many requests (answered, or cancelled by a failing command).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

/// What each request is answered with.
enum Answer<'a> {
    Echo,
    Fixed(&'a [u8]),
    Command(&'a str),
}

/// Serves requests until `--count` is reached, or forever.
pub(crate) fn run(args: &ReplyArgs) -> Result<(), CliError> {
    let answer = match (&args.body, &args.command) {
        (Some(body), _) => Answer::Fixed(body.as_bytes()),
        (_, Some(command)) => Answer::Command(command),
        _ => Answer::Echo,
    };
    let client = args.connect.connect(args.channel.id, true)?;
    let window = match args.count {
        Some(count) => u32::try_from(count).map_or(args.window, |c| c.min(args.window)),
        None => args.window,
    };
    client
        .set_receive_window(window)
        .map_err(|e| CliError::client("setting the receive window", e))?;
    eprintln!(
        "switchyard: replying on {} at {} as {} (window {window})",
        args.channel,
        args.connect.url,
        client.client_id()
    );
    let mut answered = 0u64;
    loop {
        let request = client
            .next_request(None)
            .map_err(|e| CliError::client("waiting for a request", e))?;
        answered += 1;
        if let Some(count) = args.count {
            let left = count - answered;
            if left < u64::from(window) {
                // See the module docs: never hold more than the requests still to answer.
                client
                    .set_receive_window(u32::try_from(left).unwrap_or(u32::MAX))
                    .map_err(|e| CliError::client("setting the receive window", e))?;
            }
        }
        if let Err(e) = answer_one(request, &answer) {
            if e.is_connection_fatal() {
                return Err(CliError::client("answering", e));
            }
            eprintln!("switchyard: request not answered: {e}");
        }
        if args.count == Some(answered) {
            return Ok(());
        }
    }
}

/// Reads one request and answers it. Per-request failures (the sender gave up, the command
/// failed) are returned for the log; the caller goes on unless the connection is gone.
fn answer_one(mut request: IncomingRequest, answer: &Answer) -> Result<(), Error> {
    let body = request.read_body()?;
    match answer {
        Answer::Echo => request.respond(&body),
        Answer::Fixed(fixed) => request.respond(fixed),
        Answer::Command(command) => {
            let sender = request.sender().to_string();
            let id = request.id().to_string();
            match run_command(command, &body, &sender, &id) {
                Ok(output) => request.respond(&output),
                Err(why) => {
                    eprintln!("switchyard: command failed ({why}); request cancelled");
                    request.cancel();
                    Ok(())
                }
            }
        }
    }
}

/// Runs `sh -c command` with `body` on stdin; its stdout when it exits 0.
fn run_command(command: &str, body: &[u8], sender: &str, id: &str) -> Result<Vec<u8>, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SWITCHYARD_SENDER", sender)
        .env("SWITCHYARD_REQUEST_ID", id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    // Fed from another thread: a command that writes before it has read all of its input would
    // otherwise block on a full stdout pipe while we block on its full stdin pipe.
    let output = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || {
            // A command that exits without reading its input closes the pipe: not an error.
            match stdin.write_all(body) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
                _ => Ok(()),
            }
        });
        let output = child.wait_with_output();
        let fed = feeder.join().unwrap_or(Ok(()));
        output.and_then(|output| fed.map(|()| output))
    })
    .map_err(|e| format!("running it: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(output.status.to_string())
    }
}
