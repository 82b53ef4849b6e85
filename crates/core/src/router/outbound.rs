//! One connection's queue of bytes waiting to be written.
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
//! # Invariants
//! - Bytes go out in the order they were pushed: the pieces, front to back.
//! - The `Tail` pieces' lengths add up to `tail.len() - tail_sent`.
//! - `len` is exactly the number of unsent bytes held; the router's flow control and the broker's
//!   buffered-bytes figure are computed from it.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::pool::BufferPool;
use crate::protocol::HEADER_LEN;

/// Payloads up to this size are copied into the queue; larger ones are shared. 16 KiB: copying it
/// costs less than a cache-missing pointer chase per piece, and it bounds what a copied frame
/// adds to the tail.
pub(crate) const COPY_THRESHOLD: usize = 16 * 1024;

/// Most buffers handed to one `write_vectored` call (Linux's IOV_MAX is 1024; 64 keeps the array
/// on the stack and is plenty: the tail holds any number of small frames in one piece).
const MAX_IOVECS: usize = 64;

/// A partly written tail is compacted (its written prefix dropped) once that prefix exceeds this,
/// so a connection that never fully drains cannot grow its tail without bound.
const COMPACT_AFTER: usize = 64 * 1024;

/// Outcome of [`Router::write_to`](super::Router::write_to).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteStatus {
    /// Everything queued was written.
    Drained,
    /// The writer would block with bytes still queued (wait for writability).
    Blocked,
    /// The per-call byte budget ran out with bytes still queued (call again next turn).
    BudgetSpent,
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

    /// Writes queued bytes with vectored writes until the queue is empty, the writer would block,
    /// or `budget` bytes were written.
    ///
    /// Returns the number of bytes written — also when it ends with an error: what earlier
    /// writes of the same call took has left the queue, and the caller's byte accounting must
    /// know it — and why it stopped: `Ok(status)`, or any error of the writer other than
    /// `WouldBlock` and `Interrupted` (retried); the queue then holds whatever was not written.
    pub(crate) fn write_to(
        &mut self,
        pool: &mut BufferPool,
        writer: &mut dyn Write,
        budget: usize,
    ) -> (usize, io::Result<WriteStatus>) {
        let mut written_total = 0;
        while self.len > 0 {
            if written_total >= budget {
                return (written_total, Ok(WriteStatus::BudgetSpent));
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut offset = self.tail_sent;
            for piece in self.pieces.iter().take(MAX_IOVECS) {
                slices[count] = match piece {
                    Piece::Tail(n) => {
                        let slice = IoSlice::new(&self.tail[offset..offset + n]);
                        offset += n;
                        slice
                    }
                    Piece::Shared(bytes) => IoSlice::new(bytes),
                };
                count += 1;
            }
            let written = match writer.write_vectored(&slices[..count]) {
                Ok(0) => return (written_total, Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (written_total, Ok(WriteStatus::Blocked));
                }
                // A TLS writer takes at most 64 KiB per call, so an error after earlier calls of
                // this one took bytes is ordinary (a peer reset in the middle of a large frame).
                Err(e) => return (written_total, Err(e)),
            };
            self.consume(written);
            written_total += written;
        }
        // Drained: the buffer goes back to the pool (an idle connection holds none).
        pool.give(std::mem::take(&mut self.tail));
        self.tail_sent = 0;
        (written_total, Ok(WriteStatus::Drained))
    }

    fn consume(&mut self, mut written: usize) {
        debug_assert!(written <= self.len);
        self.len -= written;
        while written > 0 {
            let Some(front) = self.pieces.front_mut() else {
                debug_assert!(false, "wrote more than was queued");
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
        if self.tail_sent > COMPACT_AFTER {
            // INVARIANT: only the written prefix is dropped; `Tail` pieces count unsent bytes.
            self.tail.advance(self.tail_sent);
            self.tail_sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `limit` bytes per call and then blocks after `calls` calls.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.limit - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.limit {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
        let mut writer = Trickle {
            out: Vec::new(),
            limit: 1000,
            calls_left: usize::MAX,
        };
        let mut rounds = 0;
        loop {
            let (_, status) = queue.write_to(&mut pool, &mut writer, 3000);
            let status = status.unwrap();
            rounds += 1;
            if status == WriteStatus::Drained {
                break;
            }
            assert_eq!(status, WriteStatus::BudgetSpent);
        }
        assert!(rounds > 1);
        assert_eq!(writer.out, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn blocked_writer_keeps_the_rest_queued() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let (header, payload) = frames().remove(1);
        queue.push(&mut pool, &header, &payload);
        let mut writer = Trickle {
            out: Vec::new(),
            limit: 100,
            calls_left: 2,
        };
        let (written, status) = queue.write_to(&mut pool, &mut writer, usize::MAX);
        assert_eq!((written, status.unwrap()), (200, WriteStatus::Blocked));
        assert_eq!(queue.len(), HEADER_LEN + payload.len() - 200);
        queue.clear(&mut pool);
        assert!(queue.is_empty());
    }

    /// A writer that takes `limit` bytes per call for `calls` calls, then fails like a socket
    /// whose peer reset the connection (a TLS writer takes at most 64 KiB per call, so this is
    /// how a reset in the middle of a large frame looks).
    struct ThenReset {
        limit: usize,
        calls_left: usize,
    }

    impl Write for ThenReset {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            self.calls_left -= 1;
            Ok(bufs.iter().map(|b| b.len()).sum::<usize>().min(self.limit))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_error_after_partial_writes_still_reports_what_was_written() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let (header, payload) = frames().remove(1);
        queue.push(&mut pool, &header, &payload);
        let total = queue.len();
        let mut writer = ThenReset {
            limit: 100,
            calls_left: 2,
        };
        let (written, status) = queue.write_to(&mut pool, &mut writer, usize::MAX);
        assert_eq!(
            status.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(written, 200, "the two writes before the error count");
        assert_eq!(queue.len(), total - 200, "and left the queue");
        queue.clear(&mut pool);
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
    }

    #[test]
    fn a_never_drained_queue_compacts_its_written_prefix() {
        let mut queue = OutboundQueue::default();
        let mut pool = BufferPool::new(4, 1024, 1 << 20);
        let mut expected = Vec::new();
        let mut writer = Trickle {
            out: Vec::new(),
            limit: 100,
            calls_left: usize::MAX,
        };
        for i in 0..2_000u32 {
            let payload = Bytes::from(vec![i as u8; 50]);
            let header = [(i % 251) as u8; HEADER_LEN];
            queue.push(&mut pool, &header, &payload);
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
            // Write a little less than is pushed: the queue never drains until the end.
            queue.write_to(&mut pool, &mut writer, 100).1.unwrap();
            assert!(queue.tail_sent <= COMPACT_AFTER + 100, "compacted");
            assert!(!queue.is_empty(), "never drained");
        }
        loop {
            let (_, status) = queue.write_to(&mut pool, &mut writer, usize::MAX);
            if status.unwrap() == WriteStatus::Drained {
                break;
            }
        }
        assert_eq!(writer.out, expected);
        assert_eq!(
            queue.tail.capacity(),
            0,
            "the drained buffer went back to the pool"
        );
    }
}
