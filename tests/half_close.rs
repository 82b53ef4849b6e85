//! Half-close over real sockets (PROTOCOL.md §1): a sender that shuts its write side (SHUT_WR)
//! after its request still gets the response, and is then closed by the broker; a client with
//! nothing in flight that shuts its write side is closed at once, as before.

use switchyard_testkit::{broker, raw::RawPeer, DEADLINE};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType};

#[test]
fn a_sender_that_shuts_its_write_side_after_end_still_gets_its_response() {
    let handle = broker::start();
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(handle.local_addr(), "receiver");
    receiver.hello(channel, ClientId::random());
    receiver.receive(1);
    let mut sender = RawPeer::named(handle.local_addr(), "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    receiver.barrier();

    // A two-frame request (START, END|FINAL), then SHUT_WR: like an HTTP client.
    let id = RequestId::random();
    sender.send_stream(FrameType::Start, Flags::REQUEST, id, 0, false, b"que");
    sender.send_stream(FrameType::End, Flags::REQUEST, id, 1, true, b"stion");
    sender.shutdown_write();

    let start = receiver.recv_kind(FrameType::Start, true);
    assert_eq!(start.header.request_id, id);
    let end = receiver.expect(FrameType::End, Flags::REQUEST, id);
    assert_eq!(&end.payload[..], b"stion");
    receiver.respond(id, b"answer");

    // The probe (PING, sequence 0) that a socket closed altogether would answer with a reset.
    let probe = sender.recv_kind(FrameType::Ping, false);
    assert_eq!(probe.header.sequence, 0);
    let response = sender.expect(FrameType::Start, Flags::RESPONSE, id);
    assert_eq!(&response.payload[..], b"answer");
    // Nothing more in flight: the broker closes the connection after the answer.
    sender.expect_closed();
    drop(receiver);
    handle.wait_idle(DEADLINE).expect("idle");
}

/// A client that closes its socket altogether with a request in flight is not kept until the
/// request's timeout: the probe PING meets a reset and the broker lets everything go at once.
#[test]
fn a_sender_that_closes_its_socket_with_a_request_in_flight_is_released_at_once() {
    let handle = broker::start();
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(handle.local_addr(), "receiver");
    receiver.hello(channel, ClientId::random());
    receiver.receive(1);
    let mut sender = RawPeer::named(handle.local_addr(), "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    let id = RequestId::random();
    sender.request(id, 3_600_000, b"never answered");
    receiver.expect(FrameType::Start, Flags::REQUEST, id);
    drop(sender);
    // Its request ends as for any departure: CANCEL to the receiver, long before the timeout.
    receiver.expect(FrameType::Cancel, Flags::REQUEST, id);
    drop(receiver);
    handle.wait_idle(DEADLINE).expect("idle");
}

#[test]
fn a_client_with_nothing_in_flight_that_shuts_its_write_side_is_closed() {
    let handle = broker::start();
    let mut peer = RawPeer::connect(handle.local_addr());
    peer.hello(ChannelId::random(), ClientId::random());
    peer.shutdown_write();
    peer.expect_closed();
    handle.wait_idle(DEADLINE).expect("idle");
}
