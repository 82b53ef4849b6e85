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
//! # Frames of a request
//! A frame forwarded to a request's receiver is pushed with a [`FrameTag`]: the request's key
//! and the frame's role (the START that opens the stream for the receiver, a body frame, the
//! broker's CANCEL that closes it). Tagged frames are never merged with their neighbours (each
//! is a piece of its own, plus its shared payload), so [`OutboundQueue::purge`] can drop the
//! frames of requests that ended without the receiver ever seeing them, in one pass over the
//! queue that also compacts the tail in place (no allocation). What purge keeps:
//! - a frame already started on the wire (the front piece once a byte of it went out, a shared
//!   payload whose header went out): the byte stream must stay well framed;
//! - the CANCEL of a request whose START was already written (the receiver knows the request);
//!   the CANCEL of a request whose START it drops goes too (the receiver never heard of it).
//!
//! Untagged frames (broker control frames, responses, broadcasts) merge into the tail as before,
//! and `transmit` lends adjacent tail pieces as one slice, so tagging costs no extra `iovec`.
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
//! - A `Payload` piece directly follows the tagged head piece of its frame (or is the front).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

use hashbrown::HashSet;

use super::store::Key;
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

/// What a frame of a request is to its receiver (see "Frames of a request" above).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FrameRole {
    /// The START: the receiver learns of the request from it.
    Opening,
    /// A CHUNK or END of the request body.
    Body,
    /// The broker's CANCEL: sent only if the START was.
    Closing,
}

/// The request a queued frame belongs to and its role; see [`OutboundQueue::purge`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FrameTag {
    pub(crate) stream: Key,
    pub(crate) role: FrameRole,
}

/// What a tagged piece is: the head of a frame (its header, and its payload when copied) or
/// the shared payload that follows such a head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PieceKind {
    Head(FrameRole),
    Payload,
}

enum Data {
    /// The next `n` unsent bytes of the tail.
    Tail(usize),
    /// A large payload, shared.
    Shared(Bytes),
}

struct Piece {
    data: Data,
    /// The request this piece belongs to; `None` for untagged frames.
    tag: Option<(Key, PieceKind)>,
    /// Position in the order of pushes (see [`OutboundQueue::still_holds`]).
    seq: u64,
}

impl Piece {
    /// A piece of a request's data (not its CANCEL, not an untagged frame).
    fn is_data(&self) -> bool {
        !matches!(
            self.tag,
            None | Some((_, PieceKind::Head(FrameRole::Closing)))
        )
    }

    fn len(&self) -> usize {
        match &self.data {
            Data::Tail(n) => *n,
            Data::Shared(bytes) => bytes.len(),
        }
    }
}

#[derive(Default)]
pub(crate) struct OutboundQueue {
    pieces: VecDeque<Piece>,
    tail: BytesMut,
    /// Bytes at the front of `tail` already written.
    tail_sent: usize,
    len: usize,
    /// Some bytes of the front piece were written: it must go out whole.
    front_started: bool,
    /// Sequence number of the next piece pushed.
    next_seq: u64,
    /// Pieces that are request data (see [`Piece::is_data`]).
    data_pieces: usize,
}

impl OutboundQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pieces of request data queued (tagged, not a CANCEL).
    pub(crate) fn data_pieces(&self) -> usize {
        self.data_pieces
    }

    /// Sequence number of the last piece pushed so far (see [`OutboundQueue::still_holds`]).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.wrapping_sub(1)
    }

    /// True when the piece pushed as number `seq` may still be queued: nothing after it has
    /// reached the front.
    pub(crate) fn still_holds(&self, seq: u64) -> bool {
        self.pieces.front().is_some_and(|front| front.seq <= seq)
    }

    /// Pieces a frame with this payload and tag adds at most.
    pub(crate) fn pieces_of(payload_len: usize) -> usize {
        1 + usize::from(payload_len > COPY_THRESHOLD)
    }

    /// Queues one frame: its encoded header and its payload, tagged with its request when it
    /// goes to that request's receiver.
    pub(crate) fn push(
        &mut self,
        pool: &mut BufferPool,
        header: &[u8; HEADER_LEN],
        payload: &Bytes,
        tag: Option<FrameTag>,
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
        match (self.pieces.back_mut(), tag) {
            (
                Some(Piece {
                    data: Data::Tail(n),
                    tag: None,
                    ..
                }),
                None,
            ) => *n += copied,
            _ => self.push_piece(Piece {
                data: Data::Tail(copied),
                tag: tag.map(|t| (t.stream, PieceKind::Head(t.role))),
                seq: 0,
            }),
        }
        if payload.len() > COPY_THRESHOLD {
            self.push_piece(Piece {
                data: Data::Shared(payload.clone()),
                tag: tag.map(|t| (t.stream, PieceKind::Payload)),
                seq: 0,
            });
        }
        self.len += HEADER_LEN + payload.len();
    }

    fn push_piece(&mut self, mut piece: Piece) {
        piece.seq = self.next_seq;
        self.next_seq += 1;
        self.data_pieces += usize::from(piece.is_data());
        self.pieces.push_back(piece);
    }

    /// Drops the frames of ended requests (`is_dead(key)`) that have not started on the wire,
    /// and compacts the tail in place; returns the bytes dropped. One pass over the queue, no
    /// allocation once `openings` (scratch, cleared here) is warm. See the module docs for what
    /// is kept.
    pub(crate) fn purge(
        &mut self,
        pool: &mut BufferPool,
        is_dead: impl Fn(Key) -> bool,
        openings: &mut HashSet<Key>,
    ) -> usize {
        openings.clear();
        let front_started = self.front_started;
        let OutboundQueue {
            pieces,
            tail,
            tail_sent,
            ..
        } = self;
        let (mut read, mut write, mut dropped) = (*tail_sent, 0, 0);
        let mut index = 0;
        let mut previous_dropped = false;
        let mut data_pieces = 0;
        pieces.retain_mut(|piece| {
            let front = index == 0;
            index += 1;
            let drop = match piece.tag {
                Some((key, kind)) if is_dead(key) => match kind {
                    // Started on the wire: its frame must go out whole.
                    _ if front && (front_started || kind == PieceKind::Payload) => false,
                    PieceKind::Payload => previous_dropped,
                    PieceKind::Head(FrameRole::Opening) => {
                        openings.insert(key);
                        true
                    }
                    PieceKind::Head(FrameRole::Body) => true,
                    PieceKind::Head(FrameRole::Closing) => openings.contains(&key),
                },
                _ => false,
            };
            previous_dropped = drop;
            if let Data::Tail(n) = piece.data {
                if !drop {
                    // INVARIANT: write <= read, so the copy never overwrites unsent bytes.
                    tail.copy_within(read..read + n, write);
                    write += n;
                }
                read += n;
            }
            if drop {
                dropped += piece.len();
            } else {
                data_pieces += usize::from(piece.is_data());
            }
            !drop
        });
        self.data_pieces = data_pieces;
        tail.truncate(write);
        *tail_sent = 0;
        self.len -= dropped;
        if self.len == 0 {
            self.clear(pool);
        }
        dropped
    }

    /// Drops everything queued (the connection is gone) and gives the buffer back.
    pub(crate) fn clear(&mut self, pool: &mut BufferPool) {
        self.pieces.clear();
        pool.give(std::mem::take(&mut self.tail));
        self.tail_sent = 0;
        self.len = 0;
        self.front_started = false;
        self.data_pieces = 0;
    }

    /// Lends the front of the queue (up to [`MAX_TRANSMIT_SLICES`] slices); `None` when empty.
    /// Adjacent tail pieces are contiguous in the tail and lent as one slice.
    pub(crate) fn transmit(&self) -> Option<Transmit<'_>> {
        if self.len == 0 {
            return None;
        }
        let mut slices = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        let mut count = 0;
        let mut len = 0;
        let mut offset = self.tail_sent;
        // The run of tail bytes not yet lent: `run_start..offset`.
        let mut run_start = offset;
        for piece in &self.pieces {
            match &piece.data {
                Data::Tail(n) => offset += n,
                Data::Shared(bytes) => {
                    if offset > run_start {
                        slices[count] = IoSlice::new(&self.tail[run_start..offset]);
                        count += 1;
                        len += offset - run_start;
                        if count == MAX_TRANSMIT_SLICES {
                            return Some(Transmit { slices, count, len });
                        }
                    }
                    run_start = offset;
                    slices[count] = IoSlice::new(bytes);
                    count += 1;
                    len += bytes.len();
                    if count == MAX_TRANSMIT_SLICES {
                        return Some(Transmit { slices, count, len });
                    }
                }
            }
        }
        if offset > run_start {
            slices[count] = IoSlice::new(&self.tail[run_start..offset]);
            count += 1;
            len += offset - run_start;
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
            let left = match &mut front.data {
                Data::Tail(n) => {
                    let step = written.min(*n);
                    *n -= step;
                    self.tail_sent += step;
                    written -= step;
                    *n
                }
                Data::Shared(bytes) => {
                    let step = written.min(bytes.len());
                    bytes.advance(step);
                    written -= step;
                    bytes.len()
                }
            };
            self.front_started = left > 0;
            if left == 0 {
                if let Some(piece) = self.pieces.pop_front() {
                    self.data_pieces -= usize::from(piece.is_data());
                }
            }
        }
        if self.len == 0 {
            // Drained: the buffer goes back to the pool (an idle connection holds none).
            pool.give(std::mem::take(&mut self.tail));
            self.tail_sent = 0;
            self.front_started = false;
        } else if self.tail_sent > COMPACT_AFTER {
            // INVARIANT: only the written prefix is dropped; `Tail` pieces count unsent bytes.
            self.tail.advance(self.tail_sent);
            self.tail_sent = 0;
        }
    }
}

impl OutboundQueue {
    /// Checks the queue's invariants (see the module docs); for the router's invariant checks.
    pub(crate) fn check_invariants(&self) {
        let tail: usize = self
            .pieces
            .iter()
            .filter_map(|p| match p.data {
                Data::Tail(n) => Some(n),
                Data::Shared(_) => None,
            })
            .sum();
        assert_eq!(tail, self.tail.len() - self.tail_sent, "tail pieces");
        let total: usize = self.pieces.iter().map(Piece::len).sum();
        assert_eq!(total, self.len, "queue length");
        let data = self.pieces.iter().filter(|p| p.is_data()).count();
        assert_eq!(data, self.data_pieces, "data pieces");
        assert!(
            self.pieces
                .iter()
                .zip(self.pieces.iter().skip(1))
                .all(|(a, b)| a.seq < b.seq),
            "pieces in push order"
        );
        if self.len == 0 {
            assert_eq!(self.tail.capacity(), 0, "an empty queue holds no buffer");
        }
        for (i, piece) in self.pieces.iter().enumerate() {
            if let Some((key, PieceKind::Payload)) = piece.tag {
                let head = i.checked_sub(1).and_then(|h| self.pieces.get(h));
                assert!(
                    i == 0
                        || matches!(head, Some(Piece { tag: Some((k, PieceKind::Head(_))), .. }) if *k == key),
                    "a payload piece follows its head"
                );
            }
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
            queue.push(&mut pool, &header, &payload, None);
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
        queue.push(&mut pool, &header, &payload, None);
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
        queue.push(&mut pool, &[0; HEADER_LEN], &payload, None);
        let shared = queue
            .pieces
            .iter()
            .any(|p| matches!(&p.data, Data::Shared(b) if b.as_ptr() == payload.as_ptr()));
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
            queue.push(&mut pool, &[0; HEADER_LEN], &payload, None);
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
            queue.push(&mut pool, &header, &payload, None);
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
