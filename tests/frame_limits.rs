//! Frames never exceed the max payload the broker announces (PROTOCOL.md §9.1), over real
//! sockets: with `max_payload` 1 024 and 100 clients trying to join one channel, at most 59 get
//! in (what a peer list of one 1 024-byte frame carries), the rest get LIMIT_EXCEEDED, and every
//! WELCOME, PEERS answer and BROADCAST_INCOMPLETE any of them reads fits in 1 024 bytes.

use switchyard_testkit::{broker, raw::RawPeer, DEADLINE};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorBody, ErrorCode, Flags, FrameType, Header, WelcomeBody};
use switchyard::router::RouterConfig;

const MAX_PAYLOAD: u32 = 1024;

#[test]
fn with_1024_byte_frames_and_100_clients_no_frame_is_larger() {
    // The library lowers the default peer limit (10 000) to what the frames carry; the binary
    // refuses the combination instead (src/config: max_peers_per_channel_is_bounded_...).
    let handle = broker::start_router(RouterConfig {
        max_payload: MAX_PAYLOAD,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    let fits = RouterConfig::max_peers_for_payload(MAX_PAYLOAD);
    assert_eq!(fits, 59);
    let mut members = Vec::new();
    let mut refused = 0;
    for n in 0..100 {
        let mut peer = RawPeer::named(handle.local_addr(), &format!("peer{n}"));
        peer.send_hello(channel, ClientId::random());
        let frame = peer.recv();
        assert!(
            frame.header.payload_len <= MAX_PAYLOAD,
            "{n}: {:?}",
            frame.header
        );
        match frame.header.frame_type {
            FrameType::Welcome => {
                let welcome = WelcomeBody::decode(&frame.payload).expect("welcome");
                assert_eq!(welcome.peers.len(), members.len());
                peer.channel = channel;
                peer.client = frame.header.client_id;
                members.push(peer);
            }
            FrameType::Error => {
                let error = ErrorBody::decode(&frame.payload).expect("error");
                assert_eq!(error.known_code(), Some(ErrorCode::LimitExceeded));
                refused += 1;
            }
            other => panic!("{n}: unexpected {other:?}"),
        }
    }
    assert_eq!((members.len(), refused), (fits, 100 - fits));

    // A PEERS answer lists the 58 others in one frame.
    let last = members.len() - 1;
    let question = members[last].header(FrameType::Peers);
    members[last].send(question, &[]);
    let answer = members[last].recv_kind(FrameType::Peers, true);
    assert!(answer.header.payload_len <= MAX_PAYLOAD);
    assert_eq!(answer.payload.len(), 4 + 16 * (fits - 1));

    // A broadcast nobody acks: BROADCAST_INCOMPLETE names all 58, its text cut to fit.
    let id = RequestId::random();
    let start = Header {
        flags: Flags::REQUEST | Flags::BROADCAST,
        request_id: id,
        timeout_ms: 200,
        is_final: true,
        ..members[0].header(FrameType::Start)
    };
    members[0].send(start, b"all");
    let error = loop {
        let frame = members[0].recv();
        assert!(frame.header.payload_len <= MAX_PAYLOAD);
        if frame.header.frame_type == FrameType::Error {
            break frame;
        }
    };
    let body = ErrorBody::decode(&error.payload).expect("error body");
    assert_eq!(body.known_code(), Some(ErrorCode::BroadcastIncomplete));
    assert_eq!(body.peers.len(), fits - 1);
    drop(members);
    handle.wait_idle(DEADLINE).expect("idle");
}
