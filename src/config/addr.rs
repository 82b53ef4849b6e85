//! Listen addresses as people type them: `IP:PORT`, `localhost:PORT` and `:PORT`.
//!
//! `localhost` is taken to mean the IPv4 loopback `127.0.0.1` without asking a resolver: a
//! listen address must be one socket the broker binds, and a resolver may answer `::1` first (or
//! both), which would make the same flag bind different addresses on different machines. `:PORT`
//! is the same loopback, because an address left out should never mean "every interface": the
//! broker refuses a non-loopback listen address without access tokens, and `0.0.0.0:PORT` says
//! that choice out loud. Names other than `localhost` are refused for the same reason as the
//! resolver: the broker binds what it was told, literally.

use serde::{Deserialize, Deserializer};
use std::net::{Ipv4Addr, SocketAddr};

/// What a listen address accepts, in words (for `--help` and errors).
pub(crate) const LISTEN_ADDR_FORMS: &str = "IP:PORT, localhost:PORT or :PORT (both 127.0.0.1)";

/// Parses a listen address: a socket address (`0.0.0.0:7878`, `[::1]:7878`), `localhost:PORT`
/// (any case) or `:PORT`, the last two on `127.0.0.1`.
///
/// # Errors
/// A message naming the accepted forms when `text` is none of them.
pub(crate) fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("{text:?} is not a listen address: expected {LISTEN_ADDR_FORMS}");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// `listen` in the file takes the same forms as the flag.
pub(crate) fn deserialize_listen_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen_addr(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_socket_addresses_localhost_and_a_bare_port() {
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(
            parse_listen_addr("0.0.0.0:9000"),
            Ok("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            parse_listen_addr("[::1]:9000"),
            Ok("[::1]:9000".parse().unwrap())
        );
        assert_eq!(parse_listen_addr("localhost:7878"), Ok(loopback(7878)));
        assert_eq!(parse_listen_addr("LOCALHOST:0"), Ok(loopback(0)));
        assert_eq!(parse_listen_addr(":7878"), Ok(loopback(7878)));
        assert_eq!(parse_listen_addr(" :7878 "), Ok(loopback(7878)));
    }

    #[test]
    fn refuses_other_names_missing_ports_and_bad_ports() {
        for bad in [
            "example.com:7878",
            "localhost",
            "7878",
            ":",
            ":70000",
            "localhost:x",
            "",
        ] {
            let err = parse_listen_addr(bad).unwrap_err();
            assert!(err.contains(":PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_file_takes_the_same_forms_and_print_config_shows_the_address() {
        let path = std::path::Path::new("broker.toml");
        let config = crate::config::BrokerConfig::from_toml("listen = \":7000\"\n", path).unwrap();
        assert_eq!(config.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)));
        assert!(config.to_toml().contains("listen = \"127.0.0.1:7000\""));
        let err = crate::config::BrokerConfig::from_toml("listen = \"nowhere\"\n", path);
        assert!(err.unwrap_err().to_string().contains(":PORT"));
    }
}
