//! Blocking and async clients on one channel: each serves the other, through the same broker.
#![cfg(feature = "tokio")]

mod support;

use switchyard_client::{ChannelId, Client};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_async_clients_serve_each_other() {
    let broker = broker();
    let addr = broker.local_addr();
    let channel = ChannelId::random();
    let async_client = connect(&broker, channel).await;
    set_window(&async_client, 1).await;

    // A blocking client asks; the async client answers.
    let asking = tokio::task::spawn_blocking(move || {
        let client = Client::connect(addr, channel).expect("blocking connect");
        let reply = client.request(&pattern(3 << 20, 5), WAIT).expect("reply");
        (client, reply)
    });
    let mut request = async_client.next_request(WAIT).await.expect("a request");
    let body = request.body().await.expect("body");
    assert!(body == pattern(3 << 20, 5), "request body differs");
    request.respond(pattern(2 << 20, 6)).await.expect("respond");
    let (blocking, reply) = asking.await.expect("blocking task");
    assert!(reply == pattern(2 << 20, 6), "reply differs");

    // The async client asks; the blocking client answers. (The async client stops taking
    // requests, or the broker could assign its own request back to it.)
    set_window(&async_client, 0).await;
    blocking.set_receive_window(1).expect("window");
    blocking.ping(WAIT).expect("barrier");
    let serving = tokio::task::spawn_blocking(move || {
        let mut request = blocking.next_request(WAIT).expect("a request");
        let body = request.read_body().expect("body");
        request.respond(&body).expect("respond");
        let broadcast = blocking.next_broadcast(WAIT).expect("a broadcast");
        broadcast.body
    });
    let reply = async_client.request("echo me", WAIT).await.expect("reply");
    assert_eq!(&reply[..], b"echo me");
    let acked = async_client.broadcast("to all", WAIT).await.expect("acked");
    assert_eq!(acked, 1);
    assert_eq!(serving.await.expect("blocking task"), b"to all");
}
