//! Flow control over real sockets (PROTOCOL.md §9): a receiver that stops reading must not make
//! the broker buffer a large request. The sender is paused instead, the broker's buffered bytes
//! stay under a bound computed from its configuration, and when the receiver reads again every
//! byte arrives, in order, and the sender's writes complete (the predecessor's "deadlocks on full
//! buffers" and unbounded queues).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    broker::{self, start_with},
    gauges::{buffered_bound, wait_for, wait_idle, with_peak_buffered},
    pattern::Pattern,
    raw::RawPeer,
};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType, Header};
use switchyard::server::{ServerConfig, ServerStats};

/// Payload of every frame of the big request, and the broker's max payload.
const FRAME: usize = 256 << 10;
/// The whole request body: the full 100 MiB. In a debug build the transfer itself takes about
/// 0.1 s on the test machine; the test takes about 0.4 s, most of it the 300 ms watch below.
const TOTAL: u64 = 100 << 20;

fn config() -> ServerConfig {
    let mut config = broker::config();
    config.router.max_payload = FRAME as u32;
    config.router.high_watermark = 1 << 20;
    config.router.low_watermark = 256 << 10;
    config.router.max_held_bytes = 1 << 20;
    config
}

/// Streams the request: START (seq 0), CHUNKs, END (FINAL), each `FRAME` bytes of the pattern.
fn stream_request(
    mut socket: std::net::TcpStream,
    template: Header,
    pattern: &Pattern,
    written: &AtomicU64,
) -> io::Result<()> {
    let frames = TOTAL / FRAME as u64;
    for seq in 0..frames {
        let kind = match seq {
            0 => FrameType::Start,
            s if s == frames - 1 => FrameType::End,
            _ => FrameType::Chunk,
        };
        let header = Header {
            sequence: seq as u32,
            is_final: seq == frames - 1,
            timeout_ms: if seq == 0 { 60_000 } else { 0 },
            payload_len: FRAME as u32,
            frame_type: kind,
            ..template
        };
        socket.write_all(&header.encode())?;
        socket.write_all(pattern.slice(seq * FRAME as u64, FRAME))?;
        written.fetch_add(FRAME as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn a_stalled_receiver_pauses_the_sender_within_the_bound_and_everything_arrives_in_order() {
    let config = config();
    let limit = buffered_bound(&config, 2);
    let handle = start_with(config);
    let addr = handle.local_addr();
    let channel = ChannelId::random();

    let mut receiver = RawPeer::named(addr, "receiver");
    receiver.hello(channel, ClientId::random());
    let mut sender = RawPeer::named(addr, "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    receiver.receive(1);
    receiver.barrier();
    // From here on the receiver reads nothing until the sender is known to be stuck.

    let pattern = Pattern::new();
    let id = RequestId::random();
    let template = Header {
        flags: Flags::REQUEST,
        client_id: sender.client,
        channel_id: channel,
        request_id: id,
        ..Header::new(FrameType::Start)
    };
    let writer_socket = sender.try_clone_stream();
    // A generous limit so that a broker that never resumes fails the test instead of hanging it.
    writer_socket
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let written = AtomicU64::new(0);

    // Every loop turn of the broker, the monitor records the largest buffered-bytes figure.
    let ((), max) = with_peak_buffered(&handle, || {
        thread::scope(|s| {
            let writer = s.spawn(|| stream_request(writer_socket, template, &pattern, &written));

            // The broker pauses the sender once the receiver's queue passes the high watermark.
            let paused = wait_for(&handle, "the sender is paused", |s: &ServerStats| {
                s.router.paused_connections >= 1
            });
            assert!(paused.router.backpressure_pauses >= 1, "{paused:?}");
            assert!(
                paused.buffered_bytes() <= limit,
                "{paused:?}, bound {limit}"
            );

            // While the receiver stays silent, the sender stays paused and the broker's buffers
            // stay bounded (the watch ends at its deadline: nothing must trigger it).
            let breach = handle.wait_until(
                move |s: &ServerStats| {
                    s.buffered_bytes() > limit || s.router.paused_connections == 0
                },
                Duration::from_millis(300),
            );
            match breach {
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {}
                other => panic!("bound {limit} broken or the sender resumed early: {other:?}"),
            }
            let now = handle.stats().unwrap();
            assert!(now.router.paused_connections >= 1, "{now:?}");
            assert!(now.buffered_bytes() <= limit, "{now:?}, bound {limit}");
            let stuck_at = written.load(Ordering::Relaxed);
            assert!(
                stuck_at < TOTAL && !writer.is_finished(),
                "the sender was never blocked ({stuck_at} of {TOTAL} bytes written)"
            );

            // The receiver reads again: every frame, in order, every byte the pattern's.
            let mut payload = Vec::with_capacity(FRAME);
            let mut offset = 0u64;
            let mut seq = 0u32;
            loop {
                let h = receiver.recv_into(&mut payload);
                let kind = if seq == 0 {
                    FrameType::Start
                } else if h.is_final {
                    FrameType::End
                } else {
                    FrameType::Chunk
                };
                assert_eq!(
                    (h.frame_type, h.flags, h.request_id, h.sequence),
                    (kind, Flags::REQUEST, id, seq),
                    "frame {seq} at offset {offset}"
                );
                assert_eq!(h.client_id, sender.client);
                pattern.check(offset, &payload);
                offset += payload.len() as u64;
                seq += 1;
                if h.is_final {
                    break;
                }
            }
            assert_eq!(offset, TOTAL, "bytes received");
            writer
                .join()
                .unwrap()
                .expect("the sender's writes complete");
            assert_eq!(written.load(Ordering::Relaxed), TOTAL);

            receiver.respond(id, b"all of it");
            let reply = sender.expect(FrameType::Start, Flags::RESPONSE, id);
            assert_eq!(&reply.payload[..], b"all of it");
        })
    });
    assert!(handle.stats().unwrap().router.backpressure_pauses >= 1);
    println!("max buffered {max} bytes, bound {limit}");
    assert!(
        max <= limit,
        "the broker buffered {max} bytes at some point, over the bound of {limit}"
    );
    // And the test did exercise the watermark: the queue really filled to it.
    assert!(
        max >= 1 << 20,
        "the receiver's queue never reached the high watermark ({max} bytes at most)"
    );
    receiver.barrier();
    drop((sender, receiver));
    wait_idle(&handle);
}
