//! Fairness over real sockets (PROTOCOL.md §9, read budget): a connection streaming a huge request
//! as fast as it can must not starve a ping-pong pair on another channel. Every one of 200
//! sequential round trips completes within a generous per-read deadline while the firehose is
//! demonstrably still flowing.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    broker::start,
    gauges::{wait_for, wait_idle},
    pattern::Pattern,
    raw::RawPeer,
};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType, Header, DEFAULT_MAX_PAYLOAD};
use switchyard::server::ServerStats;

/// The firehose's frames: the default max payload.
const FRAME: usize = DEFAULT_MAX_PAYLOAD as usize;
/// Sequential round trips of the ping-pong pair.
const ROUND_TRIPS: u32 = 200;
/// Bytes the firehose must deliver while the round trips run, to show they ran side by side.
const MIN_FIREHOSE_PROGRESS: u64 = 4 * FRAME as u64;
/// Give up on seeing that progress after this many round trips.
const MAX_ROUND_TRIPS: u32 = 50_000;
/// Longest any read of the ping-pong pair may wait: each round trip has two reads, so each must
/// complete within this.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(2);

/// Streams START, then CHUNKs until `stop`, then an empty END (FINAL). Returns the body length.
fn firehose(
    mut socket: TcpStream,
    template: Header,
    pattern: &Pattern,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> io::Result<u64> {
    let mut seq = 0u32;
    let mut offset = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let header = Header {
            frame_type: if seq == 0 {
                FrameType::Start
            } else {
                FrameType::Chunk
            },
            sequence: seq,
            timeout_ms: if seq == 0 { 60_000 } else { 0 },
            payload_len: FRAME as u32,
            ..template
        };
        socket.write_all(&header.encode())?;
        socket.write_all(pattern.slice(offset, FRAME))?;
        offset += FRAME as u64;
        seq += 1;
        sent.store(offset, Ordering::Relaxed);
    }
    let end = Header {
        frame_type: FrameType::End,
        sequence: seq,
        is_final: true,
        payload_len: 0,
        ..template
    };
    socket.write_all(&end.encode())?;
    Ok(offset)
}

/// Reads the firehose's request to its FINAL frame, checking order and content; counts the bytes
/// in `received` as they arrive. Returns the body length.
fn sink(receiver: &mut RawPeer, id: RequestId, pattern: &Pattern, received: &AtomicU64) -> u64 {
    let mut payload = Vec::with_capacity(FRAME);
    let mut offset = 0u64;
    let mut seq = 0u32;
    loop {
        let h = receiver.recv_into(&mut payload);
        assert_eq!(
            (h.flags, h.request_id, h.sequence),
            (Flags::REQUEST, id, seq),
            "firehose frame {seq}: {h:?}"
        );
        pattern.check(offset, &payload);
        offset += payload.len() as u64;
        received.store(offset, Ordering::Relaxed);
        seq += 1;
        if h.is_final {
            assert_eq!(h.frame_type, FrameType::End);
            return offset;
        }
    }
}

#[test]
fn a_firehose_does_not_starve_a_ping_pong_pair() {
    let handle = start();
    let addr = handle.local_addr();

    // The firehose pair on one channel.
    let hose_channel = ChannelId::random();
    let mut hose_sink = RawPeer::named(addr, "firehose-sink");
    hose_sink.hello(hose_channel, ClientId::random());
    hose_sink.receive(1);
    hose_sink.barrier();
    let mut hose = RawPeer::named(addr, "firehose");
    hose.hello(hose_channel, ClientId::random());
    hose_sink.expect_presence(FrameType::PeerJoined, hose.client);

    // The ping-pong pair on another.
    let ping_channel = ChannelId::random();
    let mut pong = RawPeer::named(addr, "pong");
    pong.hello(ping_channel, ClientId::random());
    pong.receive(1);
    pong.barrier();
    let mut ping = RawPeer::named(addr, "ping");
    ping.hello(ping_channel, ClientId::random());
    pong.expect_presence(FrameType::PeerJoined, ping.client);
    ping.set_deadline(ROUND_TRIP_DEADLINE);
    pong.set_deadline(ROUND_TRIP_DEADLINE);

    let pattern = Pattern::new();
    let hose_id = RequestId::random();
    let template = Header {
        flags: Flags::REQUEST,
        client_id: hose.client,
        channel_id: hose_channel,
        request_id: hose_id,
        ..Header::new(FrameType::Start)
    };
    let hose_socket = hose.try_clone_stream();
    hose_socket
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);

    thread::scope(|s| {
        let writer = s.spawn(|| firehose(hose_socket, template, &pattern, &stop, &sent));
        let reader = s.spawn(|| {
            let total = sink(&mut hose_sink, hose_id, &pattern, &received);
            hose_sink.respond(hose_id, b"drained");
            total
        });
        // Stops the firehose however the test ends, so the scope can join its threads.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);

        // Let the firehose get going: several frames through the broker.
        let warm = wait_for(&handle, "the firehose is flowing", |s: &ServerStats| {
            s.bytes_in >= 8 * FRAME as u64
        });
        let received_before = received.load(Ordering::Relaxed);

        // At least ROUND_TRIPS round trips, and on until the firehose has visibly moved during
        // them (on a loaded machine the firehose's own threads may get little CPU at first).
        let moved = || received.load(Ordering::Relaxed) - received_before;
        let mut done = 0u32;
        while done < ROUND_TRIPS || moved() < MIN_FIREHOSE_PROGRESS {
            assert!(
                done < MAX_ROUND_TRIPS,
                "the firehose moved only {} bytes during {done} round trips",
                moved()
            );
            let id = RequestId::random();
            let body = done.to_be_bytes();
            ping.request(id, 5_000, &body);
            let request = pong.expect(FrameType::Start, Flags::REQUEST, id);
            assert_eq!(&request.payload[..], &body);
            pong.respond(id, &body);
            let reply = ping.expect(FrameType::Start, Flags::RESPONSE, id);
            assert_eq!(&reply.payload[..], &body);
            done += 1;
        }

        // The firehose is still running: its writer and its sink are mid-stream, and its request
        // is the one assignment the broker holds; its frames kept being decoded meanwhile.
        let after = handle.stats().unwrap();
        assert!(
            !writer.is_finished() && !reader.is_finished(),
            "the firehose stopped before the round trips were done"
        );
        assert_eq!(after.router.assignments, 1, "{after:?}");
        assert!(
            after.frames_in > warm.frames_in + 2 * u64::from(done),
            "{warm:?} {after:?}"
        );
        println!(
            "{done} round trips while the firehose moved {} MiB",
            moved() >> 20
        );

        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap().expect("the firehose's writes");
        let read = reader.join().unwrap();
        assert_eq!(read, written, "the firehose's body arrived whole");
        let done = hose.expect(FrameType::Start, Flags::RESPONSE, hose_id);
        assert_eq!(&done.payload[..], b"drained");
    });

    for peer in [&mut hose, &mut hose_sink, &mut ping, &mut pong] {
        peer.barrier();
    }
    drop((hose, hose_sink, ping, pong));
    wait_idle(&handle);
}
