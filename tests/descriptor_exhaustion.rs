//! Resource exhaustion (issue 5, item 4), out of file descriptors: the real broker binary runs
//! in a child process whose RLIMIT_NOFILE is lowered; once its connections use every
//! descriptor, the loop must not spin (CPU time read from `/proc/<pid>/stat` over a measurement
//! window while connection attempts keep arriving), must log one warning for the episode rather
//! than one per attempt, and must serve the connections waiting in the backlog by itself once
//! descriptors free up — with no new connection arriving to wake it.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{now, process::BrokerProcess, raw::RawPeer, DEADLINE};

use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::FrameType;

/// The broker's descriptor limit in the fd test: room for its own few descriptors (stdio,
/// epoll, listeners, signal pipe) and a few dozen connections.
const NOFILE: u64 = 64;

/// The measurement window for the CPU figure.
const WINDOW: Duration = Duration::from_secs(1);

/// Most CPU the starved broker may use over the window, as a fraction of one core. A loop that
/// spins on a failing `accept` (level-triggered, or retrying without a pause) uses the whole
/// core: 100%, or at least the 50–90% a busy 2-core machine leaves it. An idle broker ignoring
/// the arrivals uses ~0%. 30% separates the two with a wide margin for a loaded test machine.
const MAX_CPU_SHARE: f64 = 0.30;

/// A connection that sends its HELLO but is never answered while the broker is starved.
fn waiting_hello(addr: SocketAddr, name: &str) -> RawPeer {
    let mut peer = RawPeer::named(addr, name);
    let (channel, client) = (ChannelId::random(), ClientId::random());
    peer.send_hello(channel, client);
    // What `RawPeer::hello` would remember, for the frames sent once it is served.
    peer.channel = channel;
    peer.client = client;
    peer
}

/// True when nothing at all has arrived on the peer's socket (the broker never answered).
fn nothing_arrived(peer: &RawPeer) -> io::Result<usize> {
    let stream = peer.stream();
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let result = (&*stream).read(&mut byte);
    stream.set_nonblocking(false).unwrap();
    result
}

#[test]
fn out_of_descriptors_the_broker_does_not_spin_and_recovers_by_itself() {
    let broker = BrokerProcess::start(
        &[
            // Above the descriptor limit, so the descriptors run out first.
            "--max-connections",
            "1000",
            "--max-connections-per-ip",
            "1000",
            "--presence-grace-ms",
            "0",
        ],
        Some(NOFILE),
    );
    let addr = broker.addr;

    // Fill every descriptor with handshaken connections.
    let mut served = Vec::new();
    while broker.free_fds(NOFILE) > 0 {
        let mut peer = RawPeer::named(addr, "served");
        peer.hello(ChannelId::random(), ClientId::random());
        served.push(peer);
        assert!(
            served.len() < NOFILE as usize,
            "the descriptor limit is not in force"
        );
    }
    // One more: the kernel completes its handshake into the backlog, the broker's accept fails.
    let mut waiting = vec![waiting_hello(addr, "backlogged-0")];
    broker.wait_line("accept failed", DEADLINE);
    waiting.push(waiting_hello(addr, "backlogged-1"));
    waiting.push(waiting_hello(addr, "backlogged-2"));

    // The window: connection attempts keep arriving (each one an edge on the listener); the
    // broker's CPU time over the window is the figure.
    let cpu_before = broker.cpu_time();
    let started = now();
    let attempts = thread::scope(|s| {
        s.spawn(|| {
            let mut attempts = 0u32;
            while started.elapsed() < WINDOW {
                // Completed by the kernel into the backlog (or dropped when it is full), then
                // closed at once: the broker meets them after its recovery, as EOFs.
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
                attempts += 1;
            }
            attempts
        })
        .join()
        .unwrap()
    });
    let wall = started.elapsed();
    let cpu = broker.cpu_time() - cpu_before;
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "starved broker: {cpu:?} CPU over {wall:?} ({:.1}% of a core) under {attempts} \
         connection attempts",
        share * 100.0
    );
    assert!(
        attempts > 10,
        "the window saw only {attempts} connection attempts"
    );
    assert!(
        share < MAX_CPU_SHARE,
        "the starved broker used {:.1}% of a core (spinning?)",
        share * 100.0
    );
    // Still starved: the waiting connections were not served, and one warning covers it all.
    for peer in &waiting {
        let got = nothing_arrived(peer);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{} was answered while starved: {got:?}; log: {:?}",
            peer.name,
            broker.lines("")
        );
    }
    assert_eq!(
        broker.lines("accept failed").len(),
        1,
        "one warning per episode"
    );

    // Descriptors free up (ten served clients leave) and no new connection arrives: the
    // broker must take the backlogged connections by itself.
    served.truncate(served.len() - 10);
    for peer in &mut waiting {
        let welcome = peer.recv_kind(FrameType::Welcome, false);
        assert!(!welcome.header.client_id.is_nil());
        peer.barrier();
    }
    let resumed = broker.wait_line("accepting again", DEADLINE);
    assert!(resumed.contains("failed accept attempts"), "{resumed}");
    let metrics = broker.scrape();
    assert!(metrics.get("switchyard_accept_errors_total") >= 1);
    assert_eq!(metrics.get("switchyard_accept_starved"), 0);
    // The ones served all along were never disturbed.
    for peer in &mut served {
        peer.barrier();
    }

    drop((served, waiting));
    broker.wait_all_closed(DEADLINE);
    broker.scrape().assert_idle();
}
