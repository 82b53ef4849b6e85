//! The `switchyard` command-line client as processes against a broker process: request/reply
//! in every answer mode, bodies from arguments and stdin, the exit code of each failure,
//! listen/broadcast/peers/ping, completions, bench, and the broker's own flags (`--listen
//! :PORT`, a mistyped flag). Synchronisation is on output lines with deadlines, never sleeps.

mod cli_support;

use cli_support::{free_port, run, Broker, Proc};

/// `reply` prints this to stderr once its receive window is set.
const REPLYING: &str = "switchyard: replying on";

fn start_reply(broker: &Broker, args: &[&str]) -> Proc {
    let reply = broker.start_cli(args);
    reply.wait_stderr(REPLYING);
    reply
}

#[test]
fn request_reply_through_echo_body_and_commands() {
    let broker = Broker::start(&[]);

    // Echo (the default), the body from the argument and from stdin; --count on the replier.
    let reply = start_reply(&broker, &["reply", "cli-echo", "--echo", "--count", "2"]);
    let out = broker.run(&["request", "cli-echo", "hello"], b"");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hello"),
        "{out:?}"
    );
    let out = broker.run(&["request", "cli-echo"], b"from stdin\n");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "from stdin\n"),
        "{out:?}"
    );
    assert!(reply.wait_exit().success(), "reply --count 2 exits 0");

    // A fixed body.
    let reply = start_reply(
        &broker,
        &["reply", "cli-body", "--body", "pong", "--count", "1"],
    );
    let out = broker.run(&["request", "cli-body", "ping"], b"");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "pong"),
        "{out:?}"
    );
    assert!(reply.wait_exit().success());

    // A command per request, and --count on the sender (responses kept apart by newlines).
    let reply = start_reply(
        &broker,
        &[
            "reply",
            "cli-tr",
            "--command",
            "tr a-z A-Z",
            "--window",
            "4",
            "--count",
            "3",
        ],
    );
    let out = broker.run(&["request", "cli-tr", "abc", "--count", "3"], b"");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "ABC\nABC\nABC\n"),
        "{out:?}"
    );
    assert!(reply.wait_exit().success());

    // `cat` with a larger body streamed from stdin (several frames with a small max payload
    // would need a broker flag; 200 KiB is several 64 KiB reads either way).
    let reply = start_reply(
        &broker,
        &["reply", "cli-cat", "--command", "cat", "--count", "1"],
    );
    let body: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let out = broker.run(&["request", "cli-cat", "-"], &body);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.as_bytes(), body.as_slice());
    assert!(reply.wait_exit().success());
}

#[test]
fn exit_codes_name_the_outcome() {
    let broker = Broker::start(&[]);

    // 5: nobody serves the channel.
    let out = broker.run(&["request", "cli-nobody", "x", "--no-wait"], b"");
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stderr.contains("no receiver"), "{out:?}");

    // 8: the replier's command failed, so it cancelled the request.
    let _reply = start_reply(&broker, &["reply", "cli-fail", "--command", "exit 3"]);
    let out = broker.run(&["request", "cli-fail", "x"], b"");
    assert_eq!(out.code, Some(8), "{out:?}");

    // 6: the receiver takes the request and does not answer in time.
    let _slow = start_reply(&broker, &["reply", "cli-slow", "--command", "sleep 3"]);
    let out = broker.run(&["request", "cli-slow", "x", "--timeout", "300ms"], b"");
    assert_eq!(out.code, Some(6), "{out:?}");

    // 3: nothing listens at the address.
    let url = format!("127.0.0.1:{}", free_port());
    let out = run(&["ping", "--url", &url], &[], b"");
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stderr.contains(&url),
        "the message names the address: {out:?}"
    );

    // 9: a broadcast with nobody else on the channel.
    let out = broker.run(&["broadcast", "cli-alone", "x"], b"");
    assert_eq!(out.code, Some(9), "{out:?}");
}

#[test]
fn a_missing_or_wrong_token_exits_unauthorized() {
    let broker = Broker::start(&["--auth-token", "s3cret"]);
    let out = broker.run(&["request", "cli-auth", "x", "--no-wait"], b"");
    assert_eq!(out.code, Some(4), "no token: {out:?}");
    let out = broker.run_env(
        &["request", "cli-auth", "x", "--no-wait"],
        &[("SWITCHYARD_TOKEN", "wrong")],
        b"",
    );
    assert_eq!(out.code, Some(4), "wrong token: {out:?}");
    // The right one, from the environment and as a flag, gets past the handshake.
    let out = broker.run_env(
        &["request", "cli-auth", "x", "--no-wait"],
        &[("SWITCHYARD_TOKEN", "s3cret")],
        b"",
    );
    assert_eq!(out.code, Some(5), "right token: {out:?}");
    let out = broker.run(&["ping", "--token", "s3cret"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn listen_sees_presence_and_broadcasts_and_broadcast_prints_the_acks() {
    let broker = Broker::start(&[]);
    let listen = broker.start_cli(&["listen", "cli-news", "--json", "--count", "2"]);
    listen.wait_stderr("switchyard: listening on");
    let out = broker.run(&["broadcast", "cli-news", "hi \"there\""], b"");
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "1\n"), "{out:?}");
    // Presence and broadcasts are waited on apart, so the two lines may come in either order.
    let lines = listen.stdout_lines(2);
    let joined = lines.iter().find(|l| l.contains(r#""event":"joined""#));
    assert!(
        joined.is_some_and(|l| l.contains(r#""peer":""#)),
        "{lines:?}"
    );
    let broadcast = lines.iter().find(|l| l.contains(r#""event":"broadcast""#));
    assert!(
        broadcast.is_some_and(|l| l.contains(r#""body":"hi \"there\"""#)),
        "{lines:?}"
    );
    assert!(listen.wait_exit().success(), "listen --count 2 exits 0");

    // Human-readable lines, and --json on broadcast.
    let listen = broker.start_cli(&["listen", "cli-news2", "--count", "2"]);
    listen.wait_stderr("switchyard: listening on");
    let out = broker.run(&["broadcast", "cli-news2", "--json"], b"from stdin");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "{\"acks\":1}\n"),
        "{out:?}"
    );
    let lines = listen.stdout_lines(2);
    assert!(lines.iter().any(|l| l.starts_with("joined ")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.ends_with("(10 bytes): from stdin")),
        "{lines:?}"
    );
}

#[test]
fn peers_lists_the_others_and_ping_times_round_trips() {
    let broker = Broker::start(&[]);
    let reply = broker.start_cli(&["reply", "cli-peers"]);
    let ready = reply.wait_stderr(REPLYING);
    let id = ready
        .split(" as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("client id");
    let out = broker.run(&["peers", "cli-peers"], b"");
    assert_eq!((out.code, out.stdout.trim()), (Some(0), id), "{out:?}");
    // The first `peers` may still be listed (its presence grace period), so: an array with the
    // replier in it.
    let out = broker.run(&["peers", "cli-peers", "--json"], b"");
    let json = out.stdout.trim();
    assert!(json.starts_with("[\"") && json.ends_with("\"]"), "{out:?}");
    assert!(json.contains(&format!("\"{id}\"")), "{out:?}");

    let out = broker.run(&["ping", "--count", "3"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches("pong from").count(), 3, "{out:?}");
    assert!(out.stdout.contains("3 pings: min/avg/max"), "{out:?}");
    let out = broker.run(&["ping", "--json"], b"");
    assert!(
        out.stdout.contains("\"seq\":1") && out.stdout.contains("\"rtt_us\":"),
        "{out:?}"
    );
}

#[test]
fn bench_runs_briefly_and_prints_its_table() {
    let broker = Broker::start(&[]);
    let out = broker.run(
        &[
            "bench",
            "--receivers",
            "2",
            "--senders",
            "2",
            "--duration",
            "300ms",
            "--size",
            "1KiB",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    for column in ["requests", "req/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms"] {
        assert!(out.stdout.contains(column), "{column}: {out:?}");
    }
    let out = broker.run(
        &["bench", "--requests", "50", "--senders", "3", "--json"],
        b"",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"requests\":50,"), "{out:?}");
}

#[test]
fn completions_generate_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &[], b"");
        assert_eq!(out.code, Some(0), "{shell}: {out:?}");
        assert!(
            out.stdout.contains("switchyard") && out.stdout.contains("request"),
            "{shell}"
        );
    }
}

#[test]
fn serve_takes_a_bare_port_and_localhost_and_a_typo_names_the_flag() {
    let port = free_port();
    let broker = Broker::start_with(&["--listen", &format!(":{port}"), "--metrics-listen", "off"]);
    assert_eq!(broker.addr, format!("127.0.0.1:{port}"));
    drop(broker);
    let broker = Broker::start_with(&[
        "serve",
        "--listen",
        "localhost:0",
        "--metrics-listen",
        "off",
    ]);
    assert!(broker.addr.starts_with("127.0.0.1:"), "{}", broker.addr);

    let out = run(&["--lisen", "x"], &[], b"");
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("similar argument exists: '--listen'"),
        "{out:?}"
    );
    let out = run(&["--help"], &[], b"");
    assert!(
        out.stdout.contains("Exit codes:") && out.stdout.contains("Examples:"),
        "{out:?}"
    );
}
