//! `switchyard serve` (and `switchyard` with no subcommand): the broker. Configuration, logger,
//! `Server::bind(..)?.run_with_reload(..)` (SIGHUP re-reads `--config`).

use clap::Args;
use std::path::PathBuf;

use switchyard::config::{BrokerConfig, ConfigError, Overrides};
use switchyard::server::Server;

use super::exit::Outcome;

/// The broker's flags: every setting has a default; an optional TOML file (--config) sets any
/// of them, and flags win over the file.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// Runs the broker until its poll loop ends (a signal drains it).
pub(crate) fn run(args: &ServeArgs) -> Outcome {
    let config = match effective_config(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return Outcome::Usage;
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return Outcome::Ok;
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
            return Outcome::Failure;
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
        Some(_) => effective_config(args)
            .map(|config| Some(config.server_config()))
            .map_err(|e| e.to_string()),
    };
    match server.run_with_reload(reload) {
        Ok(()) => Outcome::Ok,
        Err(e) => {
            log::error!("poll loop failed: {e}");
            Outcome::Failure
        }
    }
}

fn effective_config(args: &ServeArgs) -> Result<BrokerConfig, ConfigError> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_file(path)?,
        None => BrokerConfig::default(),
    };
    config.apply(&args.overrides);
    config.validate()?;
    Ok(config)
}
