//! The session against scripted broker frames: routing by direction, order, fatal errors,
//! lost links and bounded queues.

use super::*;
use switchyard_proto::encode_error;

fn session() -> Session {
    let ids = Ids {
        client: ClientId::random(),
        channel: ChannelId::random(),
    };
    Session::new(
        ids,
        1024,
        Vec::new(),
        Capacities {
            broadcasts: 2,
            presence: 2,
            states: 2,
        },
    )
}

fn frame(
    s: &Session,
    frame_type: FrameType,
    flags: Flags,
    id: RequestId,
    seq: u32,
    fin: bool,
) -> Frame {
    let mut f = s
        .ids
        .frame(frame_type, flags, id, seq, fin, Bytes::from_static(b"x"));
    f.header.client_id = ClientId::from_bytes([7; 16]);
    f
}

#[test]
fn self_assigned_request_is_routed_by_direction() {
    let mut s = session();
    let (tx, rx) = crate::chan::channel();
    let id = s.register_request(tx).unwrap();
    // The broker assigns our own request to us.
    s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, id, 0, true))
        .unwrap();
    let incoming = s.pop_request().expect("queued");
    assert_eq!(incoming.id, id);
    assert!(rx.try_recv().is_err(), "nothing for the sender yet");
    s.handle_frame(frame(&s, FrameType::Start, Flags::RESPONSE, id, 0, true))
        .unwrap();
    assert!(matches!(
        rx.try_recv(),
        Ok(StreamEvent::Start { is_final: true, .. })
    ));
    assert!(s.forget_incoming(id));
    assert_eq!(s.tracked(), 0);
}

#[test]
fn out_of_order_response_fails_and_cancels() {
    let mut s = session();
    let (tx, rx) = crate::chan::channel();
    let id = s.register_request(tx).unwrap();
    s.handle_frame(frame(&s, FrameType::Chunk, Flags::RESPONSE, id, 1, false))
        .unwrap();
    assert!(matches!(
        rx.try_recv(),
        Ok(StreamEvent::Failed(Error::Protocol(_)))
    ));
    let cancel = s.poll_output().expect("cancel");
    assert_eq!(cancel.header.frame_type, FrameType::Cancel);
    assert_eq!(cancel.header.flags, Flags::REQUEST);
    assert_eq!(s.tracked(), 0);
}

#[test]
fn fatal_error_and_garbage_never_panic() {
    let mut s = session();
    let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
    f.payload = Bytes::from_static(&[0, 1, 0xff]);
    assert!(matches!(s.handle_frame(f), Err(Error::Protocol(_))));
    // GOING_AWAY is not fatal by itself: the broker drains, nothing new may start.
    let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
    f.payload = encode_error(0x000A, "bye", &[]);
    assert!(s.handle_frame(f).is_ok());
    let (events, _rx) = crate::chan::channel();
    assert!(matches!(s.register_request(events), Err(Error::GoingAway)));
    // Reported once as Draining, with GOING_AWAY as the cause.
    assert_eq!(s.connection_state(), ConnectionState::Draining);
    let change = s.pop_state_change().expect("a change");
    assert_eq!(change.state, ConnectionState::Draining);
    assert!(matches!(change.cause, Some(Error::GoingAway)));
    assert!(s.take_wakeups().states);
    let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
    f.payload = encode_error(0x000B, "silent", &[]);
    assert!(matches!(
        s.handle_frame(f),
        Err(Error::Broker { code: 0x000B, .. })
    ));
    // The codes a user acts on are typed.
    for (code, typed) in [(0x000C, Error::Replaced), (0x000D, Error::Unauthorized)] {
        let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
        f.payload = encode_error(code, "no", &[]);
        let got = s.handle_frame(f).expect_err("fatal");
        assert_eq!(got.to_string(), typed.to_string());
        assert_eq!(got.code().map(|c| c as u16), Some(code));
        assert!(got.is_connection_fatal());
    }
    let f = frame(
        &s,
        FrameType::Start,
        Flags::REQUEST | Flags::RESPONSE,
        RequestId::random(),
        0,
        true,
    );
    assert!(s.handle_frame(f).is_err());
}

#[test]
fn limit_exceeded_is_fatal_with_a_nil_request_id_only() {
    let mut s = session();
    // For an untracked request: ignored, the connection goes on.
    let mut f = frame(
        &s,
        FrameType::Error,
        Flags::NONE,
        RequestId::random(),
        0,
        true,
    );
    f.payload = encode_error(0x0109, "queue full", &[]);
    assert!(s.handle_frame(f).is_ok());
    // For a tracked one: that request fails.
    let (tx, rx) = crate::chan::channel();
    let id = s.register_request(tx).unwrap();
    let mut f = frame(&s, FrameType::Error, Flags::NONE, id, 0, true);
    f.payload = encode_error(0x0109, "too many in flight", &[]);
    assert!(s.handle_frame(f).is_ok());
    assert!(matches!(
        rx.try_recv(),
        Ok(StreamEvent::Failed(Error::Broker { code: 0x0109, .. }))
    ));
    // With a nil request id: a connection limit, fatal for the connection.
    let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, true);
    f.payload = encode_error(0x0109, "too many peers", &[]);
    assert!(matches!(
        s.handle_frame(f),
        Err(Error::Broker { code: 0x0109, .. })
    ));
}

#[test]
fn a_lost_link_fails_what_is_in_flight_and_keeps_the_window() {
    let mut s = session();
    assert!(s.set_window(4).is_ok());
    let (tx, rx) = crate::chan::channel();
    let id = s.register_request(tx).unwrap();
    s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, id, 0, false))
        .unwrap();
    assert!(s.pop_request().is_some());
    let queued = RequestId::random();
    s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, queued, 0, true))
        .unwrap();
    assert!(s.handle_disconnect(Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
    assert!(!s.handle_disconnect(Error::Closed), "already down");
    assert!(matches!(
        rx.try_recv(),
        Ok(StreamEvent::Failed(Error::ConnectionLost))
    ));
    assert_eq!(s.tracked(), 0);
    assert!(
        s.pop_request().is_none(),
        "the old connection's requests are gone"
    );
    let (tx, _rx) = crate::chan::channel();
    assert!(matches!(s.register_request(tx), Err(Error::Reconnecting)));
    assert!(s.handle_attempt_failed(Error::Timeout));
    assert_eq!(
        s.connection_state(),
        ConnectionState::Reconnecting { attempt: 2 }
    );
    let peer = ClientId::random();
    assert!(s.handle_reconnected(2048, vec![peer]));
    assert_eq!(s.connection_state(), ConnectionState::Connected);
    assert_eq!(s.window(), 4);
    assert_eq!(s.pop_presence(), Some(PresenceEvent::Joined(peer)));
    let states: Vec<_> = std::iter::from_fn(|| s.pop_state_change())
        .map(|change| change.state)
        .collect();
    // The queue holds 2: the oldest (attempt 1) was dropped.
    assert_eq!(
        states,
        [
            ConnectionState::Reconnecting { attempt: 2 },
            ConnectionState::Connected
        ]
    );
    assert!(s.close(Error::Closed));
    assert!(
        !s.handle_reconnected(1024, Vec::new()),
        "closed is terminal"
    );
}

#[test]
fn bounded_queues() {
    let mut s = session();
    for _ in 0..5 {
        let f = frame(
            &s,
            FrameType::PeerJoined,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
        );
        s.handle_frame(f).unwrap();
    }
    assert_eq!(std::iter::from_fn(|| s.pop_presence()).count(), 2);
    for _ in 0..3 {
        let id = RequestId::random();
        s.handle_frame(frame(
            &s,
            FrameType::Start,
            Flags::REQUEST | Flags::BROADCAST,
            id,
            0,
            true,
        ))
        .unwrap();
    }
    assert_eq!(std::iter::from_fn(|| s.pop_broadcast()).count(), 2);
}

#[test]
fn presence_overflow_resyncs_the_peer_list_and_reports_the_difference() {
    let mut s = session();
    let (kept, gone, missed) = (ClientId::random(), ClientId::random(), ClientId::random());
    for peer in [kept, gone] {
        let mut f = frame(
            &s,
            FrameType::PeerJoined,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
        );
        f.header.client_id = peer;
        s.handle_frame(f).unwrap();
        s.pop_presence();
    }
    // The broker dropped events while we were behind: a notice, not fatal.
    let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, true);
    f.payload = encode_error(0x0200, "re-sync", &[]);
    s.handle_frame(f).expect("not fatal");
    assert_eq!(s.pop_presence(), Some(PresenceEvent::Resync));
    let query = s.poll_output().expect("a PEERS query");
    assert_eq!(query.header.frame_type, FrameType::Peers);
    // The answer: the difference comes as events, and `peers` is the list.
    let mut f = frame(&s, FrameType::Peers, Flags::NONE, RequestId::NIL, 0, true);
    f.payload = switchyard_proto::encode_peers(&[kept, missed]);
    s.handle_frame(f).unwrap();
    let events: Vec<_> = std::iter::from_fn(|| s.pop_presence()).collect();
    assert_eq!(
        events,
        [PresenceEvent::Left(gone), PresenceEvent::Joined(missed)]
    );
    assert_eq!(s.peers(), [kept, missed]);
}
