//! The checks of the `decoder` fuzz target, shared with the main crate's `tests/fuzz_corpus.rs`
//! (both include this file with `#[path]`), so the committed corpus is replayed by `cargo test`.
//!
//! Input: the first byte is the read size (0 = everything in one read); the rest is the byte
//! stream a connection receives. The stream is fed one read at a time into one `BytesMut`,
//! decoding as far as possible after each read, exactly as the server does. Checked:
//! - nothing panics;
//! - the result (frames, then possibly one error at the same offset) is the same as decoding the
//!   whole stream at once;
//! - every frame respects the payload limit and re-encodes to exactly the bytes it came from;
//! - the control-payload decoders never panic, and what they accept re-encodes exactly.

use bytes::BytesMut;
use switchyard_proto::{
    decode_u32, encode_frame, DecodeError, Decoder, ErrorBody, Frame, WelcomeBody,
};

/// A small limit, so the fuzzer reaches both sides of it cheaply.
pub const MAX_PAYLOAD: u32 = 256;

/// What a stream decoded to.
#[derive(PartialEq, Eq, Debug)]
pub struct Outcome {
    /// The frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding, with the stream offset of the bytes it rejected.
    pub error: Option<(DecodeError, usize)>,
}

fn decode(stream: &[u8], read_size: usize) -> Outcome {
    let mut decoder = Decoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for read in stream.chunks(read_size.max(1)) {
        buf.extend_from_slice(read);
        fed += read.len();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    let _ = err.code();
                    let _ = err.to_string();
                    return Outcome {
                        frames,
                        error: Some((err, fed - buf.len())),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

/// Runs every check on one fuzz input; panics on a violation.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&first, stream)) = data.split_first() else {
        return Outcome {
            frames: Vec::new(),
            error: None,
        };
    };
    let read_size = if first == 0 {
        stream.len()
    } else {
        usize::from(first)
    };
    let outcome = decode(stream, read_size);
    assert_eq!(
        outcome,
        decode(stream, stream.len()),
        "split and one-shot decoding differ"
    );

    let mut offset = 0;
    for frame in &outcome.frames {
        assert_eq!(frame.header.payload_len as usize, frame.payload.len());
        assert!(frame.header.payload_len <= MAX_PAYLOAD);
        let mut wire = Vec::with_capacity(frame.wire_len());
        encode_frame(frame, &mut wire);
        assert_eq!(
            &wire[..],
            &stream[offset..offset + wire.len()],
            "re-encoding differs"
        );
        offset += wire.len();

        if let Ok(body) = WelcomeBody::decode(&frame.payload) {
            assert_eq!(body.encode(), frame.payload, "welcome re-encoding differs");
        }
        if let Ok(body) = ErrorBody::decode(&frame.payload) {
            assert_eq!(body.encode(), frame.payload, "error re-encoding differs");
            let _ = body.known_code();
        }
        let _ = decode_u32(&frame.payload);
    }
    if let Some((_, at)) = outcome.error {
        assert_eq!(at, offset, "the error is not at the end of the last frame");
    }
    outcome
}
