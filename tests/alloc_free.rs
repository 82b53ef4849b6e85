//! Once warm, forwarding frames allocates nothing: decoding from a read buffer, routing a request
//! to its receiver and the response back, queueing the outbound bytes and writing them out.
//!
//! Its own test binary, because it installs a counting global allocator. Only allocations made
//! by the measuring thread while measuring are counted.

use bytes::{BufMut, Bytes, BytesMut};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use switchyard::ids::{ChannelId, ClientId, ConnId, RequestId};
use switchyard::protocol::{encode_u32, Decoder, Flags, Frame, FrameType, Header};
use switchyard::router::{Output, Router, RouterConfig};

struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// A counting global allocator has to implement the unsafe trait; it only forwards to `System`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    ALLOCATIONS.with(|n| n.get())
}

/// One side of the test: its connection, a read buffer with the bytes "received" from it, and
/// a decoder, as the server keeps them.
struct Side {
    conn: ConnId,
    read_buf: BytesMut,
    decoder: Decoder,
}

struct Rig {
    router: Router,
    now: Instant,
    sender: Side,
    receiver: Side,
    channel: ChannelId,
    sink: Vec<u8>,
}

impl Rig {
    fn new() -> Rig {
        #[allow(clippy::disallowed_methods)] // the fake clock's origin
        let now = Instant::now();
        let mut router = Router::new(RouterConfig::default(), now);
        let channel = ChannelId::from_bytes([1; 16]);
        let side = |router: &mut Router| Side {
            conn: router.handle_connect(now),
            read_buf: BytesMut::with_capacity(64 * 1024),
            decoder: Decoder::new(1 << 20),
        };
        let sender = side(&mut router);
        let receiver = side(&mut router);
        let mut rig = Rig {
            router,
            now,
            sender,
            receiver,
            channel,
            sink: Vec::with_capacity(1 << 20),
        };
        for (i, conn) in [rig.sender.conn, rig.receiver.conn].into_iter().enumerate() {
            let hello = Header {
                channel_id: channel,
                client_id: ClientId::from_bytes([i as u8 + 1; 16]),
                ..Header::new(FrameType::Hello)
            };
            rig.router
                .handle_frame(conn, Frame::new(hello, Bytes::new()), now);
        }
        let receive = Header {
            channel_id: channel,
            ..Header::new(FrameType::Receive)
        };
        rig.router
            .handle_frame(rig.receiver.conn, Frame::new(receive, encode_u32(4)), now);
        rig.pump();
        rig
    }

    /// Encodes a frame into a side's read buffer, as if it had arrived from the socket.
    fn arrive(side: &mut Side, header: Header, payload: &[u8]) {
        let mut header = header;
        header.payload_len = payload.len() as u32;
        side.read_buf.put_slice(&header.encode());
        side.read_buf.put_slice(payload);
    }

    /// Decodes and routes everything buffered on both sides, then writes every queued byte.
    fn pump(&mut self) {
        for side in [&mut self.sender, &mut self.receiver] {
            while let Some(frame) = side.decoder.decode(&mut side.read_buf).expect("valid") {
                self.router.handle_frame(side.conn, frame, self.now);
            }
        }
        while let Some(output) = self.router.poll_output() {
            if let Output::Transmit(conn) = output {
                self.sink.clear();
                // The byte seam, as the server drives it: borrowed slices out, a count in.
                while let Some(transmit) = self.router.poll_transmit(conn) {
                    let n = transmit.len();
                    for slice in transmit.slices() {
                        self.sink.extend_from_slice(slice);
                    }
                    self.router.handle_written(conn, n);
                }
            }
        }
    }

    fn round_trip(&mut self, n: u32, body: &[u8]) {
        let mut id = [7u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let request_id = RequestId::from_bytes(id);
        let request = Header {
            flags: Flags::REQUEST,
            channel_id: self.channel,
            request_id,
            timeout_ms: 5_000,
            is_final: true,
            ..Header::new(FrameType::Start)
        };
        Rig::arrive(&mut self.sender, request, body);
        self.pump();
        let response = Header {
            flags: Flags::RESPONSE,
            ..request
        };
        Rig::arrive(
            &mut self.receiver,
            Header {
                timeout_ms: 0,
                ..response
            },
            body,
        );
        self.pump();
        self.now += Duration::from_micros(100);
    }

    fn streamed(&mut self, n: u32, chunk: &[u8], chunks: u32) {
        let mut id = [9u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let base = Header {
            flags: Flags::REQUEST,
            channel_id: self.channel,
            request_id: RequestId::from_bytes(id),
            timeout_ms: 5_000,
            ..Header::new(FrameType::Start)
        };
        Rig::arrive(&mut self.sender, base, chunk);
        for seq in 1..chunks {
            let header = Header {
                frame_type: FrameType::Chunk,
                sequence: seq,
                timeout_ms: 0,
                ..base
            };
            Rig::arrive(&mut self.sender, header, chunk);
            self.pump();
        }
        let end = Header {
            frame_type: FrameType::End,
            sequence: chunks,
            is_final: true,
            timeout_ms: 0,
            ..base
        };
        Rig::arrive(&mut self.sender, end, b"");
        let response = Header {
            flags: Flags::RESPONSE,
            frame_type: FrameType::Start,
            sequence: 0,
            ..end
        };
        Rig::arrive(&mut self.receiver, response, b"done");
        self.pump();
    }
}

#[test]
fn forwarding_allocates_nothing_once_warm() {
    let mut rig = Rig::new();
    let small = [0x5a; 64];
    let large = vec![0xa5; 32 * 1024];
    // Warm-up: every buffer, slab, map and queue reaches its working size.
    for n in 0..2_000 {
        rig.round_trip(n, &small);
        rig.streamed(n, &small, 8);
    }
    let small_round_trips = allocations_during(|| {
        for n in 10_000..20_000 {
            rig.round_trip(n, &small);
        }
    });
    assert_eq!(
        small_round_trips, 0,
        "allocations while forwarding 10 000 small request/replies"
    );
    let streamed = allocations_during(|| {
        for n in 20_000..21_000 {
            rig.streamed(n, &small, 8);
        }
    });
    assert_eq!(
        streamed, 0,
        "allocations while forwarding 1 000 streamed requests of 10 frames"
    );
    // Large payloads are shared, not copied: still nothing once warm.
    for n in 0..200 {
        rig.round_trip(30_000 + n, &large);
    }
    let large_round_trips = allocations_during(|| {
        for n in 40_000..41_000 {
            rig.round_trip(n, &large);
        }
    });
    assert_eq!(
        large_round_trips, 0,
        "allocations while forwarding 1 000 32 KiB request/replies"
    );
    let stats = rig.router.stats();
    assert_eq!(
        (
            stats.assignments,
            stats.pending_requests,
            stats.buffered_bytes
        ),
        (0, 0, 0)
    );
}
