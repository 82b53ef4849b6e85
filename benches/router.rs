//! Routing micro-benchmarks through the sans-IO core, driven as the server drives it (and as
//! `tests/alloc_free.rs` does): `handle_frame` with a decoded frame, then drain `poll_output`,
//! writing each `Transmit` through `poll_transmit`/`handle_written` into a reused `Vec`.
//!
//! - `request`: one one-frame request START from a sender to a receiver with credit, up to the
//!   receiver's written output. Requests are timed in batches of [`WINDOW`]; the receiver then
//!   answers them all outside the timing, which frees its credit for the next batch.
//! - `round_trip`: the request and its one-frame response, back to the sender's written output.
//!
//! Each is run with 1, 100 and 10 000 other idle members on the channel: the cost should not
//! depend on them.
//!
//! Time is a fake clock advanced by a few microseconds per step; the wheel is advanced
//! (`handle_timeout`) between batches, outside the timing, as the server's wakeups would.

mod common;

use bytes::Bytes;
use criterion::measurement::{Measurement, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

use switchyard_core::ids::{ChannelId, ClientId, ConnId, RequestId};
use switchyard_core::protocol::{encode_u32, Flags, Frame, FrameType, Header};
use switchyard_core::router::{Output, Router, RouterConfig};

/// The receiver's credit window, and the number of requests timed back to back.
const WINDOW: u32 = 64;

/// Fake-clock advance per routed frame.
const STEP: Duration = Duration::from_micros(10);

struct Rig {
    router: Router,
    now: Instant,
    sender: ConnId,
    receiver: ConnId,
    channel: ChannelId,
    payload: Bytes,
    /// Where transmitted bytes are copied; cleared before each write, capacity reused.
    sink: Vec<u8>,
    next_id: u64,
}

impl Rig {
    /// A sender, a receiver with a window of [`WINDOW`], and `idle` other members, all joined
    /// to one channel; every welcome and presence frame is already written out.
    fn new(idle: usize) -> Rig {
        #[allow(clippy::disallowed_methods)] // bench clock origin
        let now = Instant::now();
        let mut router = Router::new(RouterConfig::default(), now);
        let channel = ChannelId::from_bytes([1; 16]);
        let join = |router: &mut Router, n: usize| {
            let conn = router.handle_connect(now);
            let mut id = [0xc0; 16];
            id[..8].copy_from_slice(&(n as u64).to_be_bytes());
            let hello = Header {
                channel_id: channel,
                client_id: ClientId::from_bytes(id),
                ..Header::new(FrameType::Hello)
            };
            router.handle_frame(conn, Frame::new(hello, Bytes::new()), now);
            conn
        };
        let sender = join(&mut router, 0);
        let receiver = join(&mut router, 1);
        for n in 0..idle {
            join(&mut router, n + 2);
            // Each join queues a presence frame to every member: write them out now and then,
            // so that joining 10 000 costs neither quadratic writes nor quadratic memory.
            if n % 256 == 255 {
                discard_output(&mut router);
            }
        }
        let receive = Header {
            channel_id: channel,
            ..Header::new(FrameType::Receive)
        };
        router.handle_frame(receiver, Frame::new(receive, encode_u32(WINDOW)), now);
        discard_output(&mut router);
        let stats = router.stats();
        assert_eq!(stats.connections, idle + 2);
        assert_eq!(stats.buffered_bytes, 0);
        Rig {
            router,
            now,
            sender,
            receiver,
            channel,
            payload: Bytes::from_static(&[0x5a; 64]),
            sink: Vec::with_capacity(64 * 1024),
            next_id: 0,
        }
    }

    /// One routing step: feed a frame, drain the outputs, write every transmit. Returns the
    /// bytes written.
    fn step(&mut self, from: ConnId, frame: Frame) -> usize {
        self.router.handle_frame(from, frame, self.now);
        self.now += STEP;
        let mut written = 0;
        while let Some(output) = self.router.poll_output() {
            if let Output::Transmit(conn) = output {
                self.sink.clear();
                write_all_queued(&mut self.router, conn, &mut self.sink);
                written += self.sink.len();
            }
        }
        written
    }

    fn request_header(&mut self) -> Header {
        self.next_id += 1;
        let mut id = [7u8; 16];
        id[..8].copy_from_slice(&self.next_id.to_be_bytes());
        Header {
            flags: Flags::REQUEST,
            channel_id: self.channel,
            request_id: RequestId::from_bytes(id),
            timeout_ms: 5_000,
            is_final: true,
            ..Header::new(FrameType::Start)
        }
    }

    fn send_request(&mut self, request: Header) -> usize {
        let frame = Frame::new(request, self.payload.clone());
        self.step(self.sender, frame)
    }

    fn send_response(&mut self, request: Header) -> usize {
        let response = Header {
            flags: Flags::RESPONSE,
            timeout_ms: 0,
            ..request
        };
        let frame = Frame::new(response, self.payload.clone());
        self.step(self.receiver, frame)
    }

    /// Untimed housekeeping between batches: fire due timers (none should be) and check that
    /// nothing was left behind.
    fn settle(&mut self) {
        self.router.handle_timeout(self.now);
        discard_output(&mut self.router);
        debug_assert_eq!(self.router.stats().assignments, 0);
    }
}

/// Writes every byte queued for `conn` into `sink` through the byte seam (a socket that takes
/// everything; `sink` keeps its capacity, so this allocates nothing once warm).
fn write_all_queued(router: &mut Router, conn: ConnId, sink: &mut Vec<u8>) {
    while let Some(transmit) = router.poll_transmit(conn) {
        let n = transmit.len();
        for slice in transmit.slices() {
            sink.extend_from_slice(slice);
        }
        router.handle_written(conn, n);
    }
}

/// Writes every queued byte to nowhere.
fn discard_output(router: &mut Router) {
    while let Some(output) = router.poll_output() {
        if let Output::Transmit(conn) = output {
            while let Some(transmit) = router.poll_transmit(conn) {
                let n = transmit.len();
                router.handle_written(conn, n);
            }
        }
    }
}

/// Times `iters` calls of `timed`, in batches of [`WINDOW`], running `untimed` after each batch
/// with the values the batch returned.
fn batched<T>(
    rig: &mut Rig,
    iters: u64,
    batch: &mut Vec<T>,
    mut timed: impl FnMut(&mut Rig) -> T,
    mut untimed: impl FnMut(&mut Rig, &mut Vec<T>),
) -> Duration {
    let clock = WallTime;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(u64::from(WINDOW));
        batch.clear();
        let start = clock.start();
        for _ in 0..n {
            let value = timed(rig);
            batch.push(value);
        }
        total += clock.end(start);
        untimed(rig, batch);
        left -= n;
    }
    total
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for idle in [1usize, 100, 10_000] {
        let mut rig = Rig::new(idle);
        // Headers are prepared outside the timing; the frame itself is built inside (cheap: a
        // refcount-free static payload).
        let mut headers = Vec::with_capacity(WINDOW as usize);
        group.bench_function(BenchmarkId::new("request", idle), |b| {
            b.iter_custom(|iters| {
                batched(
                    &mut rig,
                    iters,
                    &mut headers,
                    |rig| {
                        let request = rig.request_header();
                        let written = rig.send_request(request);
                        debug_assert!(written > 0);
                        request
                    },
                    |rig, requests| {
                        for request in requests.drain(..) {
                            rig.send_response(request);
                        }
                        rig.settle();
                    },
                )
            })
        });
        let mut written = Vec::with_capacity(WINDOW as usize);
        group.bench_function(BenchmarkId::new("round_trip", idle), |b| {
            b.iter_custom(|iters| {
                batched(
                    &mut rig,
                    iters,
                    &mut written,
                    |rig| {
                        let request = rig.request_header();
                        rig.send_request(request) + rig.send_response(request)
                    },
                    |rig, _| rig.settle(),
                )
            })
        });
        let stats = rig.router.stats();
        assert_eq!((stats.assignments, stats.pending_requests), (0, 0));
        assert_eq!(stats.timeouts, 0);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = routing
}
criterion_main!(benches);
