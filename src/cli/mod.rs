//! The command line: the broker as `serve` (the default when no subcommand is given, so
//! `switchyard --listen ..` runs the broker as it always did) and a client in the spirit of
//! `nats req/reply/sub/bench` and `mosquitto_rr`.
//!
//! Module map:
//! - `serve.rs`     the broker: configuration, logger, `Server::bind(..)?.run()`
//! - `args.rs`      what the client commands share: `--url`, `--token`, channels, durations, bodies
//! - `request.rs`   `request`: one request (or `--count` of them), response streamed to stdout
//! - `reply.rs`     `reply`: a receiver that echoes, answers a fixed body or runs a command
//! - `listen.rs`    `listen` (broadcasts and presence as they come) and `broadcast`
//! - `probe.rs`     `peers` and `ping`
//! - `bench.rs`     `bench`: echo receivers and senders on a fresh channel, a latency table
//! - `exit.rs`      the exit codes and the one mapping from a client error to its code
//!
//! Contract: every command returns an [`exit::Outcome`]; nothing here calls
//! `std::process::exit`, so destructors (closing clients, which cancels what is in flight) run.
//! Data goes to stdout, diagnostics and "ready" lines to stderr, so pipes carry only data.

use clap::{CommandFactory, Parser, Subcommand};

mod args;
mod bench;
mod exit;
mod listen;
mod probe;
mod reply;
mod request;
mod serve;

use exit::{CliError, Outcome};

/// Examples shown under `switchyard --help`, before the exit codes.
const EXAMPLES: &str = "\
Examples:
  switchyard                                   # the broker on 127.0.0.1:7878
  switchyard --listen :7000 --log-level debug  # same as `switchyard serve --listen ...`
  switchyard reply orders --echo &             # a receiver on channel `orders`
  switchyard request orders 'hello'            # prints: hello
  echo hi | switchyard request orders          # the body from stdin
  switchyard listen orders --json              # broadcasts and presence as JSON lines
  switchyard bench --senders 4 --duration 5s   # req/s and latency against a running broker
  switchyard completions bash > /etc/bash_completion.d/switchyard

Client commands read --url from SWITCHYARD_URL and --token from SWITCHYARD_TOKEN.
A CHANNEL is a UUID or a name (a name maps to a UUIDv5, PROTOCOL.md section 5.1).";

/// A low-latency request/reply and broadcast message broker, and its command-line client.
///
/// With no subcommand, runs the broker (`serve`): every setting has a default; an optional TOML
/// file (--config) sets any of them, and flags win over the file. --print-config shows the
/// effective configuration.
#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = format!("{EXAMPLES}\n\n{}", exit::exit_code_help()),
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The broker's flags, when no subcommand is given.
    #[command(flatten, next_help_heading = "Broker options (serve)")]
    serve: serve::ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default when no subcommand is given).
    #[command(after_help = "Examples:\n  \
        switchyard serve --listen :7878              # 127.0.0.1:7878\n  \
        switchyard serve --listen localhost:7878     # the same\n  \
        switchyard serve --listen 0.0.0.0:7878 --auth-token \"$TOKEN\"\n  \
        switchyard serve --config broker.toml --print-config")]
    Serve(Box<serve::ServeArgs>),
    /// Send a request and stream the response to stdout.
    Request(request::RequestArgs),
    /// Serve requests: echo them, answer a fixed body, or run a command per request.
    Reply(reply::ReplyArgs),
    /// Print broadcasts and presence changes on a channel as they come.
    Listen(listen::ListenArgs),
    /// Send a broadcast to every other peer of a channel; prints how many acknowledged.
    Broadcast(listen::BroadcastArgs),
    /// List the other peers on a channel.
    Peers(probe::PeersArgs),
    /// Measure round-trip times to the broker.
    Ping(probe::PingArgs),
    /// Benchmark a running broker: echo receivers and senders on a fresh channel.
    Bench(bench::BenchArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        switchyard completions bash > ~/.local/share/bash-completion/completions/switchyard\n  \
        switchyard completions zsh > ~/.zfunc/_switchyard\n  \
        switchyard completions fish > ~/.config/fish/completions/switchyard.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Runs the command and returns how it ended.
    pub(crate) fn run(self) -> Outcome {
        let command = match self.command {
            None => return serve::run(&self.serve),
            Some(Command::Serve(args)) => return serve::run(&args),
            Some(command) => command,
        };
        // The client library logs reconnects and dropped events; show its warnings, or what
        // RUST_LOG asks for.
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .parse_default_env()
            .init();
        let result = match command {
            Command::Serve(_) => unreachable!("handled above"),
            Command::Request(args) => request::run(&args),
            Command::Reply(args) => reply::run(&args),
            Command::Listen(args) => listen::run_listen(&args),
            Command::Broadcast(args) => listen::run_broadcast(&args),
            Command::Peers(args) => probe::run_peers(&args),
            Command::Ping(args) => probe::run_ping(&args),
            Command::Bench(args) => bench::run(&args),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "switchyard",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(error) => {
                eprintln!("switchyard: {error}");
                error.outcome()
            }
        }
    }
}

/// Writes to stdout, mapping a failure (a closed pipe) to a [`CliError`].
pub(crate) fn write_out(out: &mut impl std::io::Write, bytes: &[u8]) -> Result<(), CliError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|error| CliError::Io {
            doing: "writing to stdout",
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_the_broker_and_a_typo_names_the_real_flag() {
        let cli = Cli::try_parse_from(["switchyard", "--listen", ":7000"]).unwrap();
        assert!(cli.command.is_none());
        let err = Cli::try_parse_from(["switchyard", "--lisen", "x"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
        // Broker flags and a client subcommand do not mix.
        assert!(Cli::try_parse_from(["switchyard", "--listen", ":1", "ping"]).is_err());
    }
}
