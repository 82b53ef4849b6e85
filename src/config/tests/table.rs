//! The table of settings: its invariants, every key in --help and README.md, flags as clap
//! parses them, sizes with units, and tokens in printed configurations.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;

use crate::config::*;
use crate::server::ServerConfig;

/// The binary's flags as `main.rs` declares them (flattened overrides).
#[derive(clap::Parser, Debug)]
struct Flags {
    #[command(flatten)]
    overrides: Overrides,
}

fn flags(args: &[&str]) -> Result<Overrides, clap::Error> {
    Flags::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
        .map(|f| f.overrides)
}

#[test]
fn the_table_names_earlier_numeric_keys_in_its_ranges() {
    let config = BrokerConfig::default();
    for (i, (key, accepted)) in BrokerConfig::KEYS.iter().enumerate() {
        if let Some(other) = accepted.depends_on() {
            let earlier = BrokerConfig::KEYS[..i].iter().any(|(k, _)| *k == other);
            assert!(
                earlier,
                "`{key}` names `{other}`, which is not an earlier key"
            );
            assert!(config.number(other).is_some(), "`{other}` is not a number");
        }
    }
}

#[test]
fn the_defaults_map_onto_exactly_the_server_defaults() {
    // The one default of the binary that is not the library's: the metrics endpoint.
    let expected = ServerConfig {
        metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().unwrap()),
        ..ServerConfig::default()
    };
    assert_eq!(
        format!("{:?}", BrokerConfig::default().server_config()),
        format!("{expected:?}")
    );
}

#[test]
fn every_key_is_a_flag_with_its_default_and_range_in_help_and_a_row_in_the_readme() {
    use clap::CommandFactory;
    let help = Flags::command().render_long_help().to_string();
    let readme = include_str!("../../../README.md");
    for (key, _) in BrokerConfig::KEYS {
        let flag = match *key {
            "channel_tokens" => String::from("--channel-token"),
            key => format!("--{}", key.replace('_', "-")),
        };
        let start = [format!("  {flag} "), format!("  {flag}\n")]
            .iter()
            .find_map(|f| help.find(f.as_str()))
            .unwrap_or_else(|| panic!("no {flag} in --help:\n{help}"));
        let line = &help[start..];
        let line = &line[..line.find("\n\n").unwrap_or(line.len())];
        assert!(
            line.contains("[default: ") && line.contains("accepted: "),
            "{line}"
        );
        let row = |k: String| {
            readme.contains(&format!("| `{k}` /")) || readme.contains(&format!("| `{k}` |"))
        };
        assert!(
            row(key.to_string()) || row(format!("[{key}]")),
            "README.md's table lacks `{key}`"
        );
    }
    assert!(
        help.contains("[default: 1MiB; accepted: 1 ..= 16MiB]"),
        "{help}"
    );
    assert!(help.contains("accepted: 1 ..= max-timeout-ms]"), "{help}");
}

#[test]
fn sizes_accept_units_in_the_file_and_as_flags() {
    for (text, bytes) in [
        ("4096", 4096),
        ("64KiB", 64 << 10),
        ("1 MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("512B", 512),
        ("0", 0),
    ] {
        assert_eq!(text.parse::<Size>(), Ok(Size(bytes)), "{text}");
    }
    for bad in [
        "",
        "1TiB",
        "1.5MiB",
        "1MB",
        "1 k",
        "-1",
        "MiB",
        "99999999999999999999GiB",
    ] {
        assert!(bad.parse::<Size>().is_err(), "{bad:?} parsed");
    }
    assert!("18446744073709551615GiB"
        .parse::<Size>()
        .unwrap_err()
        .contains("too large"));
    // Display uses the largest exact unit, and parses back.
    for size in [
        Size(0),
        Size(1000),
        Size(4096),
        Size::mib(3),
        Size(1536),
        Size::gib(1),
    ] {
        assert_eq!(size.to_string().parse::<Size>(), Ok(size));
    }
    assert_eq!(Size(1536).to_string(), "1536");
    assert_eq!(Size(3 << 10).to_string(), "3KiB");

    let path = Path::new("x");
    let config = BrokerConfig::from_toml(
        "max_payload = \"64KiB\"\nread_budget_bytes = 8192\nhigh_watermark_bytes = \"8 MiB\"\n",
        path,
    )
    .unwrap();
    assert_eq!(config.max_payload, Size::kib(64));
    assert_eq!(config.read_budget_bytes, Size(8192));
    assert_eq!(config.server_config().router.high_watermark, 8 << 20);
    let err = BrokerConfig::from_toml("max_payload = \"lots\"\n", path).unwrap_err();
    assert!(
        err.to_string().contains("max_payload") && err.to_string().contains("lots"),
        "{err}"
    );
    let err = BrokerConfig::from_toml("max_payload = -1\n", path).unwrap_err();
    assert!(err.to_string().contains("max_payload"), "{err}");

    let overrides = flags(&["--max-payload", "1MiB", "--write-budget-bytes", "65536"]).unwrap();
    assert_eq!(overrides.max_payload, Some(Size::mib(1)));
    assert_eq!(overrides.write_budget_bytes, Some(Size::kib(64)));
    let err = flags(&["--max-payload", "1TiB"]).unwrap_err().to_string();
    assert!(
        err.contains("--max-payload") && err.contains("1TiB"),
        "{err}"
    );

    // Ranges are checked in bytes, whatever the unit, and printed in bytes.
    let err = BrokerConfig {
        max_payload: Size::mib(17),
        ..BrokerConfig::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("invalid value 17825792 for `max_payload`") && err.contains("1 ..= 16777216"),
        "{err}"
    );
}

#[test]
fn flags_parse_into_overrides_that_win_over_the_file() {
    let ch1 = "6f1c1a52-35b1-4b8e-9c5e-2f0a9d3c7e11";
    let ch2 = "0b7f0ab5-8d3a-4c52-a3c9-9d0f1e6b2a44";
    let overrides = flags(&[
        "--listen",
        "127.0.0.1:9000",
        "--heartbeat-misses",
        "7",
        "--allow-unauthenticated",
        "--channel-token",
        &format!("{ch1}=one"),
        "--channel-token",
        &format!("{ch2}=two"),
        "--tls-cert",
        "broker.crt",
    ])
    .unwrap();
    assert_eq!(overrides.heartbeat_misses, Some(7));
    assert_eq!(overrides.allow_unauthenticated, Some(true));
    assert_eq!(overrides.tls_cert, Some(Some("broker.crt".into())));
    assert_eq!(overrides.max_payload, None);
    assert!(flags(&[]).unwrap().allow_unauthenticated.is_none());

    let mut config = BrokerConfig::from_toml(
        &format!(
            "heartbeat_misses = 2\nmax_channels = 9\n[channel_tokens]\n\"{ch1}\" = \"file\"\n"
        ),
        Path::new("x"),
    )
    .unwrap();
    config.apply(&overrides);
    assert_eq!(config.heartbeat_misses, 7);
    assert_eq!(config.max_channels, 9);
    assert!(config.allow_unauthenticated);
    assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
    // A channel token flag replaces that channel's and adds the others.
    assert_eq!(config.channel_tokens.len(), 2);
    assert!(config.channel_tokens[ch1].matches(b"one"));

    let err = flags(&["--heartbeat-misses", "many"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--heartbeat-misses"), "{err}");
}

#[test]
fn every_documented_range_is_enforced() {
    // These four were documented (README, --help) but not checked before the table.
    let refused = |config: BrokerConfig, key: &str, range: &str| {
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(range),
            "{err}"
        );
    };
    let base = BrokerConfig::default();
    refused(
        BrokerConfig {
            heartbeat_interval_ms: 5,
            ..base.clone()
        },
        "heartbeat_interval_ms",
        "0 (off) or 10 ..= 3600000",
    );
    BrokerConfig {
        heartbeat_interval_ms: 0,
        ..base.clone()
    }
    .validate()
    .unwrap();
    BrokerConfig {
        heartbeat_interval_ms: 10,
        ..base.clone()
    }
    .validate()
    .unwrap();
    refused(
        BrokerConfig {
            heartbeat_misses: 0,
            ..base.clone()
        },
        "heartbeat_misses",
        "1 ..= 100",
    );
    refused(
        BrokerConfig {
            presence_grace_ms: 600_001,
            ..base.clone()
        },
        "presence_grace_ms",
        "0 ..= 600000",
    );
    refused(
        BrokerConfig {
            drain_deadline_ms: 600_001,
            ..base.clone()
        },
        "drain_deadline_ms",
        "0 ..= 600000",
    );
    // A range that names another key uses that key's value.
    refused(
        BrokerConfig {
            max_timeout_ms: 1000,
            ..base.clone()
        },
        "default_timeout_ms",
        "1 ..= 1000",
    );
    refused(
        BrokerConfig {
            max_connections: 10,
            ..base
        },
        "max_connections_per_ip",
        "1 ..= 10",
    );
}

#[test]
fn printed_tokens_are_comments_and_the_placeholder_is_refused_as_a_token() {
    let ch = "6f1c1a52-35b1-4b8e-9c5e-2f0a9d3c7e11";
    let config = BrokerConfig {
        listen: "0.0.0.0:7878".parse().unwrap(),
        auth_token: Some("broker-secret".parse().unwrap()),
        channel_tokens: BTreeMap::from([(ch.to_owned(), "channel-secret".parse().unwrap())]),
        ..BrokerConfig::default()
    };
    config.validate().unwrap();
    let printed = config.to_toml();
    assert!(!printed.contains("secret"), "{printed}");
    assert!(
        printed.contains("# auth_token = \"<redacted>\""),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("# \"{ch}\" = \"<redacted>\"")),
        "{printed}"
    );

    // Fed back: the same configuration without tokens, which beyond loopback is refused.
    let back = BrokerConfig::from_toml(&printed, Path::new("x")).unwrap();
    assert_eq!(
        back,
        BrokerConfig {
            auth_token: None,
            channel_tokens: BTreeMap::new(),
            ..config.clone()
        }
    );
    assert!(matches!(
        back.validate(),
        Err(ConfigError::Unauthenticated { .. })
    ));

    // Uncommented without the real token: refused, naming the key.
    let uncommented = printed.replace("# auth_token", "auth_token");
    let err = BrokerConfig::from_toml(&uncommented, Path::new("x"))
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::RedactedToken { key: "auth_token" }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("`auth_token`") && err.to_string().contains("real token"),
        "{err}"
    );
    let uncommented = printed
        .replace("# [channel_tokens]", "[channel_tokens]")
        .replace(&format!("# \"{ch}\""), &format!("\"{ch}\""));
    let err = BrokerConfig::from_toml(&uncommented, Path::new("x"))
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::RedactedToken {
                key: "channel_tokens"
            }
        ),
        "{err:?}"
    );
    // The flag too.
    let err = flags(&["--auth-token", "<redacted>"]).map(|o| {
        let mut c = BrokerConfig::default();
        c.apply(&o);
        c.validate()
    });
    assert!(
        matches!(err, Ok(Err(ConfigError::RedactedToken { .. }))),
        "{err:?}"
    );

    // Without tokens there is no note.
    assert!(!BrokerConfig::default().to_toml().contains('#'));
}
