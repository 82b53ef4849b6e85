//! Issue 10, item 1, over real sockets: a receiver that sets a huge window (RECEIVE 1 000 000)
//! and never reads, fed by senders whose 256 KiB requests time out after 200 ms.
//!
//! - The broker's buffered bytes stay under a bound computed from its configuration: the stuck
//!   receiver is not assigned new requests while its queue is over the high watermark, and the
//!   frames of its timed-out requests leave its queue unsent.
//! - A healthy pair on the same channel keeps being served: once the stuck receiver is known
//!   congested, every one of the healthy sender's requests is answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType, HEADER_LEN};
use switchyard::server::ServerConfig;
use switchyard_testkit::{
    broker::{config, start_with},
    gauges::{buffered_bound, wait_for, wait_idle, with_peak_buffered},
    raw::RawPeer,
    sockets, DEADLINE,
};

const FRAME: usize = 256 << 10;
const SENDERS: usize = 6;

fn stuck_config() -> ServerConfig {
    let mut config = config();
    config.router.max_payload = FRAME as u32;
    config.router.high_watermark = 1 << 20;
    config.router.low_watermark = 256 << 10;
    config.router.max_held_bytes = FRAME;
    config
}

/// A sender that keeps sending 256 KiB requests with a 200 ms timeout until `stop`, reading and
/// discarding whatever comes back on another thread.
fn flood(addr: std::net::SocketAddr, channel: ChannelId, stop: Arc<AtomicBool>) {
    let mut peer = RawPeer::named(addr, "flooder");
    peer.hello(channel, ClientId::random());
    let mut drain = peer.try_clone_stream();
    let drainer = thread::spawn(move || {
        let _ = std::io::copy(&mut drain, &mut std::io::sink());
    });
    let body = vec![7u8; FRAME];
    while !stop.load(Ordering::Relaxed) {
        peer.request(RequestId::random(), 200, &body);
    }
    peer.stream().shutdown(std::net::Shutdown::Both).ok();
    drainer.join().unwrap();
}

#[test]
fn a_stuck_receiver_stays_bounded_and_a_healthy_pair_is_served() {
    let config = stuck_config();
    let handle = start_with(config.clone());
    let addr = handle.local_addr();
    let channel = ChannelId::random();

    // The stuck receiver first in the ready FIFO: a small receive buffer, a huge window, no reads.
    let mut stuck = RawPeer::named(addr, "stuck");
    sockets::small_receive_buffer(stuck.stream());
    stuck.hello(channel, ClientId::random());
    stuck.receive(1_000_000);
    stuck.barrier();

    // The healthy receiver answers everything it is given.
    let mut healthy = RawPeer::named(addr, "healthy receiver");
    healthy.hello(channel, ClientId::random());
    healthy.receive(64);
    healthy.barrier();
    let answers = healthy.try_clone_stream();
    let responder = thread::spawn(move || {
        while let Ok(frame) = healthy.try_recv() {
            let h = frame.header;
            if h.frame_type == FrameType::Start && h.flags.contains(Flags::REQUEST) {
                healthy.respond(h.request_id, b"ok");
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let ((), peak) = with_peak_buffered(&handle, || {
        let flooders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || flood(addr, channel, stop))
            })
            .collect();
        // The stuck receiver's timed-out requests were dropped from its queue unsent: it is
        // congested (over the high watermark, written nothing since).
        wait_for(
            &handle,
            "frames of timed-out requests dropped from the stuck receiver's queue",
            |s| s.router.dead_bytes_dropped > 0,
        );
        let mut sender = RawPeer::named(addr, "healthy sender");
        sender.hello(channel, ClientId::random());
        for n in 0..20 {
            let id = RequestId::random();
            sender.request(id, DEADLINE.as_millis() as u32, b"ping");
            let answer = sender.recv_kind(FrameType::Start, true);
            assert_eq!(answer.header.request_id, id, "round trip {n}");
            assert!(
                answer.header.flags.contains(Flags::RESPONSE),
                "round trip {n}: {answer:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.join().unwrap();
        }
    });
    // Senders: the held allowance plus the frame that crossed it, and one frame each forwarded
    // past a watermark; the stuck receiver: the high watermark plus one frame per sender.
    let frame = HEADER_LEN + FRAME;
    let bound =
        buffered_bound(&config, SENDERS + 3) + SENDERS * (config.router.max_held_bytes + 2 * frame);
    assert!(peak <= bound, "peak buffered {peak} over the bound {bound}");
    drop(stuck);
    answers.shutdown(std::net::Shutdown::Both).ok();
    responder.join().unwrap();
    wait_idle(&handle);
}
