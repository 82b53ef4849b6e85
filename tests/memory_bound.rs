//! Issue 10, item 6: the worst-case memory formula (RELIABILITY.md §1.7), proved against a
//! broker process attacked on every front at once for a few seconds — stuck receivers fed by
//! senders with short timeouts, peers that never read under presence churn, senders holding
//! bytes with no receiver, and big frames announced then stalled — by its peak RSS (VmHWM)
//! staying under the bound computed from its configuration.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType, Header, HEADER_LEN};
use switchyard_testkit::{now, process::BrokerProcess, raw::RawPeer, sockets, DEADLINE};

const MIB: usize = 1 << 20;
/// The budget under test: small, so the attack exceeds it many times over in seconds.
const BUDGET: usize = 32 * MIB;
/// The broker's default max payload.
const FRAME: usize = MIB;
const ATTACK: Duration = Duration::from_secs(3);

const STUCK_RECEIVERS: usize = 4;
const FLOODERS: usize = 4;
const SILENT_PEERS: usize = 30;
const HOLDERS: usize = 20;
const STALLERS: usize = 100;

/// Peak and current resident set of a process, in bytes (`/proc/PID/status`).
fn rss(pid: i32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> usize {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        let kb: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("a number of kB");
        kb * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One stream frame of `peer`'s request `id`, header and payload of `len` bytes.
fn request_frame(peer: &RawPeer, id: RequestId, seq: u32, timeout_ms: u32, len: usize) -> Vec<u8> {
    let header = Header {
        flags: Flags::REQUEST,
        request_id: id,
        sequence: seq,
        is_final: seq == 0 && timeout_ms < 1_000,
        timeout_ms: if seq == 0 { timeout_ms } else { 0 },
        payload_len: len as u32,
        ..peer.header(if seq == 0 {
            FrameType::Start
        } else {
            FrameType::Chunk
        })
    };
    let mut bytes = header.encode().to_vec();
    bytes.resize(HEADER_LEN + len, 7);
    bytes
}

/// A joined peer whose stream writes give up after a short while (so every thread can stop).
fn joined(addr: SocketAddr, channel: ChannelId, name: &str) -> (RawPeer, TcpStream) {
    let mut peer = RawPeer::named(addr, name);
    peer.hello(channel, ClientId::random());
    let stream = peer.try_clone_stream();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (peer, stream)
}

#[test]
fn peak_rss_stays_under_the_computed_bound_under_attack_on_every_front() {
    let max_connections = 400;
    let budget = BUDGET.to_string();
    let connections = max_connections.to_string();
    let broker = BrokerProcess::start(
        &[
            "--max-buffered-bytes",
            &budget,
            "--max-connections",
            &connections,
            "--max-connections-per-ip",
            &connections,
            "--presence-grace-ms",
            "0",
        ],
        None,
    );
    let addr = broker.addr;
    let (_, base) = rss(broker.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut keep = Vec::new();

    // 1. Stuck receivers (huge window, never read), fed by senders with 200 ms timeouts.
    let stuck_channel = ChannelId::random();
    for _ in 0..STUCK_RECEIVERS {
        let mut peer = RawPeer::named(addr, "stuck receiver");
        sockets::small_receive_buffer(peer.stream());
        peer.hello(stuck_channel, ClientId::random());
        peer.receive(1_000_000);
        keep.push(peer);
    }
    for _ in 0..FLOODERS {
        let stop = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            let (peer, mut stream) = joined(addr, stuck_channel, "flooder");
            let mut drain = peer.try_clone_stream();
            thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
            while !stop.load(Ordering::Relaxed) {
                let frame = request_frame(&peer, RequestId::random(), 0, 200, FRAME);
                let _ = stream.write_all(&frame);
            }
            peer
        }));
    }
    // 2. Peers that never read, and a churner joining and leaving with fresh ids.
    let presence_channel = ChannelId::random();
    for _ in 0..SILENT_PEERS {
        let mut peer = RawPeer::named(addr, "silent peer");
        sockets::small_receive_buffer(peer.stream());
        peer.hello(presence_channel, ClientId::random());
        keep.push(peer);
    }
    {
        let stop = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                let mut peer = RawPeer::named(addr, "churner");
                peer.set_deadline(Duration::from_millis(500));
                if peer.try_recv().is_ok() {
                    // Not expected before HELLO; the broker said something (a limit): stop.
                    break;
                }
                let mut hello = peer.header(FrameType::Hello);
                hello.channel_id = presence_channel;
                hello.client_id = ClientId::random();
                peer.send(hello, b"");
                last = Some(peer);
            }
            last.unwrap_or_else(|| RawPeer::named(addr, "churner"))
        }));
    }
    // 3. Senders holding bytes: a stream into a channel with no receiver, 1 h timeout.
    let held_channel = ChannelId::random();
    for _ in 0..HOLDERS {
        let stop = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            let (peer, mut stream) = joined(addr, held_channel, "holder");
            let id = RequestId::random();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                if stream
                    .write_all(&request_frame(&peer, id, seq, 3_600_000, FRAME))
                    .is_ok()
                {
                    seq += 1;
                }
            }
            peer
        }));
    }
    // 4. Big frames announced and stalled: a 1 MiB START of which 100 bytes ever arrive.
    let stall_channel = ChannelId::random();
    for _ in 0..STALLERS {
        let (peer, mut stream) = joined(addr, stall_channel, "staller");
        let frame = request_frame(&peer, RequestId::random(), 0, 3_600_000, FRAME);
        stream.write_all(&frame[..HEADER_LEN + 100]).unwrap();
        keep.push(peer);
    }

    let started = now();
    while now() - started < ATTACK {
        // Not a synchronisation: the attack runs for its duration, its peak sampled meanwhile.
        let (hwm, _) = rss(broker.pid());
        if hwm > base + 4 * BUDGET + 256 * MIB {
            break; // far past any bound: no need to go on
        }
        thread::park_timeout(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        keep.push(thread.join().unwrap());
    }
    let (peak, _) = rss(broker.pid());

    // The worst-case formula (RELIABILITY.md §1.7) for this configuration.
    let connections = keep.len() + FLOODERS; // plus the churner's last one, roughly
    let per_connection = 16 * 1024; // protocol state, I/O state, slab and set entries
    let past_budget = 4 * 1024 + 2 * (16 * 1024 + HEADER_LEN); // a sip + one copied frame
    let pools = 2 * 256 * 64 * 1024; // read and outbound buffer pools
    let bound = base
        + 2 * BUDGET // BytesMut growth: capacity at most twice what is counted
        + connections * (per_connection + past_budget)
        + pools;
    eprintln!(
        "base RSS {} KiB, peak {} KiB, bound {} KiB ({connections} connections)",
        base / 1024,
        peak / 1024,
        bound / 1024
    );
    assert!(
        peak <= bound,
        "peak RSS {peak} over the computed bound {bound} (base {base})"
    );
    // Once the attackers are gone the broker serves again (meanwhile, over its budget, it
    // pauses whatever adds to it, a newcomer's WELCOME included).
    drop(keep);
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(addr, "late receiver");
    receiver.hello(channel, ClientId::random());
    receiver.receive(1);
    receiver.barrier();
    let mut sender = RawPeer::named(addr, "late sender");
    sender.hello(channel, ClientId::random());
    let id = RequestId::random();
    sender.request(id, DEADLINE.as_millis() as u32, b"still there?");
    let start = receiver.recv_kind(FrameType::Start, true);
    assert_eq!(start.header.request_id, id);
}
