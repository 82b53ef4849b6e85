//! Bystanders: a sender and a receiver on one channel, connected before a misbehaving client,
//! that must still complete a request/reply round trip afterwards with nothing unexpected in
//! their inboxes (and see the bad client's presence frames when it joined their channel). The
//! harness of the bad-input tests (PROTOCOL.md §10): [`case`] runs one.

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType};
use switchyard::server::{ServerConfig, ServerHandle};

use crate::broker::{start, start_with};
use crate::gauges::wait_idle;
use crate::raw::RawPeer;

/// Presence frames the bystanders must see, in order, before their round trip.
pub type Presence = Vec<(FrameType, ClientId)>;

/// A sender and a receiver (window 1) on one channel, connected before any bad client.
pub struct Bystanders {
    /// The sender.
    pub sender: RawPeer,
    /// The receiver (window 1).
    pub receiver: RawPeer,
    /// Their channel.
    pub channel: ChannelId,
    /// Round trips done so far.
    pub round_trips: u32,
}

impl Bystanders {
    /// Connects the pair to a new channel of the broker at `handle` and makes the receiver ready.
    #[track_caller]
    pub fn join(handle: &ServerHandle) -> Bystanders {
        let addr = handle.local_addr();
        let channel = ChannelId::random();
        let mut receiver = RawPeer::named(addr, "bystander-receiver");
        let welcome = receiver.hello(channel, ClientId::random());
        assert!(welcome.peers.is_empty());
        let mut sender = RawPeer::named(addr, "bystander-sender");
        let welcome = sender.hello(channel, ClientId::random());
        assert_eq!(welcome.peers, vec![receiver.client]);
        receiver.expect_presence(FrameType::PeerJoined, sender.client);
        receiver.receive(1);
        // The RECEIVE is handled before the PONG is queued: the receiver is ready from here on.
        receiver.barrier();
        sender.barrier();
        Bystanders {
            sender,
            receiver,
            channel,
            round_trips: 0,
        }
    }

    /// One request/reply with `body` going both ways; checks every forwarded field.
    #[track_caller]
    pub fn round_trip(&mut self, body: &[u8]) {
        self.round_trips += 1;
        let id = RequestId::random();
        self.sender.request(id, 5_000, body);
        let start = self.receiver.expect(FrameType::Start, Flags::REQUEST, id);
        assert!(start.header.is_final);
        assert_eq!(start.header.sequence, 0);
        assert_eq!(start.header.client_id, self.sender.client);
        assert_eq!(start.header.channel_id, self.channel);
        assert!((1..=5_000).contains(&start.header.timeout_ms));
        assert_eq!(&start.payload[..], body);
        self.receiver.respond(id, body);
        let reply = self.sender.expect(FrameType::Start, Flags::RESPONSE, id);
        assert!(reply.header.is_final);
        assert_eq!(reply.header.client_id, self.receiver.client);
        assert_eq!(reply.header.channel_id, self.channel);
        assert_eq!(&reply.payload[..], body);
    }

    /// Both bystanders get one presence frame now (consumed before a case's own traffic).
    #[track_caller]
    pub fn saw(&mut self, kind: FrameType, client: ClientId) {
        self.sender.expect_presence(kind, client);
        self.receiver.expect_presence(kind, client);
    }

    /// Both bystanders get exactly `presence`, then a round trip works, then both inboxes are
    /// empty.
    #[track_caller]
    pub fn check(&mut self, presence: &[(FrameType, ClientId)]) {
        for peer in [&mut self.sender, &mut self.receiver] {
            for &(kind, who) in presence {
                peer.expect_presence(kind, who);
            }
        }
        self.round_trip(b"still fine?");
        self.sender.barrier();
        self.receiver.barrier();
    }
}

/// Runs one §10 case: bystanders first, then `bad` (given the broker and the bystanders, it
/// drives the bad clients to their end and returns the presence frames the bystanders must
/// have seen), then the bystanders' check, then everyone leaves and the broker must be idle.
#[track_caller]
pub fn case(
    config: Option<ServerConfig>,
    bad: impl FnOnce(&ServerHandle, &mut Bystanders) -> Presence,
) {
    let handle = match config {
        Some(config) => start_with(config),
        None => start(),
    };
    let mut bystanders = Bystanders::join(&handle);
    let presence = bad(&handle, &mut bystanders);
    bystanders.check(&presence);
    drop(bystanders);
    let stats = wait_idle(&handle);
    assert_eq!(stats.accepted, stats.closed);
}

/// A bad client that joined the bystanders' channel and was (or will be) closed: the presence
/// the bystanders see for it.
pub fn came_and_went(client: ClientId) -> Presence {
    vec![
        (FrameType::PeerJoined, client),
        (FrameType::PeerLeft, client),
    ]
}

/// A fresh connection that completed its handshake on the bystanders' channel.
#[track_caller]
pub fn joined(handle: &ServerHandle, by: &Bystanders, name: &str) -> RawPeer {
    let mut peer = RawPeer::named(handle.local_addr(), name);
    let welcome = peer.hello(by.channel, ClientId::random());
    let mut expected = vec![by.receiver.client, by.sender.client];
    let mut got = welcome.peers.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{name}: welcome peers");
    peer
}
