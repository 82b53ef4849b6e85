//! Keeps PROTOCOL.md honest: every ```hex block in it must be exactly one valid frame, and the
//! worked example must show the frames it describes, in order.

use bytes::{Bytes, BytesMut};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    decode_u32, encode_frame, Decoder, Flags, Frame, FrameType, WelcomeBody, DEFAULT_MAX_PAYLOAD,
    HEADER_LEN, MAX_PAYLOAD_CEILING,
};

const CHANNEL: ChannelId = ChannelId::from_bytes([0x11; 16]);
const CLIENT_A: ClientId = ClientId::from_bytes([0xAA; 16]);
const CLIENT_B: ClientId = ClientId::from_bytes([0xBB; 16]);
const REQUEST: RequestId = RequestId::from_bytes([0xCC; 16]);

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

/// A ```hex block: the line of its opening fence (1-based) and its bytes.
struct HexBlock {
    line: usize,
    bytes: Vec<u8>,
}

/// Every ```hex block of `text`, in order. Each line holds at most 16 space-separated two-digit hex
/// bytes, and every line but the last exactly 16.
fn hex_blocks(text: &str) -> Vec<HexBlock> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        if line.trim() != "```hex" {
            continue;
        }
        let mut rows: Vec<Vec<u8>> = Vec::new();
        loop {
            let (row_index, row) = lines
                .next()
                .unwrap_or_else(|| panic!("line {}: unclosed hex block", index + 1));
            if row.trim() == "```" {
                break;
            }
            let bytes: Vec<u8> = row
                .split_whitespace()
                .map(|token| {
                    assert_eq!(
                        token.len(),
                        2,
                        "line {}: bad hex byte {token:?}",
                        row_index + 1
                    );
                    u8::from_str_radix(token, 16)
                        .unwrap_or_else(|_| panic!("line {}: bad hex {token:?}", row_index + 1))
                })
                .collect();
            assert!(
                (1..=16).contains(&bytes.len()),
                "line {}: {} bytes on a line",
                row_index + 1,
                bytes.len()
            );
            rows.push(bytes);
        }
        if let Some((last, full)) = rows.split_last() {
            for row in full {
                assert_eq!(
                    row.len(),
                    16,
                    "hex block at line {}: short inner line",
                    index + 1
                );
            }
            assert!(!last.is_empty());
        }
        blocks.push(HexBlock {
            line: index + 1,
            bytes: rows.concat(),
        });
    }
    blocks
}

/// Decodes the block as exactly one frame, with nothing left over, that re-encodes to the block.
#[track_caller]
fn decode_exactly_one(block: &HexBlock) -> Frame {
    let mut decoder = Decoder::new(MAX_PAYLOAD_CEILING);
    let mut buf = BytesMut::from(&block.bytes[..]);
    let frame = match decoder.decode(&mut buf) {
        Ok(Some(frame)) => frame,
        other => panic!("hex block at line {}: {other:?}", block.line),
    };
    assert!(
        buf.is_empty(),
        "hex block at line {}: {} bytes left over",
        block.line,
        buf.len()
    );
    assert!(decoder.is_between_frames());
    let mut wire = Vec::new();
    encode_frame(&frame, &mut wire);
    assert_eq!(
        wire, block.bytes,
        "hex block at line {}: re-encoding differs",
        block.line
    );
    frame
}

#[test]
fn every_hex_block_is_exactly_one_frame() {
    let blocks = hex_blocks(&protocol_md());
    assert!(!blocks.is_empty(), "PROTOCOL.md has no hex block");
    for block in &blocks {
        assert!(
            block.bytes.len() >= HEADER_LEN,
            "hex block at line {}",
            block.line
        );
        decode_exactly_one(block);
    }
}

/// The hex blocks of the worked example section.
fn example_frames() -> Vec<Frame> {
    let text = protocol_md();
    let start = text
        .find("## 12. Worked example")
        .expect("PROTOCOL.md has the worked example");
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    hex_blocks(&section[..end])
        .iter()
        .map(decode_exactly_one)
        .collect()
}

/// Checks the header fields every frame of the example has.
#[track_caller]
fn check(
    frame: &Frame,
    frame_type: FrameType,
    flags: Flags,
    client_id: ClientId,
    request_id: RequestId,
) {
    let header = &frame.header;
    assert_eq!(header.frame_type, frame_type);
    assert_eq!(header.flags, flags);
    assert_eq!(header.client_id, client_id);
    assert_eq!(header.channel_id, CHANNEL);
    assert_eq!(header.request_id, request_id);
    assert_eq!(header.sequence, 0);
}

fn welcome(peers: Vec<ClientId>) -> WelcomeBody {
    WelcomeBody {
        max_payload: DEFAULT_MAX_PAYLOAD,
        default_timeout_ms: 30_000,
        max_timeout_ms: 3_600_000,
        heartbeat_ms: 0,
        peers,
    }
}

#[test]
fn worked_example_frames_in_order() {
    let frames = example_frames();
    assert_eq!(frames.len(), 10, "the worked example shows ten frames");
    let none = Flags::NONE;
    let nil = RequestId::NIL;

    // 1. B → broker: HELLO.
    check(&frames[0], FrameType::Hello, none, CLIENT_B, nil);
    assert!(frames[0].payload.is_empty() && !frames[0].header.is_final);
    assert_eq!(frames[0].header.timeout_ms, 0);

    // 2. broker → B: WELCOME, no peers.
    // Its request id field is B's resume secret (§5).
    let secret_b = RequestId::from_bytes([0x5b; 16]);
    check(&frames[1], FrameType::Welcome, none, CLIENT_B, secret_b);
    assert!(
        frames[1].header.is_final,
        "the broker's own frames are FINAL"
    );
    assert_eq!(WelcomeBody::decode(&frames[1].payload), Ok(welcome(vec![])));

    // 3. B → broker: RECEIVE(1).
    check(&frames[2], FrameType::Receive, none, CLIENT_B, nil);
    assert_eq!(decode_u32(&frames[2].payload), Ok(1));

    // 4. A → broker: HELLO.
    check(&frames[3], FrameType::Hello, none, CLIENT_A, nil);
    assert!(frames[3].payload.is_empty());

    // 5. broker → A: WELCOME listing B.
    let secret_a = RequestId::from_bytes([0x5a; 16]);
    check(&frames[4], FrameType::Welcome, none, CLIENT_A, secret_a);
    assert!(frames[4].header.is_final);
    assert_eq!(
        WelcomeBody::decode(&frames[4].payload),
        Ok(welcome(vec![CLIENT_B]))
    );

    // 6. broker → B: PEER_JOINED A.
    check(&frames[5], FrameType::PeerJoined, none, CLIENT_A, nil);
    assert!(frames[5].header.is_final);
    assert!(frames[5].payload.is_empty());

    // 7. A → broker: the request, one frame.
    let request = &frames[6];
    check(request, FrameType::Start, Flags::REQUEST, CLIENT_A, REQUEST);
    assert!(request.header.is_final);
    assert_eq!(request.header.timeout_ms, 5000);
    assert_eq!(request.payload, Bytes::from_static(b"ping"));

    // 8. broker → B: the forwarded request, client id = the sender, timeout = the remaining time
    // (shown in full), everything else as sent.
    let forwarded = &frames[7];
    check(
        forwarded,
        FrameType::Start,
        Flags::REQUEST,
        CLIENT_A,
        REQUEST,
    );
    assert!(forwarded.header.timeout_ms <= request.header.timeout_ms);
    assert!(forwarded.header.timeout_ms > 0);
    assert_eq!(forwarded.header.is_final, request.header.is_final);
    assert_eq!(forwarded.payload, request.payload);

    // 9. B → broker: the response, one frame.
    let response = &frames[8];
    check(
        response,
        FrameType::Start,
        Flags::RESPONSE,
        CLIENT_B,
        REQUEST,
    );
    assert!(response.header.is_final);
    assert_eq!(response.header.timeout_ms, 0);
    assert_eq!(response.payload, Bytes::from_static(b"pong"));

    // 10. broker → A: the forwarded response, client id = the receiver.
    let forwarded = &frames[9];
    check(
        forwarded,
        FrameType::Start,
        Flags::RESPONSE,
        CLIENT_B,
        REQUEST,
    );
    assert_eq!(forwarded.header, response.header);
    assert_eq!(forwarded.payload, response.payload);
}

#[test]
fn hex_block_parser() {
    let text = "x\n```hex\n01 02\n```\n```text\nzz\n```\n```hex\n";
    let blocks = std::panic::catch_unwind(|| hex_blocks(text));
    assert!(blocks.is_err(), "an unclosed block must be an error");
    let blocks = hex_blocks("```hex\n00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\nff\n```\n");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].line, 1);
    assert_eq!(blocks[0].bytes.len(), 17);
}
