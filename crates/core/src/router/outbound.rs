//! One connection's queue of bytes waiting to be written, and the seam through which the I/O
//! layer writes them: [`Transmit`] out, a count of bytes written in.
//!
//! Small frames (header plus a payload of at most [`COPY_THRESHOLD`] bytes) are copied into one
//! growing `tail` buffer, so a 64-byte reply never pins the 64 KiB read buffer it was decoded
//! from, and many small frames go out in one contiguous write. A large payload is not copied: its
//! header goes into the tail and the payload's [`Bytes`] is queued as a piece of its own —
//! zero-copy, and shared when a broadcast sends the same payload to many peers.
//!
//! The queue is an ordered list of pieces: `Tail(n)` (the next `n` unsent bytes of the tail) or
//! `Shared(bytes)`. The tail buffer itself is never split, so it can be reused in place.
//!
//! The tail comes from the router's [`BufferPool`] when the first frame is queued and goes back
//! as soon as everything is written, so an idle connection holds no outbound buffer.
//!
//! # The write seam
//! The queue never writes anything itself (it is handed no writer: the core has no sockets).
//! [`OutboundQueue::transmit`] lends the unsent bytes as up to [`MAX_TRANSMIT_SLICES`] slices,
//! front first, on the stack; the I/O layer writes a prefix of them however it can (a vectored
//! socket write, rustls' plaintext buffer, a test's `Vec`) and reports the prefix's length to
//! [`OutboundQueue::consume`]. Whether the writer would block, was interrupted or failed is the
//! I/O layer's business; the queue only learns how many bytes left it.
//!
//! # Invariants
//! - Bytes go out in the order they were pushed: the pieces, front to back.
//! - The `Tail` pieces' lengths add up to `tail.len() - tail_sent`.
//! - `len` is exactly the number of unsent bytes held; the router's flow control and the broker's
//!   buffered-bytes figure are computed from it.
//! - An empty queue holds no buffer (the tail went back to the pool when `len` reached zero).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

use crate::pool::BufferPool;
use crate::protocol::HEADER_LEN;

/// Payloads up to this size are copied into the queue; larger ones are shared. 16 KiB: copying it
/// costs less than a cache-missing pointer chase per piece, and it bounds what a copied frame
/// adds to the tail.
pub(crate) const COPY_THRESHOLD: usize = 16 * 1024;

/// Most slices one [`Transmit`] lends (Linux's IOV_MAX is 1024; 64 keeps the array on the stack
/// and is plenty: the tail holds any number of small frames in one piece).
pub const MAX_TRANSMIT_SLICES: usize = 64;

/// A partly written tail is compacted (its written prefix dropped) once that prefix exceeds this,
/// so a connection whose queue is never empty cannot grow its tail without bound.
const COMPACT_AFTER: usize = 64 * 1024;

/// The front of one connection's outbound queue, lent to the I/O layer by
/// [`Router::poll_transmit`](super::Router::poll_transmit): up to [`MAX_TRANSMIT_SLICES`]
/// slices (frame headers and copied small frames from the queue's buffer, large payloads as
/// their shared [`Bytes`]), in wire order. Nothing is copied or allocated to build it.
///
/// Write any prefix of [`Transmit::slices`] (a vectored write does), then report its length
/// with [`Router::handle_written`](super::Router::handle_written).
#[must_use = "write the slices, then report the bytes written with handle_written"]
pub struct Transmit<'a> {
    slices: [IoSlice<'a>; MAX_TRANSMIT_SLICES],
    count: usize,
    len: usize,
}

impl<'a> Transmit<'a> {
    /// The bytes to write, in order (ready for `write_vectored`).
    pub fn slices(&self) -> &[IoSlice<'a>] {
        &self.slices[..self.count]
    }

    /// Total bytes in [`Transmit::slices`] (never zero: an empty queue lends no `Transmit`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (see [`Transmit::len`]); here for the `len`/`is_empty` pair.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Transmit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmit")
            .field("slices", &self.count)
            .field("len", &self.len)
            .finish()
    }
}

enum Piece {
    /// The next `n` unsent bytes of the tail.
    Tail(usize),
    /// A large payload, shared.
    Shared(Bytes),
}

#[derive(Default)]
pub(crate) struct OutboundQueue {
    pieces: VecDeque<Piece>,
    tail: BytesMut,
    /// Bytes at the front of `tail` already written.
    tail_sent: usize,
    len: usize,
}

impl OutboundQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues one frame: its encoded header and its payload.
    pub(crate) fn push(
        &mut self,
        pool: &mut BufferPool,
        header: &[u8; HEADER_LEN],
        payload: &Bytes,
    ) {
        if self.tail.capacity() == 0 {
            self.tail = pool.take();
        }
        let copied = if payload.len() <= COPY_THRESHOLD {
            self.tail.extend_from_slice(header);
            self.tail.extend_from_slice(payload);
            HEADER_LEN + payload.len()
        } else {
            self.tail.extend_from_slice(header);
            HEADER_LEN
        };
        match self.pieces.back_mut() {
            Some(Piece::Tail(n)) => *n += copied,
            _ => self.pieces.push_back(Piece::Tail(copied)),
        }
        if payload.len() > COPY_THRESHOLD {
            self.pieces.push_back(Piece::Shared(payload.clone()));
        }
        self.len += HEADER_LEN + payload.len();
    }

    /// Drops everything queued (the connection is gone) and gives the buffer back.
    pub(crate) fn clear(&mut self, pool: &mut BufferPool) {
        self.pieces.clear();
        pool.give(std::mem::take(&mut self.tail));
        self.tail_sent = 0;
        self.len = 0;
    }

    /// Lends the front of the queue (up to [`MAX_TRANSMIT_SLICES`] pieces); `None` when empty.
    pub(crate) fn transmit(&self) -> Option<Transmit<'_>> {
        if self.len == 0 {
            return None;
        }
        let mut slices = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        let mut count = 0;
        let mut len = 0;
        let mut offset = self.tail_sent;
        for piece in self.pieces.iter().take(MAX_TRANSMIT_SLICES) {
            let bytes: &[u8] = match piece {
                Piece::Tail(n) => {
                    let slice = &self.tail[offset..offset + n];
                    offset += n;
                    slice
                }
                Piece::Shared(bytes) => bytes,
            };
            slices[count] = IoSlice::new(bytes);
            count += 1;
            len += bytes.len();
        }
        Some(Transmit { slices, count, len })
    }

    /// Drops the first `written` bytes (what the I/O layer wrote of the last [`Transmit`]).
    /// Once nothing is left, the buffer goes back to the pool (an idle connection holds none).
    pub(crate) fn consume(&mut self, pool: &mut BufferPool, mut written: usize) {
        // INVARIANT: the I/O layer reports at most what it was lent (the router clamps it).
        debug_assert!(written <= self.len, "wrote more than was queued");
        written = written.min(self.len);
        self.len -= written;
        while written > 0 {
            let Some(front) = self.pieces.front_mut() else {
                debug_assert!(false, "pieces shorter than len");
                return;
            };
            match front {
                Piece::Tail(n) => {
                    let step = written.min(*n);
                    *n -= step;
                    self.tail_sent += step;
                    written -= step;
                    if *n == 0 {
                        self.pieces.pop_front();
                    }
                }
                Piece::Shared(bytes) => {
                    let step = written.min(bytes.len());
                    bytes.advance(step);
                    written -= step;
                    if bytes.is_empty() {
                        self.pieces.pop_front();
                    }
                }
            }
        }
        if self.len == 0 {
            // Drained: the buffer goes back to the pool (an idle connection holds none).
            pool.give(std::mem::take(&mut self.tail));
            self.tail_sent = 0;
        } else if self.tail_sent > COMPACT_AFTER {
            // INVARIANT: only the written prefix is dropped; `Tail` pieces count unsent bytes.
            self.tail.advance(self.tail_sent);
            self.tail_sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a writer that takes at most `limit` bytes per call does with one `Transmit`: copies
    /// a prefix of it to `out` and reports that prefix to the queue. Returns its length.
    fn write_some(
        queue: &mut OutboundQueue,
        pool: &mut BufferPool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> usize {
        let Some(transmit) = queue.transmit() else {
            return 0;
        };
        let mut n = 0;
        for slice in transmit.slices() {
            let take = slice.len().min(limit - n);
            out.extend_from_slice(&slice[..take]);
            n += take;
            if n == limit {
                break;
            }
        }
        queue.consume(pool, n);
        n
    }

    fn frames() -> Vec<([u8; HEADER_LEN], Bytes)> {
        (0..6u8)
            .map(|i| {
                let len = if i % 2 == 0 { 10 } else { COPY_THRESHOLD + 100 };
                ([i; HEADER_LEN], Bytes::from(vec![i.wrapping_mul(7); len]))
            })
            .collect()
    }

    #[test]
    fn bytes_come_out_in_order_across_partial_writes() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let mut expected = Vec::new();
        for (header, payload) in frames() {
            queue.push(&mut pool, &header, &payload);
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
        }
        assert_eq!(queue.len(), expected.len());
        assert_eq!(queue.transmit().map(|t| t.len()), Some(expected.len()));
        let mut out = Vec::new();
        let mut calls = 0;
        while !queue.is_empty() {
            write_some(&mut queue, &mut pool, &mut out, 1000);
            calls += 1;
        }
        assert!(calls > 1);
        assert_eq!(out, expected);
        assert!(queue.transmit().is_none());
    }

    #[test]
    fn a_partial_write_keeps_the_rest_queued() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let (header, payload) = frames().remove(1);
        queue.push(&mut pool, &header, &payload);
        let total = queue.len();
        let mut out = Vec::new();
        assert_eq!(write_some(&mut queue, &mut pool, &mut out, 100), 100);
        assert_eq!(write_some(&mut queue, &mut pool, &mut out, 100), 100);
        assert_eq!(queue.len(), total - 200);
        assert_eq!(queue.transmit().map(|t| t.len()), Some(total - 200));
        queue.clear(&mut pool);
        assert!(queue.is_empty());
    }

    #[test]
    fn large_payload_is_shared_not_copied() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let payload = Bytes::from(vec![1u8; COPY_THRESHOLD + 1]);
        queue.push(&mut pool, &[0; HEADER_LEN], &payload);
        let shared = queue
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Shared(b) if b.as_ptr() == payload.as_ptr()));
        assert!(shared);
        let transmit = queue.transmit().expect("queued");
        assert_eq!(
            transmit.slices().len(),
            2,
            "header in the tail, payload shared"
        );
        assert_eq!(
            transmit.slices()[1].as_ptr(),
            payload.as_ptr(),
            "lent, not copied"
        );
    }

    #[test]
    fn a_transmit_lends_at_most_max_slices() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let payload = Bytes::from(vec![1u8; COPY_THRESHOLD + 1]);
        for _ in 0..MAX_TRANSMIT_SLICES {
            queue.push(&mut pool, &[0; HEADER_LEN], &payload);
        }
        let transmit = queue.transmit().expect("queued");
        assert_eq!(transmit.slices().len(), MAX_TRANSMIT_SLICES);
        assert!(
            transmit.len() < queue.len(),
            "the rest waits for the next transmit"
        );
        queue.clear(&mut pool);
    }

    #[test]
    fn a_never_emptied_queue_compacts_its_written_prefix() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let mut expected = Vec::new();
        let mut out = Vec::new();
        for i in 0..2_000u32 {
            let payload = Bytes::from(vec![i as u8; 50]);
            let header = [(i % 251) as u8; HEADER_LEN];
            queue.push(&mut pool, &header, &payload);
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
            // Write a little less than is pushed: the queue is never empty until the end.
            write_some(&mut queue, &mut pool, &mut out, 100);
            assert!(queue.tail_sent <= COMPACT_AFTER + 100, "compacted");
            assert!(!queue.is_empty(), "never empty");
        }
        while !queue.is_empty() {
            write_some(&mut queue, &mut pool, &mut out, usize::MAX);
        }
        assert_eq!(out, expected);
        assert_eq!(
            queue.tail.capacity(),
            0,
            "the emptied queue's buffer went back to the pool"
        );
    }
}
