//! The values the client commands share: the broker address (`--url`), the token, a channel and
//! durations, each parsed once here with the error a person can act on.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use switchyard::client::{Client, ClientOptions, ReconnectPolicy};
use switchyard::ids::ChannelId;

use super::exit::CliError;

/// The broker's default port (the broker's default `--listen` is `127.0.0.1:7878`).
pub(crate) const DEFAULT_PORT: u16 = 7878;

/// How every client command reaches the broker.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnectArgs {
    /// Broker address: HOST:PORT, tcp://HOST:PORT, localhost:PORT, :PORT (127.0.0.1) or HOST
    /// (port 7878).
    #[arg(
        long,
        env = "SWITCHYARD_URL",
        default_value = "127.0.0.1:7878",
        value_name = "URL"
    )]
    pub(crate) url: BrokerUrl,
    /// Access token sent when joining the channel (the broker's --auth-token or the channel's).
    #[arg(
        long,
        env = "SWITCHYARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,
    /// How long connecting and joining may take, e.g. 5s, 250ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) connect_timeout: Duration,
}

impl ConnectArgs {
    /// Connects to `channel`. One-shot commands pass `reconnect: false`, so a lost connection
    /// ends the command with its exit code instead of a silent retry; the long-running ones
    /// (`reply`, `listen`) reconnect, as a service would.
    ///
    /// # Errors
    /// [`CliError::Client`] naming the address.
    pub(crate) fn connect(&self, channel: ChannelId, reconnect: bool) -> Result<Client, CliError> {
        let options = ClientOptions {
            token: self.token.clone().map(String::into_bytes),
            connect_timeout: self.connect_timeout,
            reconnect: reconnect.then(ReconnectPolicy::default),
            ..ClientOptions::default()
        };
        Client::connect_with(self.url.as_str(), channel, options)
            .map_err(|e| CliError::client(format!("connecting to {}", self.url), e))
    }
}

/// A broker address as `host:port`, ready for `ToSocketAddrs` (which resolves names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokerUrl(String);

impl BrokerUrl {
    /// `host:port`.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BrokerUrl {
    type Err = String;

    /// `tcp://` is the only scheme (TLS is the client library's, not yet the CLI's); a bare
    /// `:PORT` is the loopback, like the broker's `--listen :PORT`; no port means 7878.
    fn from_str(text: &str) -> Result<BrokerUrl, String> {
        let trimmed = text.trim().trim_end_matches('/');
        let rest = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("tcp") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme {scheme:?} in {text:?}: use tcp://HOST:PORT or HOST:PORT"
                ))
            }
            None => trimmed,
        };
        let bad = || {
            format!(
                "{text:?} is not a broker address: expected HOST:PORT, tcp://HOST:PORT or :PORT"
            )
        };
        if rest.is_empty() {
            return Err(bad());
        }
        // A bare IP (IPv6 included) with no port.
        if let Ok(ip) = rest.parse::<std::net::IpAddr>() {
            return Ok(BrokerUrl(
                std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string(),
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // `[::1]:7878` splits at its last colon; `[::1]` alone has its colons inside brackets.
            Some((host, port)) if !port.ends_with(']') => (host, port),
            _ => (rest, ""),
        };
        let port: u16 = if port.is_empty() {
            DEFAULT_PORT
        } else {
            port.parse().map_err(|_| bad())?
        };
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        Ok(BrokerUrl(format!("{host}:{port}")))
    }
}

/// A channel as typed: a UUID, or a name (PROTOCOL.md §5.1, UUIDv5), kept with its text so
/// messages show what the user wrote.
#[derive(Clone, Debug)]
pub(crate) struct ChannelArg {
    /// As typed.
    pub(crate) text: String,
    /// On the wire.
    pub(crate) id: ChannelId,
}

impl FromStr for ChannelArg {
    type Err = String;

    fn from_str(text: &str) -> Result<ChannelArg, String> {
        let id = text
            .parse::<ChannelId>()
            .map_err(|e| format!("{text:?} is not a channel: {e}"))?;
        Ok(ChannelArg {
            text: text.to_owned(),
            id,
        })
    }
}

impl fmt::Display for ChannelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text == self.id.to_string() {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{} ({})", self.text, self.id)
        }
    }
}

/// A duration: a number with `us`, `ms`, `s`, `m` or `h` (`250ms`, `1.5s`, `2m`); a bare number
/// is seconds.
///
/// # Errors
/// A message with the accepted forms.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration: expected e.g. 5s, 250ms, 1.5s, 2m");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A body given as an argument, or read from stdin: when the argument is `-`, or absent and
/// stdin is not a terminal (a pipe or a file). Absent with a terminal is the empty body, so a
/// bare `switchyard request ch` never waits on the keyboard.
#[derive(Debug)]
pub(crate) enum BodySource {
    /// The argument's bytes (or the empty body).
    Given(Vec<u8>),
    /// Standard input.
    Stdin,
}

impl BodySource {
    /// Where the body of a command with optional `BODY` comes from.
    pub(crate) fn from_arg(body: Option<&str>) -> BodySource {
        match body {
            Some("-") => BodySource::Stdin,
            Some(text) => BodySource::Given(text.as_bytes().to_vec()),
            None if std::io::stdin().is_terminal() => BodySource::Given(Vec::new()),
            None => BodySource::Stdin,
        }
    }

    /// The whole body in memory (stdin read to its end).
    ///
    /// # Errors
    /// [`CliError::Io`] when stdin cannot be read.
    pub(crate) fn read_all(self) -> Result<Vec<u8>, CliError> {
        match self {
            BodySource::Given(body) => Ok(body),
            BodySource::Stdin => {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut body).map_err(
                    |error| CliError::Io {
                        doing: "reading the body from stdin",
                        error,
                    },
                )?;
                Ok(body)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_the_usual_forms() {
        let url = |s: &str| s.parse::<BrokerUrl>().map(|u| u.0);
        assert_eq!(url("127.0.0.1:7878").unwrap(), "127.0.0.1:7878");
        assert_eq!(url("tcp://broker.local:9000").unwrap(), "broker.local:9000");
        assert_eq!(url("TCP://localhost:7878/").unwrap(), "localhost:7878");
        assert_eq!(url("localhost:7878").unwrap(), "localhost:7878");
        assert_eq!(url(":7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(url("broker").unwrap(), "broker:7878");
        assert_eq!(url("[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(url("[::1]").unwrap(), "[::1]:7878");
        assert_eq!(url("::1").unwrap(), "[::1]:7878");
        assert!(url("http://x:1").unwrap_err().contains("scheme"));
        assert!(url("host:port").is_err());
        assert!(url("").is_err());
        assert!(url(":99999").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        for bad in ["", "s", "5 parsecs", "-1s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channels_are_uuids_or_names() {
        let named: ChannelArg = "orders".parse().unwrap();
        assert_eq!(named.id.to_string(), "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61");
        assert_eq!(
            named.to_string(),
            "orders (f69ae7c9-cd0a-5ed4-97e2-813bd5200f61)"
        );
        let uuid: ChannelArg = "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61".parse().unwrap();
        assert_eq!(uuid.id, named.id);
        assert!("".parse::<ChannelArg>().is_err());
    }
}
