//! The `switchyard` broker binary: configuration, logger, `Server::bind(..)?.run()`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use switchyard::config::{BrokerConfig, Overrides};
use switchyard::server::Server;

/// A low-latency request/reply and broadcast message broker.
///
/// Every setting has a default; an optional TOML file (--config) sets any of them, and flags win
/// over the file. --print-config shows the effective configuration.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match effective_config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::new()
        .filter_level(config.log_filter())
        .parse_default_env()
        .init();
    if !config.has_tokens() {
        log::warn!("no access tokens configured: any client may join any channel");
    }
    let server = match Server::bind(config.server_config()) {
        Ok(server) => server,
        Err(e) => {
            log::error!(
                "cannot listen on {} (TLS: {}, metrics: {}): {e}",
                config.listen,
                config.tls_listen,
                config.metrics_listen
            );
            return ExitCode::FAILURE;
        }
    };
    log::info!("switchyard listening on {}", server.local_addr());
    if let Some(addr) = server.tls_addr() {
        log::info!("switchyard listening for TLS on {addr}");
    }
    match server.metrics_addr() {
        Some(addr) => log::info!("metrics on http://{addr}/metrics"),
        None => log::info!("metrics off"),
    }
    // SIGHUP re-reads the configuration file (flags still win) and applies what can change
    // live: access tokens and admission limits (`Server::reload`).
    let reload = || match &args.config {
        None => Ok(None),
        Some(_) => effective_config(&args)
            .map(|config| Some(config.server_config()))
            .map_err(|e| e.to_string()),
    };
    match server.run_with_reload(reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("poll loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn effective_config(args: &Args) -> Result<BrokerConfig, switchyard::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_file(path)?,
        None => BrokerConfig::default(),
    };
    config.apply(&args.overrides);
    config.validate()?;
    Ok(config)
}
