//! Access tokens over real sockets: the HELLO's payload is the token; a missing or wrong one gets
//! ERROR UNAUTHORIZED and the connection is closed, unseen by the channel's peers. And the
//! binary's refusal to listen beyond loopback with no token configured.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_testkit::{
    broker::{config, start_with},
    gauges::wait_idle,
    raw::RawPeer,
};

use hashbrown::HashMap;
use switchyard::auth::{AccessToken, Tokens};
use switchyard::client::{Client, ClientOptions, Error};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{ErrorCode, FrameType, Header};
use switchyard::server::ServerHandle;

fn broker(broker_token: Option<&str>, channels: &[(ChannelId, &str)]) -> ServerHandle {
    let mut config = config();
    config.router.tokens = Tokens {
        broker: broker_token.map(|t| AccessToken::new(t.as_bytes())),
        channels: channels
            .iter()
            .map(|(ch, t)| (*ch, AccessToken::new(t.as_bytes())))
            .collect::<HashMap<_, _>>(),
    };
    start_with(config)
}

fn send_hello(peer: &mut RawPeer, channel: ChannelId, client: ClientId, token: &[u8]) {
    let header = Header {
        client_id: client,
        channel_id: channel,
        ..Header::new(FrameType::Hello)
    };
    peer.send(header, token);
}

fn options(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(|t| t.as_bytes().to_vec()),
        reconnect: None,
        ..ClientOptions::default()
    }
}

#[track_caller]
fn expect_unauthorized(result: Result<Client, Error>) {
    match result {
        Err(e @ Error::Unauthorized) => {
            assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
            assert!(e.is_connection_fatal());
        }
        Err(other) => panic!("expected UNAUTHORIZED, got {other}"),
        Ok(_) => panic!("expected UNAUTHORIZED, the client joined"),
    }
}

#[test]
fn right_token_joins_wrong_or_missing_token_is_refused_unseen() {
    let handle = broker(Some("open sesame"), &[]);
    let addr = handle.local_addr();
    let channel = ChannelId::random();

    let mut observer = RawPeer::named(addr, "observer");
    send_hello(&mut observer, channel, ClientId::random(), b"open sesame");
    let welcome = observer.recv_kind(FrameType::Welcome, false);
    observer.channel = channel;
    observer.client = welcome.header.client_id;

    for (name, token) in [
        ("missing", &b""[..]),
        ("wrong", b"open sesamE"),
        ("longer", b"open sesame and more"),
        ("raw bytes", b"\x00\xff"),
    ] {
        let mut intruder = RawPeer::named(addr, name);
        send_hello(&mut intruder, channel, ClientId::random(), token);
        let body = intruder.expect_fatal(ErrorCode::Unauthorized);
        assert_eq!(body.message, "access token missing or wrong");
        assert!(body.peers.is_empty());
    }
    // A channel nobody is on gets the same answer, word for word.
    let mut prober = RawPeer::named(addr, "prober");
    send_hello(&mut prober, ChannelId::random(), ClientId::random(), b"x");
    let body = prober.expect_fatal(ErrorCode::Unauthorized);
    assert_eq!(body.message, "access token missing or wrong");
    // The observer saw no presence event: its inbox is empty.
    observer.barrier();

    // The client library sends its token in the HELLO.
    let client = Client::connect_with(addr, channel, options(Some("open sesame"))).unwrap();
    observer.expect_presence(FrameType::PeerJoined, client.client_id());
    expect_unauthorized(Client::connect_with(addr, channel, options(None)));
    expect_unauthorized(Client::connect_with(addr, channel, options(Some("guess"))));
    observer.barrier();

    drop(client);
    drop(observer);
    let stats = wait_idle(&handle);
    assert!(stats.router.handshake_failures >= 7, "{stats:?}");
}

#[test]
fn a_channel_token_overrides_the_broker_token() {
    let private = ChannelId::random();
    let public = ChannelId::random();
    let handle = broker(Some("everyone"), &[(private, "insiders")]);
    let addr = handle.local_addr();

    expect_unauthorized(Client::connect_with(
        addr,
        private,
        options(Some("everyone")),
    ));
    let insider = Client::connect_with(addr, private, options(Some("insiders"))).unwrap();
    expect_unauthorized(Client::connect_with(
        addr,
        public,
        options(Some("insiders")),
    ));
    let outsider = Client::connect_with(addr, public, options(Some("everyone"))).unwrap();

    drop(insider);
    drop(outsider);
    wait_idle(&handle);
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[test]
fn the_binary_refuses_a_non_loopback_listen_without_tokens_unless_allowed() {
    let out = binary()
        .args(["--listen", "0.0.0.0:0", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow_unauthenticated") && stderr.contains("no access tokens"),
        "{stderr}"
    );

    // Allowed explicitly, or with a token: the configuration is accepted.
    let out = binary()
        .args([
            "--listen",
            "0.0.0.0:0",
            "--allow-unauthenticated",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("allow_unauthenticated = true"));

    let channel = ChannelId::random();
    let out = binary()
        .args(["--listen", "0.0.0.0:0", "--print-config"])
        .args(["--auth-token", "hunter2-broker"])
        .args(["--channel-token", &format!("{channel}=hunter2-channel")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains("hunter2"),
        "a token was printed: {printed}"
    );
    assert!(printed.contains("auth_token = \"<redacted>\""), "{printed}");
    assert!(printed.contains(&channel.to_string()), "{printed}");

    // A bad channel key is named.
    let out = binary()
        .args(["--channel-token", "not-a-uuid=secret", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("channel_tokens") && !stderr.contains("secret"),
        "{stderr}"
    );
}

#[test]
fn the_binary_warns_at_start_up_without_tokens() {
    let mut child = binary()
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let found =
                    line.contains("no access tokens configured: any client may join any channel");
                seen.push(line);
                if found {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(warned, "no warning in {seen:?}");
}
