//! Admission (issue 10, items 4 and 7): what a client may cost the broker before it has
//! authenticated, and who gets in on one box.
//!
//! - A HELLO announcing a payload beyond the pre-handshake limit (4 KiB) is refused at its
//!   header with PAYLOAD_TOO_LARGE, before any of its payload is buffered: many connections
//!   announcing 1 MiB HELLOs and stalling cost the broker next to nothing.
//! - One local process holding 1 000 handshake-less connections locks no one out: the
//!   unauthenticated budget evicts the oldest of them (HANDSHAKE_REQUIRED), and loopback is not
//!   subject to the per-IP limit, so 50 legitimate clients all get in.

use switchyard_testkit::{
    broker,
    gauges::{wait_for, wait_idle, with_peak_buffered},
    raw::RawPeer,
};

use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{ErrorCode, FrameType, Header, MAX_HELLO_PAYLOAD};

/// Connections of the pre-auth memory test.
const STALLED: usize = 200;

#[test]
fn a_hello_beyond_the_pre_handshake_limit_is_refused_at_its_header() {
    let handle = broker::start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let ((), peak) = with_peak_buffered(&handle, || {
        let mut peers: Vec<RawPeer> = (0..STALLED)
            .map(|i| RawPeer::named(addr, &format!("stalled{i}")))
            .collect();
        for peer in &mut peers {
            // A HELLO announcing a 1 MiB token, and 64 KiB of it; then nothing more.
            let header = Header {
                channel_id: channel,
                client_id: ClientId::random(),
                payload_len: 1 << 20,
                ..Header::new(FrameType::Hello)
            };
            let mut wire = header.encode().to_vec();
            wire.extend(std::iter::repeat_n(b'x', 64 << 10));
            peer.send_bytes(&wire);
        }
        for peer in &mut peers {
            let body = peer.expect_fatal(ErrorCode::PayloadTooLarge);
            assert!(
                body.message.contains("before the handshake")
                    && body.message.contains(&MAX_HELLO_PAYLOAD.to_string()),
                "{}: {:?}",
                peer.name,
                body.message
            );
        }
    });
    // Refused at the header: none of the 64 KiB payloads is held after its turn (12.5 MiB
    // if they were).
    assert!(peak < 1 << 20, "peak buffered {peak} bytes");
    // A HELLO within the limit still joins.
    let mut ok = RawPeer::named(addr, "ok");
    ok.hello(channel, ClientId::random());
    drop(ok);
    wait_idle(&handle);
}

/// Handshake-less connections of the one-box admission test.
const IDLE: usize = 1_000;
/// Legitimate clients that must all get in afterwards.
const LEGITIMATE: usize = 50;

#[test]
fn a_thousand_handshake_less_connections_lock_no_local_client_out() {
    let handle = broker::start();
    let addr = handle.local_addr();
    let budget = handle_budget();
    let mut idle: Vec<RawPeer> = (0..IDLE)
        .map(|i| RawPeer::named(addr, &format!("idle{i}")))
        .collect();
    wait_for(&handle, "every idle connection accepted", |s| {
        s.accepted == IDLE as u64
    });
    // Every legitimate client gets in: the first one's connect evicts one more idle connection,
    // and its HELLO frees the room the next one takes.
    let mut legitimate: Vec<RawPeer> = (0..LEGITIMATE)
        .map(|i| {
            let mut peer = RawPeer::named(addr, &format!("legitimate{i}"));
            peer.hello(ChannelId::random(), ClientId::random());
            peer
        })
        .collect();
    for peer in &mut legitimate {
        peer.barrier();
    }
    let stats = handle.stats().unwrap();
    assert_eq!(stats.refused, 0);
    assert_eq!(stats.router.unauthenticated, budget - 1);
    assert_eq!(
        stats.router.unauthenticated_evicted,
        (IDLE - budget + 1) as u64
    );
    // The oldest were evicted with a clear error; the newest are still open.
    let body = idle[0].expect_fatal(ErrorCode::HandshakeRequired);
    assert!(body.message.contains("oldest"), "{:?}", body.message);
    idle[IDLE - 1].ping(7);
    assert_eq!(idle[IDLE - 1].recv().header.frame_type, FrameType::Pong);
    idle.clear();
    legitimate.clear();
    wait_idle(&handle);
}

/// The default unauthenticated budget (the test broker's).
fn handle_budget() -> usize {
    broker::config().router.max_unauthenticated
}
