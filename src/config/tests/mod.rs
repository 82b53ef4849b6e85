//! The configuration's unit tests: the layers (defaults, file, flags), validation messages and
//! printing; `table.rs` tests the table itself (its invariants, --help, the flags as clap parses
//! them, sizes with units, printed tokens).

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use super::*;

mod table;
#[test]
fn a_channel_token_flag_parses_and_never_prints_its_token() {
    let flag: ChannelToken = "00000000-0000-0000-0000-000000000001=hunter2"
        .parse()
        .unwrap();
    assert!(!format!("{flag:?}").contains("hunter2"));
    assert!("no-equals".parse::<ChannelToken>().is_err());
}

#[test]
fn defaults_are_valid_and_match_the_server_defaults() {
    let config = BrokerConfig::default();
    config.validate().unwrap();
    let server = config.server_config();
    let expected = ServerConfig::default();
    assert_eq!(server.listen, expected.listen);
    assert_eq!(server.router.max_payload, expected.router.max_payload);
    assert_eq!(server.router.high_watermark, expected.router.high_watermark);
    assert_eq!(server.read_budget, expected.read_budget);
    assert_eq!(server.max_connections, expected.max_connections);
    assert_eq!(
        server.max_connections_per_ip,
        expected.max_connections_per_ip
    );
    assert_eq!(server.router.max_channels, expected.router.max_channels);
    assert_eq!(
        server.router.max_peers_per_channel,
        expected.router.max_peers_per_channel
    );
    assert_eq!(
        server.router.max_in_flight_per_connection,
        expected.router.max_in_flight_per_connection
    );
    assert_eq!(
        server.router.handshake_timeout,
        expected.router.handshake_timeout
    );
}

#[test]
fn resource_limits_are_keys_and_flags_with_ranges() {
    let mut config = BrokerConfig::from_toml(
        "max_connections = 50\nmax_channels = 7\nhandshake_timeout_ms = 0\n",
        Path::new("x"),
    )
    .unwrap();
    config.apply(&Overrides {
        max_connections_per_ip: Some(5),
        max_peers_per_channel: Some(3),
        max_in_flight_per_connection: Some(2),
        ..Overrides::default()
    });
    config.validate().unwrap();
    let server = config.server_config();
    assert_eq!(
        (server.max_connections, server.max_connections_per_ip),
        (50, 5)
    );
    assert_eq!(server.router.max_channels, 7);
    assert_eq!(server.router.max_peers_per_channel, 3);
    assert_eq!(server.router.max_in_flight_per_connection, 2);
    assert!(server.router.handshake_timeout.is_zero());

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
            max_connections: 0,
            ..base.clone()
        },
        "max_connections",
        "1 ..= 1000000",
    );
    refused(
        BrokerConfig {
            max_connections_per_ip: 20_000,
            ..base.clone()
        },
        "max_connections_per_ip",
        "1 ..= 10000",
    );
    refused(
        BrokerConfig {
            max_channels: 0,
            ..base.clone()
        },
        "max_channels",
        "1 ..= 10000000",
    );
    refused(
        BrokerConfig {
            max_peers_per_channel: 70_000,
            ..base.clone()
        },
        "max_peers_per_channel",
        "1 ..= 65534",
    );
    refused(
        BrokerConfig {
            max_in_flight_per_connection: 0,
            ..base.clone()
        },
        "max_in_flight_per_connection",
        "1 ..= 1000000",
    );
    refused(
        BrokerConfig {
            handshake_timeout_ms: 3_600_001,
            ..base
        },
        "handshake_timeout_ms",
        "0 ..= 3600000",
    );
}

#[test]
fn a_partial_file_keeps_the_other_defaults_and_flags_win() {
    let path = Path::new("test.toml");
    let mut config = BrokerConfig::from_toml(
        "max_payload = 4096\nlisten = \"127.0.0.1:9000\"\nmax_peers_per_channel = 200\n",
        path,
    )
    .unwrap();
    assert_eq!(config.max_payload, Size(4096));
    assert_eq!(config.default_timeout_ms, 30_000);
    config.apply(&Overrides {
        max_payload: Some(Size(8192)),
        ..Overrides::default()
    });
    assert_eq!(config.max_payload, Size(8192));
    assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
    config.validate().unwrap();
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_the_key_named() {
    let path = Path::new("bad.toml");
    let err = BrokerConfig::from_toml("max_paylod = 1\n", path).unwrap_err();
    assert!(err.to_string().contains("max_paylod"), "{err}");
    let err = BrokerConfig::from_toml("max_payload = \"big\"\n", path).unwrap_err();
    assert!(err.to_string().contains("max_payload"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key_and_the_range() {
    let mut config = BrokerConfig {
        max_payload: Size(0),
        ..BrokerConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("`max_payload`") && err.contains("1 ..= 16777216"),
        "{err}"
    );

    config = BrokerConfig {
        low_watermark_bytes: Size::mib(5),
        ..BrokerConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("low_watermark_bytes") && err.contains("0 ..= 4194303"),
        "{err}"
    );

    config = BrokerConfig {
        default_timeout_ms: 7_200_000,
        ..BrokerConfig::default()
    };
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("default_timeout_ms"));

    config = BrokerConfig {
        log_level: "loud".into(),
        ..BrokerConfig::default()
    };
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("log_level"));
}

/// Every peer list fits in one frame: `max_peers_per_channel ≤ (max_payload − 84) / 16 + 1`.
#[test]
fn max_peers_per_channel_is_bounded_by_what_one_frame_lists() {
    let small = |max_peers| BrokerConfig {
        max_payload: Size(1024),
        max_peers_per_channel: max_peers,
        ..BrokerConfig::default()
    };
    // (1024 - 84) / 16 + 1 = 59.
    assert!(small(59).validate().is_ok());
    let err = small(60).validate().unwrap_err().to_string();
    assert!(
        err.contains("max_peers_per_channel") && err.contains("1 ..= 59 with max_payload 1024"),
        "{err}"
    );
    // The default peer limit needs 84 + 16 × 9 999 = 160 068 bytes.
    let err = BrokerConfig {
        max_payload: Size(1024),
        ..BrokerConfig::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_peers_per_channel"), "{err}");
    let err = BrokerConfig {
        max_payload: Size(83),
        max_peers_per_channel: 1,
        ..BrokerConfig::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("at least 84 bytes"), "{err}");
}

#[test]
fn metrics_listen_is_an_address_or_off() {
    let config = BrokerConfig::default();
    assert_eq!(
        config.server_config().metrics_listen,
        Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
    );
    let mut config = BrokerConfig::from_toml("metrics_listen = \"off\"\n", Path::new("x")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.server_config().metrics_listen, None);
    config.apply(&Overrides {
        metrics_listen: Some("0.0.0.0:9100".into()),
        ..Overrides::default()
    });
    assert_eq!(
        config.server_config().metrics_listen,
        Some("0.0.0.0:9100".parse().unwrap())
    );
    config.metrics_listen = "localhost".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("metrics_listen") && err.contains("off"),
        "{err}"
    );
}

#[test]
fn tokens_come_from_the_file_and_flags_and_never_print() {
    let ch = "6f1c1a52-35b1-4b8e-9c5e-2f0a9d3c7e11";
    let mut config = BrokerConfig::from_toml(
        &format!("auth_token = \"broker-secret\"\n[channel_tokens]\n\"{ch}\" = \"file-secret\"\n"),
        Path::new("x"),
    )
    .unwrap();
    config.validate().unwrap();
    let other = "0b7f0ab5-8d3a-4c52-a3c9-9d0f1e6b2a44";
    config.apply(&Overrides {
        channel_tokens: Some(BTreeMap::from([(
            other.to_owned(),
            "flag-secret".parse().unwrap(),
        )])),
        ..Overrides::default()
    });
    config.validate().unwrap();
    let tokens = config.server_config().router.tokens;
    let id = |s: &str| ChannelId(Uuid::parse_str(s).unwrap());
    assert!(tokens.admits(id(ch), b"file-secret") && !tokens.admits(id(ch), b"broker-secret"));
    assert!(tokens.admits(id(other), b"flag-secret"));
    assert!(tokens.admits(ChannelId::random(), b"broker-secret"));
    assert!(!tokens.admits(ChannelId::random(), b""));

    for shown in [
        config.to_toml(),
        format!("{config:?}"),
        format!("{:?}", config.server_config()),
    ] {
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

#[test]
fn no_tokens_beyond_loopback_needs_allow_unauthenticated() {
    let mut config = BrokerConfig {
        listen: "0.0.0.0:7878".parse().unwrap(),
        ..BrokerConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("`allow_unauthenticated = true`") && err.contains("0.0.0.0:7878"),
        "{err}"
    );
    config.allow_unauthenticated = true;
    config.validate().unwrap();
    config.allow_unauthenticated = false;
    config.auth_token = Some("t".parse().unwrap());
    config.validate().unwrap();
    config.auth_token = Some(AccessToken::new(Vec::new()));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("`auth_token`"), "{err}");
    config.auth_token = None;
    config
        .channel_tokens
        .insert("nope".into(), "hidden".parse().unwrap());
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("`channel_tokens`") && !err.contains("hidden"),
        "{err}"
    );
    // Loopback needs no token (the default).
    BrokerConfig::default().validate().unwrap();
}

#[test]
fn tls_needs_the_listener_and_both_files_and_errors_name_the_key_or_file() {
    use switchyard_testkit::Scratch;
    let dir = Scratch::new("config");
    let (cert, key) = dir.self_signed("broker");
    let (_, other_key) = dir.self_signed("other");
    let on = |cert: Option<&Path>, key: Option<&Path>| BrokerConfig {
        tls_listen: "127.0.0.1:0".into(),
        tls_cert: cert.map(Path::to_owned),
        tls_key: key.map(Path::to_owned),
        ..BrokerConfig::default()
    };
    let message = |config: BrokerConfig| config.validate().unwrap_err().to_string();

    // Off by default: no TLS listener.
    assert_eq!(BrokerConfig::default().server_config().tls, None);

    // The pieces must come together.
    let err = message(on(None, Some(&key)));
    assert!(err.contains("`tls_cert` (--tls-cert) is required"), "{err}");
    let err = message(on(Some(&cert), None));
    assert!(err.contains("`tls_key` (--tls-key) is required"), "{err}");
    let err = message(BrokerConfig {
        tls_key: Some(key.clone()),
        ..BrokerConfig::default()
    });
    assert!(
        err.contains("`tls_key`") && err.contains("`tls_listen` is off"),
        "{err}"
    );
    let err = message(BrokerConfig {
        tls_cert: Some(cert.clone()),
        ..BrokerConfig::default()
    });
    assert!(
        err.contains("`tls_cert`") && err.contains("`tls_listen` is off"),
        "{err}"
    );
    let err = message(BrokerConfig {
        tls_listen: "port 7443".into(),
        ..on(Some(&cert), Some(&key))
    });
    assert!(err.contains("`tls_listen`") && err.contains("off"), "{err}");

    // The files are read at validation, and the errors name them.
    let missing = dir.0.join("missing.crt");
    let err = on(Some(&missing), Some(&key)).validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Tls(TlsConfigError::Read { path, .. }) if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.crt"), "{err}");
    let err = on(Some(&key), Some(&key)).validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Tls(TlsConfigError::NoCertificate { path }) if *path == key),
        "{err:?}"
    );
    let err = on(Some(&cert), Some(&cert)).validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Tls(TlsConfigError::NoKey { path }) if *path == cert),
        "{err:?}"
    );
    let err = on(Some(&cert), Some(&other_key)).validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Tls(TlsConfigError::KeyMismatch { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("other.key") && err.to_string().contains("broker.crt"),
        "{err}"
    );

    // Flags set the same keys; a good pair is a TLS listener; print-config shows it.
    let mut config = BrokerConfig::default();
    config.apply(&Overrides {
        tls_listen: Some("127.0.0.1:7443".into()),
        tls_cert: Some(Some(cert.clone())),
        tls_key: Some(Some(key.clone())),
        ..Overrides::default()
    });
    config.validate().unwrap();
    let tls = config.server_config().tls.expect("a TLS listener");
    assert_eq!(tls.listen, "127.0.0.1:7443".parse().unwrap());
    assert_eq!((tls.cert_path, tls.key_path), (cert.clone(), key.clone()));
    let printed = config.to_toml();
    assert!(
        printed.contains("tls_listen = \"127.0.0.1:7443\""),
        "{printed}"
    );
    assert!(printed.contains("tls_cert = "), "{printed}");
    assert_eq!(
        BrokerConfig::from_toml(&printed, Path::new("x")).unwrap(),
        config
    );
    assert!(BrokerConfig::default()
        .to_toml()
        .contains("tls_listen = \"off\""));

    // A TLS listener beyond loopback needs tokens like the plain one.
    let err = message(BrokerConfig {
        tls_listen: "0.0.0.0:7443".into(),
        ..on(Some(&cert), Some(&key))
    });
    assert!(err.contains("0.0.0.0:7443"), "{err}");
}

#[test]
fn printed_config_parses_back_to_the_same() {
    let config = BrokerConfig {
        max_waiting_per_channel: 17,
        ..BrokerConfig::default()
    };
    let printed = config.to_toml();
    assert!(
        printed.contains("max_waiting_per_channel = 17"),
        "{printed}"
    );
    assert_eq!(
        BrokerConfig::from_toml(&printed, Path::new("x")).unwrap(),
        config
    );
}
