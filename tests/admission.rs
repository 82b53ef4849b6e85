//! Admission (issue 10, items 4 and 7): what a client may cost the broker before it has
//! authenticated, and who gets in on one box.
//!
//! - A HELLO announcing a payload beyond the pre-handshake limit (4 KiB) is refused at its
//!   header with PAYLOAD_TOO_LARGE, before any of its payload is buffered: many connections
//!   announcing 1 MiB HELLOs and stalling cost the broker next to nothing.

use switchyard_testkit::{
    broker,
    gauges::{wait_idle, with_peak_buffered},
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
