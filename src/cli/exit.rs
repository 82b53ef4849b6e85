//! Exit codes: one per outcome a script may want to tell apart, and the one function that maps a
//! client [`Error`] to its code.
//!
//! The table [`EXIT_CODES`] is the single source: `--help` prints it and README.md copies it.
//! 2 stays what it always was for the broker (a configuration it refuses) and what clap uses for
//! a command line it cannot parse, so "you called it wrong" is 2 everywhere.

use std::fmt;
use std::process::ExitCode;

use switchyard::client::Error;
use switchyard::protocol::ErrorCode;

/// How a command ended, as its process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    /// Done.
    Ok = 0,
    /// Anything without a code of its own (a local I/O error, a broker error code with no
    /// outcome below, a protocol violation).
    Failure = 1,
    /// The command line or the broker's configuration is wrong.
    Usage = 2,
    /// Nothing accepted the TCP connection at the address.
    ConnectionRefused = 3,
    /// The broker refused the access token (UNAUTHORIZED).
    Unauthorized = 4,
    /// No receiver took the request in time (NO_RECEIVER).
    NoReceiver = 5,
    /// The broker or the deadline timed the operation out (TIMEOUT).
    Timeout = 6,
    /// The receiver left before its response completed (PEER_GONE).
    PeerGone = 7,
    /// The other side cancelled the request (a `reply --command` that failed, for one).
    Cancelled = 8,
    /// A broadcast found no other peer on the channel (NO_PEERS).
    NoPeers = 9,
    /// Some peers did not acknowledge a broadcast (BROADCAST_INCOMPLETE).
    BroadcastIncomplete = 10,
    /// The connection was lost, closed or the broker is going away.
    ConnectionLost = 11,
}

/// Every outcome with its code, as `--help` and README.md show them.
pub(crate) const EXIT_CODES: &[(Outcome, &str)] = &[
    (Outcome::Ok, "success"),
    (Outcome::Failure, "any other error"),
    (Outcome::Usage, "bad command line or broker configuration"),
    (
        Outcome::ConnectionRefused,
        "connection refused: no broker at the address",
    ),
    (
        Outcome::Unauthorized,
        "unauthorized: missing or wrong token",
    ),
    (Outcome::NoReceiver, "no receiver took the request in time"),
    (Outcome::Timeout, "timed out"),
    (Outcome::PeerGone, "the receiver left before responding"),
    (Outcome::Cancelled, "cancelled by the other side"),
    (Outcome::NoPeers, "broadcast: no other peer on the channel"),
    (
        Outcome::BroadcastIncomplete,
        "broadcast: some peers did not acknowledge",
    ),
    (
        Outcome::ConnectionLost,
        "connection lost or broker shutting down",
    ),
];

/// The exit-code table as text, for `--help`.
pub(crate) fn exit_code_help() -> String {
    let mut help = String::from("Exit codes:\n");
    for (outcome, meaning) in EXIT_CODES {
        help.push_str(&format!("  {:>2}  {meaning}\n", *outcome as u8));
    }
    help
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        ExitCode::from(outcome as u8)
    }
}

/// The outcome of a client error. Typed variants first; what arrives as [`Error::Broker`] is
/// mapped by its PROTOCOL.md §4 code (so a code that becomes a typed variant later needs one
/// more arm here and nothing else).
pub(crate) fn outcome_of(error: &Error) -> Outcome {
    match error {
        // Nothing answering as a broker there: for a script, the same as nobody listening.
        Error::ConnectionRefused(_) | Error::ConnectTimeout | Error::NotABroker { .. } => {
            Outcome::ConnectionRefused
        }
        Error::Unauthorized => Outcome::Unauthorized,
        Error::WaitElapsed => Outcome::Timeout,
        Error::NoReceiver => Outcome::NoReceiver,
        Error::Timeout => Outcome::Timeout,
        Error::PeerGone => Outcome::PeerGone,
        Error::Cancelled => Outcome::Cancelled,
        Error::NoPeers => Outcome::NoPeers,
        Error::BroadcastIncomplete { .. } => Outcome::BroadcastIncomplete,
        Error::Io(_)
        | Error::Closed
        | Error::ConnectionLost
        | Error::Reconnecting
        | Error::GoingAway => Outcome::ConnectionLost,
        _ => error.code().map_or(Outcome::Failure, outcome_of_code),
    }
}

/// The outcome of a PROTOCOL.md §4 error code.
fn outcome_of_code(code: ErrorCode) -> Outcome {
    match code {
        ErrorCode::Unauthorized => Outcome::Unauthorized,
        ErrorCode::NoReceiver => Outcome::NoReceiver,
        ErrorCode::Timeout | ErrorCode::HeartbeatTimeout => Outcome::Timeout,
        ErrorCode::PeerGone => Outcome::PeerGone,
        ErrorCode::Cancelled => Outcome::Cancelled,
        ErrorCode::NoPeers => Outcome::NoPeers,
        ErrorCode::BroadcastIncomplete => Outcome::BroadcastIncomplete,
        ErrorCode::GoingAway | ErrorCode::ShuttingDown | ErrorCode::Replaced => {
            Outcome::ConnectionLost
        }
        _ => Outcome::Failure,
    }
}

/// Why a CLI command failed: the message printed and the exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A client operation failed; `doing` says which, for the message.
    Client {
        /// What the command was doing ("connecting to 127.0.0.1:7878", "request").
        doing: String,
        /// The client's error.
        error: Error,
    },
    /// Local I/O (stdin, stdout, a child process) failed.
    Io {
        /// What was being done.
        doing: &'static str,
        /// The error.
        error: std::io::Error,
    },
}

impl CliError {
    /// A client error while `doing` something.
    pub(crate) fn client(doing: impl Into<String>, error: Error) -> CliError {
        CliError::Client {
            doing: doing.into(),
            error,
        }
    }

    /// The exit code.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            CliError::Client { error, .. } => outcome_of(error),
            CliError::Io { .. } => Outcome::Failure,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client { doing, error } => write!(f, "{doing}: {error}"),
            CliError::Io { doing, error } => write!(f, "{doing}: {error}"),
        }
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_the_table_lists_each_once() {
        let mut codes: Vec<u8> = EXIT_CODES.iter().map(|(o, _)| *o as u8).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_CODES.len());
        assert_eq!(codes, (0..EXIT_CODES.len() as u8).collect::<Vec<_>>());
    }

    #[test]
    fn client_errors_map_by_variant_and_by_code() {
        assert_eq!(outcome_of(&Error::NoReceiver), Outcome::NoReceiver);
        assert_eq!(outcome_of(&Error::Timeout), Outcome::Timeout);
        assert_eq!(outcome_of(&Error::ConnectionLost), Outcome::ConnectionLost);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            outcome_of(&Error::ConnectionRefused(refused)),
            Outcome::ConnectionRefused
        );
        let broker = |code: ErrorCode| Error::Broker {
            code: code as u16,
            message: String::new(),
        };
        assert_eq!(
            outcome_of(&broker(ErrorCode::Unauthorized)),
            Outcome::Unauthorized
        );
        assert_eq!(
            outcome_of(&broker(ErrorCode::LimitExceeded)),
            Outcome::Failure
        );
        let unknown = Error::Broker {
            code: 0x7777,
            message: String::new(),
        };
        assert_eq!(outcome_of(&unknown), Outcome::Failure);
    }
}
