//! Graceful shutdown of a real broker process on a real signal (PROTOCOL.md §8.1): in-flight
//! requests finish, nothing new starts, the drain deadline ends the rest, and the process exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use switchyard::client::{Client, Error, RequestOptions};
use switchyard::ids::ChannelId;

/// A broker process on an ephemeral port (its address read from its log), stopped by PID.
struct Broker {
    pid: u32,
    addr: SocketAddr,
    exited: mpsc::Receiver<ExitStatus>,
    done: bool,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
            // Several of these run at once: no metrics listener on the default port.
            .args(["--metrics-listen", "off"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the broker");
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr");
        let (addr_tx, addr_rx) = mpsc::channel();
        // Reads the log to its end (the broker never blocks on a full pipe), reporting the
        // listening address.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = addr_tx.send(addr.trim().parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait().expect("wait for the broker");
            let _ = exit_tx.send(status);
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the broker's address");
        Broker {
            pid,
            addr,
            exited,
            done: false,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = self
            .exited
            .recv_timeout(within)
            .expect("the broker exits in time");
        self.done = true;
        status
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A failed test must not leave its broker behind: stop it, by its PID.
        if !self.done {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_refuses_new_ones_and_exits_zero() {
    let mut broker = Broker::start(&["--drain-deadline-ms", "5000"]);
    let channel = ChannelId::random();
    let sender = Client::connect(broker.addr, channel).expect("sender");
    let receiver = Client::connect(broker.addr, channel).expect("receiver");
    receiver.set_receive_window(1).expect("window");
    std::thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"in flight", Duration::from_secs(10)));
        let request = receiver
            .next_request(Some(Duration::from_secs(5)))
            .expect("assigned");
        broker.signal("TERM");
        // GOING_AWAY reaches the receiver's client: it starts nothing new. (NO_WAIT, so that a
        // request that races ahead of the signal fails at once instead of waiting for a
        // receiver until the drain deadline.)
        let no_wait = RequestOptions {
            timeout: Some(Duration::from_secs(5)),
            no_wait: true,
        };
        loop {
            match receiver.request_with(&mut &b"new"[..], no_wait) {
                Err(Error::GoingAway) => break,
                Err(Error::NoReceiver) => continue,
                other => panic!("a new request during the drain: {:?}", other.map(|_| ())),
            }
        }
        // ...but the request it holds still completes.
        let mut request = request;
        let body = request.read_body().expect("body");
        request.respond(&body).expect("respond during the drain");
        let reply = asking
            .join()
            .expect("sender thread")
            .expect("the in-flight request");
        assert_eq!(reply, b"in flight");
    });
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    // New connections are refused once it is gone.
    assert!(Client::connect(broker.addr, channel).is_err());
}

#[test]
fn the_drain_deadline_ends_what_is_left_with_a_clear_error() {
    let mut broker = Broker::start(&["--drain-deadline-ms", "300"]);
    let channel = ChannelId::random();
    let sender = Client::connect(broker.addr, channel).expect("sender");
    let receiver = Client::connect(broker.addr, channel).expect("receiver");
    receiver.set_receive_window(1).expect("window");
    std::thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"never answered", Duration::from_secs(30)));
        let _held = receiver
            .next_request(Some(Duration::from_secs(5)))
            .expect("assigned");
        broker.signal("INT");
        match asking.join().expect("sender thread") {
            Err(Error::GoingAway) => {}
            other => panic!("expected the drain deadline's error, got {other:?}"),
        }
    });
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}
