//! Body sizes through a real broker with the blocking client (issue behaviour 7): 0, 1, 1 KiB,
//! 8 KiB, exactly max_payload, max_payload + 1 (split into frames by the client), and 5 MiB
//! streamed from an `io::Read` while the broker's buffered bytes stay far below the body size;
//! a body reader failing mid-way aborts the request at both ends.
//!
//! The broker runs with max_payload = 64 KiB so that every size class is cheap to reach.
//! Every test ends by closing its clients and asserting the broker is idle (behaviour 9).

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    body::{self, body, check_stream, FailingReader, PatternReader},
    broker::start_router,
    client::{connect, receiver, Responder},
    gauges::wait_idle,
    DEADLINE, QUIET,
};

use switchyard::client::{Error, RequestOptions};
use switchyard::ids::ChannelId;
use switchyard::router::RouterConfig;
use switchyard::server::ServerHandle;

const MAX_PAYLOAD: usize = 64 * 1024;

/// A timeout long enough never to fire in a passing test.
const LONG: Duration = Duration::from_secs(30);

fn broker() -> ServerHandle {
    start_router(RouterConfig {
        max_payload: MAX_PAYLOAD as u32,
        ..RouterConfig::default()
    })
}

fn options() -> RequestOptions {
    RequestOptions {
        timeout: Some(LONG),
        no_wait: false,
    }
}

/// Frames a body of `len` bytes takes: at least one, each at most max_payload.
fn frames_for(len: usize) -> u64 {
    len.div_ceil(MAX_PAYLOAD).max(1) as u64
}

#[test]
fn bodies_of_every_size_class_arrive_intact() {
    let handle = broker();
    let channel = ChannelId::random();
    // The receiver checks what it got against the pattern itself, then echoes it.
    let responder = Responder::spawn(connect(&handle, channel), 1, |incoming, body| {
        let _ = incoming;
        let (seed, len) = decode_tag(&body);
        assert_eq!(body.len(), len, "request body length");
        if len > 16 {
            assert!(
                body[16..] == body::body(seed, len)[16..],
                "request body bytes"
            );
        }
        body
    });
    let sender = connect(&handle, channel);
    assert_eq!(sender.limits().max_payload, MAX_PAYLOAD as u32);

    let sizes = [
        0,
        1,
        1024,
        8192,
        MAX_PAYLOAD - 1,
        MAX_PAYLOAD,
        MAX_PAYLOAD + 1,
        3 * MAX_PAYLOAD,
        3 * MAX_PAYLOAD + 5,
    ];
    for (seed, len) in sizes.into_iter().enumerate() {
        let request = tagged_body(seed as u64, len);
        let before = handle.stats().unwrap().frames_in;
        let reply = sender.request(&request, LONG).expect("echoed");
        assert_eq!(reply.len(), len, "response length for a {len}-byte body");
        assert!(reply == request, "response bytes for a {len}-byte body");
        // Split by the client into max_payload frames each way; nothing else in between.
        let frames = handle.stats().unwrap().frames_in - before;
        assert_eq!(frames, 2 * frames_for(len), "frames for a {len}-byte body");
    }

    assert_eq!(responder.stop().answered, sizes.len());
    drop(sender);
    wait_idle(&handle);
}

/// A body of `len` pattern bytes whose first 16 bytes (when it has them) carry its seed and
/// length, so the receiver can check it independently of the sender.
fn tagged_body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = body(seed, len);
    if len >= 16 {
        out[..8].copy_from_slice(&seed.to_le_bytes());
        out[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    }
    out
}

/// The seed and length of a [`tagged_body`]; short bodies are checked by length only.
fn decode_tag(body: &[u8]) -> (u64, usize) {
    if body.len() < 16 {
        return (0, body.len());
    }
    let seed = u64::from_le_bytes(body[..8].try_into().unwrap());
    let len = u64::from_le_bytes(body[8..16].try_into().unwrap());
    (seed, len as usize)
}

#[test]
fn a_five_mib_body_streams_through_without_the_broker_holding_it() {
    const LEN: u64 = 5 << 20;
    const SEED: u64 = 0x5EED;
    // Watermarks well below the body: the broker may hold at most about one read budget, a
    // frame and an outbound queue up to the high watermark per connection.
    let handle = start_router(RouterConfig {
        max_payload: MAX_PAYLOAD as u32,
        high_watermark: 512 << 10,
        low_watermark: 128 << 10,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, 1);
    let sender = connect(&handle, channel);

    // The broker's buffered bytes after every loop turn of the transfer, via a watcher that
    // records the maximum and is satisfied once the test says stop.
    let max_buffered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampled = {
        let (max_buffered, stop) = (Arc::clone(&max_buffered), Arc::clone(&stop));
        move |stats: &switchyard::server::ServerStats| {
            max_buffered.fetch_max(stats.buffered_bytes(), Ordering::Relaxed);
            stop.load(Ordering::Relaxed)
        }
    };

    thread::scope(|s| {
        let watching = s.spawn(|| handle.wait_until(sampled, LONG));
        let echoing = s.spawn(|| {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
            let body = incoming.read_body().expect("the whole request body");
            assert_eq!(body.len() as u64, LEN);
            assert!(body == body::body(SEED, LEN as usize), "request body bytes");
            incoming.respond(&body).expect("echo");
        });
        // The body is generated as it is sent; snapshots of the broker's stats taken from
        // inside the reader, i.e. during the transfer.
        let mut generating = Sampling {
            inner: PatternReader::new(SEED, LEN),
            handle: &handle,
            next_sample: 0,
            samples: Vec::new(),
        };
        let mut response = sender
            .request_with(&mut generating, options())
            .expect("request");
        assert_eq!(check_stream(&mut response, SEED).expect("echo"), LEN);
        echoing.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        handle.stats().unwrap(); // one more loop turn, so the watcher sees `stop`
        watching.join().unwrap().expect("watcher");

        let samples = generating.samples;
        assert!(samples.len() >= 8, "{} samples", samples.len());
        let max = max_buffered.load(Ordering::Relaxed);
        // Read budget (256 KiB) + a frame + the receiver's queue up to the high watermark and
        // one turn's overshoot: about 1 MiB at most, a fifth of the body.
        let bound = (LEN / 5) as usize;
        eprintln!("max buffered {max} bytes; samples during the transfer {samples:?}");
        assert!(
            max < bound,
            "broker buffered {max} bytes (samples {samples:?})"
        );
        assert!(samples.iter().all(|&b| b < bound), "samples {samples:?}");
    });

    drop((sender, receiver));
    wait_idle(&handle);
}

/// An `io::Read` that snapshots the broker's buffered bytes every 512 KiB it hands out.
struct Sampling<'a> {
    inner: PatternReader,
    handle: &'a ServerHandle,
    next_sample: u64,
    samples: Vec<usize>,
}

impl Read for Sampling<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let done = (5u64 << 20) - self.inner.left();
        if done >= self.next_sample {
            self.next_sample += 512 << 10;
            let stats = self.handle.stats()?;
            self.samples.push(stats.buffered_bytes());
        }
        self.inner.read(buf)
    }
}

#[test]
fn a_failing_body_reader_aborts_the_request_at_both_ends() {
    let handle = broker();
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, 1);
    let sender = connect(&handle, channel);

    // Fails after three full frames: START and a CHUNK went out, the request is cancelled.
    thread::scope(|s| {
        let receiving = s.spawn(|| {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
            incoming.read_body()
        });
        let mut failing = FailingReader::new(21, 3 * MAX_PAYLOAD as u64, "disk on fire");
        match sender.request_with(&mut failing, options()) {
            Err(Error::Io(e)) => assert_eq!(e.to_string(), "disk on fire"),
            other => panic!("expected the reader's io error, got {other:?}"),
        }
        assert_err!(receiving.join().unwrap(), Error::Cancelled);
    });

    // Fails before a first frame was complete: nothing reaches the broker or a receiver.
    let mut failing = FailingReader::new(22, 100, "early failure");
    match sender.request_with(&mut failing, options()) {
        Err(Error::Io(e)) => assert_eq!(e.to_string(), "early failure"),
        other => panic!("expected the reader's io error, got {other:?}"),
    }
    assert_err!(receiver.next_request(Some(QUIET)), Error::WaitElapsed);

    // Both clients are still usable.
    thread::scope(|s| {
        s.spawn(|| {
            let incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
            incoming.respond(b"fine").unwrap();
        });
        assert_eq!(sender.request(b"still there?", LONG).unwrap(), b"fine");
    });

    drop((sender, receiver));
    wait_idle(&handle);
}
