//! The `switchyard` broker binary: flags, logger, `Server::bind(..)?.run()`.

use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use switchyard::protocol::MAX_PAYLOAD_CEILING;
use switchyard::server::{Server, ServerConfig};

/// A low-latency request/reply and broadcast message broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Largest payload of one frame, in bytes (at most 16 MiB).
    #[arg(long, default_value_t = switchyard::protocol::DEFAULT_MAX_PAYLOAD,
          value_parser = clap::value_parser!(u32).range(1..=MAX_PAYLOAD_CEILING as i64))]
    max_payload: u32,
    /// Timeout of a request that does not name one, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    default_timeout_ms: u64,
    /// Log level: error, warn, info, debug or trace (RUST_LOG, when set, wins).
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .parse_default_env()
        .init();
    let mut config = ServerConfig {
        listen: args.listen,
        ..ServerConfig::default()
    };
    config.router.max_payload = args.max_payload;
    config.router.default_timeout = Duration::from_millis(args.default_timeout_ms);
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    log::info!("switchyard listening on {}", server.local_addr());
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("poll loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
