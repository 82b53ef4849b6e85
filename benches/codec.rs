//! Codec micro-benchmarks: the streaming decoder over a `BytesMut` read buffer, header encoding
//! and whole-frame encoding.
//!
//! The decode benches refill the read buffer with the encoded bytes inside the timed loop, as a
//! socket read would (one memcpy of the frame), except the payload-size sweep, which prepares
//! its buffers outside the timing so that only the decode itself is measured: the payload is
//! split off without copying, so that figure should not grow with the payload.

mod common;

use bytes::{Bytes, BytesMut};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};

use switchyard_proto::{
    encode_frame, Decoder, Flags, Frame, FrameType, Header, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
use switchyard_proto::{ChannelId, ClientId, RequestId};

/// A request START as a client would send it, with a `len`-byte payload.
fn frame(len: usize) -> Frame {
    let header = Header {
        flags: Flags::REQUEST,
        client_id: ClientId::from_bytes([1; 16]),
        channel_id: ChannelId::from_bytes([2; 16]),
        request_id: RequestId::from_bytes([3; 16]),
        timeout_ms: 5_000,
        is_final: true,
        ..Header::new(FrameType::Start)
    };
    Frame::new(header, Bytes::from(vec![0x5a; len]))
}

fn encoded(frames: usize, payload_len: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let f = frame(payload_len);
    for _ in 0..frames {
        encode_frame(&f, &mut out);
    }
    out.to_vec()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");

    // One 64-byte-payload frame: refill the read buffer, decode it.
    let one = encoded(1, 64);
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("one_64B", |b| {
        b.iter(|| {
            buf.extend_from_slice(&one);
            let frame = decoder.decode(&mut buf).expect("valid").expect("complete");
            black_box(frame)
        })
    });

    // 100 such frames arriving in one read, all decoded. The same work, reported both ways.
    let batch = encoded(100, 64);
    let mut decode_batch = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            buf.extend_from_slice(&batch);
            let mut n = 0;
            while let Some(frame) = decoder.decode(&mut buf).expect("valid") {
                black_box(frame);
                n += 1;
            }
            debug_assert_eq!(n, 100);
            n
        })
    };
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("batch_100x64B/bytes", &mut decode_batch);
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100x64B/frames", &mut decode_batch);
    group.finish();

    // Zero-copy: decoding a frame whose payload is already buffered costs the same whatever its
    // size. Buffers are filled outside the timing, eight per batch (8 MiB at 1 MiB payloads).
    let mut group = c.benchmark_group("decode_buffered");
    for len in [64usize, 64 * 1024, DEFAULT_MAX_PAYLOAD as usize] {
        let bytes = encoded(1, len);
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(len), &bytes, |b, bytes| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| decoder.decode(buf).expect("valid").expect("complete"),
                BatchSize::NumIterations(8),
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let f = frame(64);
    group.throughput(Throughput::Bytes(HEADER_LEN as u64));
    group.bench_function("header", |b| b.iter(|| black_box(&f.header).encode()));

    let mut out = BytesMut::with_capacity(4096);
    group.throughput(Throughput::Bytes(f.wire_len() as u64));
    group.bench_function("frame_64B_reused_buf", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&f), &mut out);
            out.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = decode, encode
}
criterion_main!(benches);
