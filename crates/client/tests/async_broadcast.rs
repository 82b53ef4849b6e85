//! The async client's broadcast (with acks) and presence over real sockets.
#![cfg(feature = "tokio")]

mod support;

use std::time::Duration;

use switchyard_client::{ChannelId, Error, PresenceEvent};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_peer_and_is_acked() {
    let broker = broker();
    let channel = ChannelId::random();
    let a = connect(&broker, channel).await;
    let result = a.broadcast("alone", WAIT).await;
    assert!(matches!(result, Err(Error::NoPeers)), "{result:?}");
    let b = connect(&broker, channel).await;
    let c = connect(&broker, channel).await;
    let body = pattern(3 << 20, 9); // several frames
    let listening: Vec<_> = [b.clone(), c.clone()]
        .into_iter()
        .map(|peer| tokio::spawn(async move { peer.next_broadcast(WAIT).await }))
        .collect();
    let acked = a.broadcast(body.clone(), WAIT).await.expect("acked");
    assert_eq!(acked, 2);
    for listener in listening {
        let broadcast = listener.await.expect("task").expect("a broadcast");
        assert_eq!(broadcast.sender, a.client_id());
        assert!(broadcast.body == body, "broadcast body differs");
    }
    let result = b.next_broadcast(Duration::from_millis(20)).await;
    assert!(matches!(result, Err(Error::WaitElapsed)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_joins_and_leaves() {
    let broker = broker();
    let channel = ChannelId::random();
    let a = connect(&broker, channel).await;
    assert!(a.peers().is_empty());
    let b = connect(&broker, channel).await;
    assert_eq!(b.peers(), vec![a.client_id()]);
    let event = a.next_presence(WAIT).await.expect("join");
    assert_eq!(event, PresenceEvent::Joined(b.client_id()));
    assert_eq!(a.peers(), vec![b.client_id()]);
    assert_eq!(
        a.fetch_peers(WAIT).await.expect("peers"),
        vec![b.client_id()]
    );
    let b_id = b.client_id();
    let b_clone = b.clone();
    drop(b);
    // A clone keeps the connection: nothing left yet.
    b_clone.ping(WAIT).await.expect("the clone still works");
    drop(b_clone);
    let event = a.next_presence(WAIT).await.expect("leave");
    assert_eq!(event, PresenceEvent::Left(b_id));
    assert!(a.peers().is_empty());
}
