//! Many clients at once through a real broker (issue behaviour 8), the predecessor's
//! TestClientMultipleConcurrent scaled up: 16 sender clients × 16 receiver clients on one
//! channel, bodies of seeded random sizes up to 256 KiB split into 64 KiB frames (so frames of
//! concurrent requests interleave on every connection), each response transformed by its
//! receiver and checked byte for byte; two channels at once that never see each other's
//! traffic; and the predecessor's TestClientBidirectional: one client answering requests on one
//! thread while sending its own on others.
//!
//! Every test ends by closing its clients and asserting the broker is idle (behaviour 9).

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    body::body,
    broker::start_router,
    client::{connect, Responder, Transform},
    gauges::wait_idle,
    now,
};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard::client::{Client, IncomingRequest};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::router::RouterConfig;

/// A timeout long enough never to fire in a passing test, even on a loaded debug build.
const LONG: Duration = Duration::from_secs(60);

/// Bytes at the start of every body: the channel id, then the sender's index and the request's.
const TAG: usize = 16 + 4 + 4;

/// The receivers' deterministic transform: the request's sender id, then the body reversed.
fn transform(incoming: &IncomingRequest, mut body: Vec<u8>) -> Vec<u8> {
    body.reverse();
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(incoming.sender().as_bytes());
    out.extend_from_slice(&body);
    out
}

/// The response a sender expects for `body`.
fn expected(sender: ClientId, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(sender.as_bytes());
    out.extend(body.iter().rev());
    out
}

/// One load scenario: per channel, `senders` clients each sending `per_sender` requests one
/// after another, and `receivers` clients answering with [`transform`].
#[derive(Clone, Copy, Debug)]
struct Load {
    channels: usize,
    senders: usize,
    receivers: usize,
    per_sender: usize,
    max_body: usize,
    window: u32,
    seed: u64,
}

/// Runs the scenario; panics on any wrong, missing, duplicated or cross-channel delivery.
fn run(load: Load) {
    let handle = start_router(RouterConfig {
        max_payload: 64 * 1024,
        ..RouterConfig::default()
    });
    let started = now();
    let mut responders = Vec::new();
    let mut sender_sets = Vec::new();
    for _ in 0..load.channels {
        let channel = ChannelId::random();
        let senders: Vec<Client> = (0..load.senders)
            .map(|_| connect(&handle, channel))
            .collect();
        let own: Arc<HashSet<ClientId>> = Arc::new(senders.iter().map(Client::client_id).collect());
        for _ in 0..load.receivers {
            let own = Arc::clone(&own);
            responders.push(Responder::spawn(
                connect(&handle, channel),
                load.window,
                move |incoming, body| {
                    // Only this channel's senders, only this channel's bodies.
                    assert!(
                        own.contains(&incoming.sender()),
                        "a request from another channel's sender"
                    );
                    assert_eq!(&body[..16], channel.as_bytes(), "another channel's body");
                    transform(incoming, body)
                },
            ));
        }
        sender_sets.push(senders);
    }

    thread::scope(|s| {
        for (c, senders) in sender_sets.iter().enumerate() {
            for (k, sender) in senders.iter().enumerate() {
                let seed = load.seed ^ ((c as u64) << 32) ^ k as u64;
                s.spawn(move || send_all(sender, load, seed, k as u32));
            }
        }
    });
    let sent = started.elapsed();

    let total = load.channels * load.senders * load.per_sender;
    let mut answered = 0;
    for responder in responders {
        let served = responder.stop();
        assert_eq!(served.failed, 0, "a receiver lost a request");
        answered += served.answered;
    }
    assert_eq!(answered, total, "answers across receivers");
    drop(sender_sets);
    wait_idle(&handle);
    eprintln!("{load:?}: {total} requests in {sent:?}");
}

/// One sender client's requests, one after another, each response checked byte for byte.
fn send_all(sender: &Client, load: Load, seed: u64, index: u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let channel = sender.channel_id();
    for i in 0..load.per_sender {
        let len = rng.gen_range(TAG..=load.max_body);
        let mut request = body(rng.gen(), len);
        request[..16].copy_from_slice(channel.as_bytes());
        request[16..20].copy_from_slice(&index.to_be_bytes());
        request[20..24].copy_from_slice(&(i as u32).to_be_bytes());
        let reply = sender
            .request(&request, LONG)
            .unwrap_or_else(|e| panic!("request {i} of sender {index}: {e}"));
        assert!(
            reply == expected(sender.client_id(), &request),
            "response {i} of sender {index} ({len} bytes) differs"
        );
    }
}

/// 16 × 16 on one channel, full size: about 3.5 s in a debug build on 2 cores.
#[test]
fn sixteen_senders_and_sixteen_receivers_on_one_channel() {
    run(Load {
        channels: 1,
        senders: 16,
        receivers: 16,
        per_sender: 200,
        max_body: 256 * 1024,
        window: 1,
        seed: 0xC0FFEE,
    });
}

#[test]
fn two_channels_never_see_each_others_traffic() {
    run(Load {
        channels: 2,
        senders: 8,
        receivers: 8,
        per_sender: 100,
        max_body: 256 * 1024,
        window: 2,
        seed: 0xBEEF,
    });
}

#[test]
fn one_client_answers_requests_while_sending_its_own() {
    const THREADS: usize = 3;
    const PER_THREAD: usize = 50;
    let handle = start_router(RouterConfig {
        max_payload: 16 * 1024,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    // Two clients that are each both sender and receiver (window 4): a request of one may be
    // answered by the other or by itself.
    let clients: Vec<Arc<Client>> = (0..2)
        .map(|_| Arc::new(connect(&handle, channel)))
        .collect();
    let shared: Arc<Transform> = Arc::new(transform);
    let responders: Vec<Responder> = clients
        .iter()
        .map(|c| Responder::spawn_shared(Arc::clone(c), 4, Arc::clone(&shared)))
        .collect();

    let responders_seen: Vec<Vec<ClientId>> = thread::scope(|s| {
        let threads: Vec<_> = clients
            .iter()
            .enumerate()
            .flat_map(|(c, client)| (0..THREADS).map(move |t| (c, t, client)))
            .map(|(c, t, client)| {
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64((c * THREADS + t) as u64);
                    let mut seen = Vec::new();
                    for _ in 0..PER_THREAD {
                        let request = body(rng.gen(), rng.gen_range(0..=48 * 1024));
                        let mut response = client
                            .request_with(
                                &mut request.as_slice(),
                                switchyard::client::RequestOptions {
                                    timeout: Some(LONG),
                                    no_wait: false,
                                },
                            )
                            .expect("request");
                        seen.push(response.responder());
                        let mut reply = Vec::new();
                        std::io::Read::read_to_end(&mut response, &mut reply).expect("response");
                        assert!(reply == expected(client.client_id(), &request));
                    }
                    seen
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ids: HashSet<ClientId> = clients.iter().map(|c| c.client_id()).collect();
    assert!(responders_seen.iter().flatten().all(|r| ids.contains(r)));

    let answered: usize = responders.into_iter().map(|r| r.stop().answered).sum();
    assert_eq!(answered, 2 * THREADS * PER_THREAD);
    drop(clients);
    wait_idle(&handle);
}
