//! Resource exhaustion (issue 5, item 4); running out of file descriptors is
//! `tests/descriptor_exhaustion.rs`.
//!
//! - A flood of senders into a channel nobody receives on: the broker's buffered bytes stay under
//!   a bound derived from its configuration, the excess gets the documented answers (the channel's
//!   waiting-request limit: LIMIT_EXCEEDED; NO_WAIT: NO_RECEIVER; the rest NO_RECEIVER at their
//!   timeout; large request bodies pause their sender instead of being buffered, PROTOCOL.md §13.8),
//!   a bystander channel is served with normal latency throughout, and every count returns to
//!   zero.
//! - A client that floods requests the broker must answer with errors (or PINGs) and never reads
//!   the answers: its own outbound queue stays under the high watermark bound — the broker stops
//!   reading it instead of buffering answers without bound.
//! - The channel's limit of waiting requests over real sockets (the router's unit test has the
//!   logic; this is the wire view: which ids are refused, and FIFO service afterwards).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    broker::{self, start_with},
    gauges::{wait_for, wait_idle, with_peak_buffered},
    now,
    raw::{self, RawPeer},
    sockets, SetOnDrop,
};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorBody, ErrorCode, Flags, FrameType, Header, HEADER_LEN};
use switchyard::server::ServerConfig;

// ----- a flood of senders with no receivers ----------------------------------------------

/// Payload of one frame in the flood tests (and the broker's max payload there).
const FRAME: usize = 16 << 10;

/// Encodes one frame (header with `payload_len` set, then the payload).
fn wire(mut header: Header, payload: &[u8]) -> Vec<u8> {
    header.payload_len = u32::try_from(payload.len()).unwrap();
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A request-direction stream frame of `peer`'s.
fn request_frame(
    peer: &RawPeer,
    kind: FrameType,
    id: RequestId,
    sequence: u32,
    is_final: bool,
    timeout_ms: u32,
) -> Header {
    Header {
        flags: Flags::REQUEST,
        request_id: id,
        sequence,
        is_final,
        timeout_ms,
        ..peer.header(kind)
    }
}

/// The most bytes the broker may hold for `connections` clients, from its configuration — each
/// connection's worst case, whatever its role:
/// - frames held for its waiting requests: the allowance (`max_held_bytes`), plus the frame
///   that crossed it (the sender is paused after that frame is held);
/// - its outbound queue: the high watermark, plus the frame that crossed it (then whoever feeds
///   it is paused: another client, or itself for answers to its own frames);
/// - its read buffer: a partial frame plus at most one read budget of bytes read past it before
///   a pause took effect.
fn per_connection_bound(config: &ServerConfig) -> usize {
    let router = &config.router;
    let frame = HEADER_LEN + router.max_payload as usize;
    (router.max_held_bytes + frame) + (router.high_watermark + frame) + (frame + config.read_budget)
}

/// The flood test's broker: small frames, allowances and queues, so the bounds are reached in
/// a few MiB, and a channel limit of 16 waiting requests.
fn flood_config() -> ServerConfig {
    let mut config = broker::config();
    config.router.max_payload = FRAME as u32;
    config.router.max_held_bytes = 64 << 10;
    config.router.high_watermark = 256 << 10;
    config.router.low_watermark = 64 << 10;
    config.router.max_waiting_per_channel = 16;
    config
}

/// Senders streaming one large request each (START and CHUNKs, never the END).
const STREAMERS: usize = 4;
/// What each streamer tries to send: far more than the broker may hold for it.
const STREAM_OFFERED: usize = 32 << 20;
/// Senders of many small one-frame requests.
const SPAMMERS: usize = 4;
/// Requests per spammer that may wait for a receiver (timeout [`SPAM_TIMEOUT_MS`]).
const SPAM_WAITING: usize = 20;
/// NO_WAIT requests per spammer.
const SPAM_NO_WAIT: usize = 5;
const SPAM_TIMEOUT_MS: u32 = 400;

/// Streams START + CHUNKs of `FRAME` zero bytes until `STREAM_OFFERED` bytes or a write error
/// (the test shuts the socket down to end it). Returns the bytes written.
fn stream_forever(peer: &RawPeer, id: RequestId) -> usize {
    let mut socket = peer.try_clone_stream();
    let body = vec![0u8; FRAME];
    let mut written = 0;
    let mut seq = 0;
    while written < STREAM_OFFERED {
        let kind = if seq == 0 {
            FrameType::Start
        } else {
            FrameType::Chunk
        };
        let header = request_frame(peer, kind, id, seq, false, 60_000);
        if socket.write_all(&wire(header, &body)).is_err() {
            break;
        }
        written += FRAME;
        seq += 1;
    }
    written
}

/// Sends `SPAM_NO_WAIT` NO_WAIT requests and `SPAM_WAITING` waiting ones (1 KiB each), then
/// reads until every one has its answer; returns the answers' codes (one per request, checked).
fn spam(peer: &mut RawPeer) -> Vec<ErrorCode> {
    let mut ids = Vec::new();
    let mut burst = Vec::new();
    for i in 0..SPAM_NO_WAIT + SPAM_WAITING {
        let id = RequestId::random();
        let mut header = request_frame(peer, FrameType::Start, id, 0, true, SPAM_TIMEOUT_MS);
        if i < SPAM_NO_WAIT {
            header.flags = Flags::REQUEST | Flags::NO_WAIT;
        }
        burst.extend_from_slice(&wire(header, &[7u8; 1024]));
        ids.push(id);
    }
    peer.send_bytes(&burst);
    let mut codes = Vec::new();
    let total = ids.len();
    while codes.len() < total {
        let frame = peer.recv();
        match frame.header.frame_type {
            FrameType::PeerJoined | FrameType::PeerLeft => continue,
            FrameType::Error => {}
            _ => panic!("{}: unexpected {}", peer.name, raw::describe(&frame)),
        }
        let at = ids.iter().position(|id| *id == frame.header.request_id);
        let at = at.unwrap_or_else(|| panic!("{}: an answer for no request", peer.name));
        ids.swap_remove(at);
        let body = ErrorBody::decode(&frame.payload).expect("an error body");
        codes.push(body.known_code().expect("a known code"));
    }
    codes
}

/// Request/replies between two bystanders on their own channel until `stop`; returns each
/// round trip's latency.
fn bystander_round_trips(
    asker: &mut RawPeer,
    responder: &mut RawPeer,
    stop: &AtomicBool,
) -> Vec<Duration> {
    thread::scope(|s| {
        s.spawn(|| loop {
            let frame = responder.recv_kind(FrameType::Start, true);
            responder.respond(frame.header.request_id, &frame.payload);
            if &frame.payload[..] == b"last" {
                return;
            }
        });
        let mut latencies = Vec::new();
        loop {
            let last = stop.load(Ordering::Relaxed);
            let body: &[u8] = if last { b"last" } else { b"ping" };
            let id = RequestId::random();
            let started = now();
            asker.request(id, 5_000, body);
            let reply = asker.expect(FrameType::Start, Flags::RESPONSE, id);
            latencies.push(started.elapsed());
            assert_eq!(&reply.payload[..], body);
            if last {
                return latencies;
            }
        }
    })
}

#[test]
fn a_flood_of_senders_without_receivers_stays_bounded_gets_its_answers_and_spares_bystanders() {
    let config = flood_config();
    let connections = STREAMERS + SPAMMERS + 2;
    let bound = connections * per_connection_bound(&config);
    let handle = start_with(config.clone());
    let addr = handle.local_addr();

    let quiet = ChannelId::random();
    let mut responder = RawPeer::named(addr, "bystander-receiver");
    responder.hello(quiet, ClientId::random());
    let mut asker = RawPeer::named(addr, "bystander-sender");
    asker.hello(quiet, ClientId::random());
    responder.expect_presence(FrameType::PeerJoined, asker.client);
    responder.receive(1);
    responder.barrier();

    let flooded = ChannelId::random();
    let streamers: Vec<RawPeer> = (0..STREAMERS)
        .map(|i| {
            let mut peer = RawPeer::named(addr, &format!("streamer-{i}"));
            peer.hello(flooded, ClientId::random());
            peer
        })
        .collect();
    let mut spammers: Vec<RawPeer> = (0..SPAMMERS)
        .map(|i| {
            let mut peer = RawPeer::named(addr, &format!("spammer-{i}"));
            peer.hello(flooded, ClientId::random());
            peer
        })
        .collect();

    let stop = AtomicBool::new(false);
    let ((latencies, codes, offered), peak) = with_peak_buffered(&handle, || {
        thread::scope(|s| {
            let bystanders = s.spawn(|| bystander_round_trips(&mut asker, &mut responder, &stop));
            // Failing or not, the bystanders' loop ends with the test.
            let _stop_bystanders = SetOnDrop(&stop);
            let writers: Vec<_> = streamers
                .iter()
                .map(|peer| s.spawn(move || stream_forever(peer, RequestId::random())))
                .collect();
            // Each streamer's request waits; once it holds its allowance, the broker stops
            // reading it (PROTOCOL.md §9, §13.8): no error, no more bytes taken.
            let paused = wait_for(&handle, "every streamer paused", |st| {
                st.router.pending_requests == STREAMERS && st.router.paused_connections == STREAMERS
            });
            // Tighter, for the streamers alone: each holds its allowance plus the frame that
            // crossed it, and a read buffer of at most a partial frame plus one read budget.
            let frame = HEADER_LEN + FRAME;
            let held_bound = STREAMERS * (config.router.max_held_bytes + frame) + 64 * 1024;
            let read_bound = STREAMERS * (frame + config.read_budget);
            assert!(paused.router.buffered_bytes <= held_bound, "{paused:?}");
            assert!(paused.read_buffered_bytes <= read_bound, "{paused:?}");
            // The channel's remaining places go to the first spammer requests; the rest are
            // refused at once, NO_WAIT ones find no receiver, the waiting ones time out.
            let codes: Vec<ErrorCode> = thread::scope(|s| {
                let spamming: Vec<_> = spammers.iter_mut().map(|p| s.spawn(|| spam(p))).collect();
                spamming
                    .into_iter()
                    .flat_map(|t| t.join().unwrap())
                    .collect()
            });
            // The streamers are still paused and still waiting: held, not refused, not read.
            let now = handle.stats().unwrap();
            assert_eq!(now.router.pending_requests, STREAMERS, "{now:?}");
            assert_eq!(now.router.paused_connections, STREAMERS, "{now:?}");
            stop.store(true, Ordering::Relaxed);
            let latencies = bystanders.join().unwrap();
            // End the streams: the broker sees the streamers go (their requests are dropped).
            for peer in &streamers {
                let _ = peer.stream().shutdown(std::net::Shutdown::Both);
            }
            let offered: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
            (latencies, codes, offered)
        })
    });

    let count = |code| codes.iter().filter(|c| **c == code).count();
    let places = 16 - STREAMERS;
    assert_eq!(codes.len(), SPAMMERS * (SPAM_NO_WAIT + SPAM_WAITING));
    assert_eq!(
        count(ErrorCode::LimitExceeded),
        SPAMMERS * SPAM_WAITING - places,
        "refused beyond the channel's limit"
    );
    assert_eq!(
        count(ErrorCode::NoReceiver),
        SPAMMERS * SPAM_NO_WAIT + places,
        "NO_WAIT at once, the waiting ones at their timeout"
    );
    let mut sorted = latencies.clone();
    sorted.sort();
    let (median, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    println!(
        "flood: peak buffered {peak} bytes (bound {bound}); the streamers wrote {} MiB; \
         bystander round trips: {} (median {median:?}, max {max:?})",
        offered >> 20,
        latencies.len()
    );
    assert!(
        peak <= bound,
        "buffered {peak} bytes, over the bound of {bound}"
    );
    assert!(
        peak >= STREAMERS * config.router.max_held_bytes,
        "the streamers never filled their allowances (peak {peak})"
    );
    assert!(
        offered < STREAMERS * STREAM_OFFERED,
        "no streamer was ever blocked"
    );
    assert!(
        latencies.len() >= 5,
        "only {} bystander round trips",
        latencies.len()
    );
    assert!(max < Duration::from_secs(1), "a bystander waited {max:?}");

    drop((streamers, spammers, asker, responder));
    wait_idle(&handle);
}

// ----- a client that never reads its answers -----------------------------------------------

/// Frames the non-reader sends: far more answers than the socket buffers of both ends absorb
/// (a few MiB), so that without a bound the broker's queue for it would grow by megabytes.
const UNREAD_FRAMES: usize = 200_000;

#[test]
fn a_client_that_never_reads_its_answers_is_paused_not_buffered_for() {
    let mut config = broker::config();
    config.router.max_payload = 4096;
    config.router.high_watermark = 64 << 10;
    config.router.low_watermark = 16 << 10;
    config.read_budget = 64 << 10;
    // Its own queue: the high watermark plus the answer that crossed it (a few hundred bytes at
    // most); its read buffer: a partial frame plus one read budget; and its welcome.
    let frame = HEADER_LEN + config.router.max_payload as usize;
    let bound = (config.router.high_watermark + 512) + (frame + config.read_budget) + 1024;
    let handle = start_with(config);
    let addr = handle.local_addr();
    let mut bystander = RawPeer::named(addr, "bystander");
    bystander.hello(ChannelId::random(), ClientId::random());

    let mut flooder = RawPeer::named(addr, "non-reader");
    sockets::small_receive_buffer(flooder.stream());
    flooder.hello(ChannelId::random(), ClientId::random());
    // PINGs and NO_WAIT requests on a channel with no receiver: every frame is answered (PONG,
    // ERROR NO_RECEIVER) to the flooder itself.
    let mut burst = Vec::new();
    let mut ids = Vec::new();
    for i in 0..1000u32 {
        if i % 2 == 0 {
            let ping = Header {
                sequence: i,
                ..flooder.header(FrameType::Ping)
            };
            burst.extend_from_slice(&wire(ping, &[]));
        } else {
            let id = RequestId::from_bytes((u128::from(i) + 1).to_be_bytes());
            ids.push(id);
            let start = Header {
                flags: Flags::REQUEST | Flags::NO_WAIT,
                request_id: id,
                is_final: true,
                ..flooder.header(FrameType::Start)
            };
            burst.extend_from_slice(&wire(start, b"?"));
        }
    }
    let mut socket = flooder.try_clone_stream();
    let (stats, peak) = with_peak_buffered(&handle, || {
        thread::scope(|s| {
            let writer = s.spawn(move || {
                for _ in 0..UNREAD_FRAMES / 1000 {
                    socket.write_all(&burst).expect("the flood");
                }
            });
            // The broker stops reading the flooder once its unread answers pass the watermark.
            let paused = wait_for(&handle, "the non-reader is paused", |st| {
                st.router.paused_connections == 1
            });
            assert!(!writer.is_finished(), "the whole flood was taken in");
            // A bystander is served meanwhile.
            bystander.barrier();
            // The flooder reads again: every answer arrives, in order, and its writes finish.
            let mut reader = io::BufReader::with_capacity(64 << 10, flooder.try_clone_stream());
            let mut head = [0u8; HEADER_LEN];
            let mut payload = Vec::new();
            for n in 0..UNREAD_FRAMES {
                reader.read_exact(&mut head).expect("an answer");
                let header = Header::parse(&head).expect("a header");
                payload.resize(header.payload_len as usize, 0);
                reader.read_exact(&mut payload).expect("its payload");
                let i = (n % 1000) as u32;
                if i.is_multiple_of(2) {
                    assert_eq!((header.frame_type, header.sequence), (FrameType::Pong, i));
                } else {
                    assert_eq!(header.frame_type, FrameType::Error);
                    assert_eq!(
                        header.request_id,
                        RequestId::from_bytes((u128::from(i) + 1).to_be_bytes())
                    );
                    let body = ErrorBody::decode(&payload).expect("an error body");
                    assert_eq!(body.known_code(), Some(ErrorCode::NoReceiver));
                }
            }
            writer.join().unwrap();
            paused
        })
    });
    println!(
        "non-reader: paused at {} buffered bytes; peak {peak} (bound {bound})",
        stats.buffered_bytes()
    );
    assert!(stats.router.backpressure_pauses >= 1);
    assert!(
        peak <= bound,
        "buffered {peak} bytes, over the bound of {bound}"
    );
    flooder.barrier();
    drop((flooder, bystander));
    wait_idle(&handle);
}

// ----- the channel's limit of waiting requests, on the wire --------------------------------

#[test]
fn requests_beyond_the_channels_waiting_limit_get_limit_exceeded_and_the_rest_are_served_in_order()
{
    let mut config = broker::config();
    config.router.max_waiting_per_channel = 3;
    let handle = start_with(config);
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut sender = RawPeer::named(addr, "sender");
    sender.hello(channel, ClientId::random());
    let mut other = RawPeer::named(addr, "other-channel");
    other.hello(ChannelId::random(), ClientId::random());

    let ids: Vec<RequestId> = (0..5).map(|_| RequestId::random()).collect();
    for (i, id) in ids.iter().enumerate() {
        sender.request(*id, 10_000, format!("request {i}").as_bytes());
    }
    // The fourth and fifth find three waiting: refused at once, by id; the first three wait.
    for id in &ids[3..] {
        let body = sender.expect_error(ErrorCode::LimitExceeded, *id);
        assert!(
            body.message.contains("3 requests waiting"),
            "{}",
            body.message
        );
    }
    sender.barrier();
    wait_for(&handle, "three waiting", |st| {
        st.router.pending_requests == 3
    });
    // Another channel has its own places.
    let elsewhere = RequestId::random();
    other.send_stream(
        FrameType::Start,
        Flags::REQUEST | Flags::NO_WAIT,
        elsewhere,
        0,
        true,
        b"",
    );
    other.expect_error(ErrorCode::NoReceiver, elsewhere);

    // A receiver arrives: the waiting ones, first come first served; a freed place is taken.
    let mut receiver = RawPeer::named(addr, "receiver");
    receiver.hello(channel, ClientId::random());
    sender.expect_presence(FrameType::PeerJoined, receiver.client);
    receiver.receive(1);
    for (i, id) in ids[..3].iter().enumerate() {
        let start = receiver.expect(FrameType::Start, Flags::REQUEST, *id);
        assert_eq!(&start.payload[..], format!("request {i}").as_bytes());
        receiver.respond(*id, b"done");
        sender.expect(FrameType::Start, Flags::RESPONSE, *id);
    }
    let again = RequestId::random();
    sender.request(again, 10_000, b"again");
    receiver.expect(FrameType::Start, Flags::REQUEST, again);
    receiver.respond(again, b"done");
    sender.expect(FrameType::Start, Flags::RESPONSE, again);
    drop((sender, receiver, other));
    wait_idle(&handle);
}
