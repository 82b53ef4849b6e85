//! Encoding. The header goes into a fixed array; the payload is never copied by the encoder —
//! callers send it as its own buffer (vectored write) or append it where they choose.

use bytes::BufMut;

use super::{Frame, Header, HEADER_LEN};

/// The 64 wire bytes of a header (same as [`Header::encode`]).
pub fn encode_header(header: &Header) -> [u8; HEADER_LEN] {
    header.encode()
}

/// Appends a whole frame (header then payload) to `out`. Meant for clients and tests; the broker's
/// forwarding path writes the header and shares the payload instead.
pub fn encode_frame(frame: &Frame, out: &mut impl BufMut) {
    out.put_slice(&frame.header.encode());
    out.put_slice(&frame.payload);
}
