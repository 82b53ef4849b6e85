//! One connection's queue of bytes waiting to be written.
//!
//! Small frames (header plus a payload of at most [`COPY_THRESHOLD`] bytes) are copied into a
//! growing `tail` buffer, so a 64-byte reply never pins the 64 KiB read buffer it was decoded
//! from, and many small frames go out in one contiguous write. A large payload is not copied: the
//! tail (ending with the large frame's header) is frozen into a segment and the payload's
//! [`Bytes`] follows it as its own segment — zero-copy, and shared when a broadcast sends the same
//! payload to many peers.
//!
//! # Invariants
//! - Bytes go out in the order they were pushed: every segment, front to back, then the tail.
//! - `len` is exactly the number of unsent bytes held (segments plus tail); the router's flow
//!   control and the broker's buffered-bytes figure are computed from it.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::protocol::HEADER_LEN;

/// Payloads up to this size are copied into the queue; larger ones are shared. 16 KiB: copying it
/// costs less than a cache-missing pointer chase per segment, and it bounds what a copied frame
/// adds to the tail.
pub(crate) const COPY_THRESHOLD: usize = 16 * 1024;

/// Most buffers handed to one `write_vectored` call (Linux's IOV_MAX is 1024; 64 keeps the array
/// on the stack and is plenty: the tail holds any number of small frames in one buffer).
const MAX_IOVECS: usize = 64;

/// Outcome of [`OutboundQueue::write_to`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteStatus {
    /// Everything queued was written.
    Drained,
    /// The writer would block with bytes still queued (wait for writability).
    Blocked,
    /// The per-call byte budget ran out with bytes still queued (call again next turn).
    BudgetSpent,
}

#[derive(Default)]
pub(crate) struct OutboundQueue {
    segments: VecDeque<Bytes>,
    tail: BytesMut,
    /// Bytes at the front of `tail` already written. Kept instead of advancing the buffer so that
    /// a drained tail is simply cleared and its whole capacity reused in place, with no
    /// reallocation once warm.
    tail_sent: usize,
    len: usize,
}

/// A partly written tail is compacted (its written prefix dropped) once that prefix exceeds this,
/// so a connection that never fully drains cannot grow its tail without bound.
const COMPACT_AFTER: usize = 64 * 1024;

impl OutboundQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues one frame: its encoded header and its payload.
    pub(crate) fn push(&mut self, header: &[u8; HEADER_LEN], payload: &Bytes) {
        self.tail.extend_from_slice(header);
        if payload.len() <= COPY_THRESHOLD {
            self.tail.extend_from_slice(payload);
        } else {
            self.drop_sent_prefix();
            self.segments.push_back(self.tail.split().freeze());
            self.segments.push_back(payload.clone());
        }
        self.len += HEADER_LEN + payload.len();
    }

    /// Drops everything queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        self.segments.clear();
        self.tail.clear();
        self.tail_sent = 0;
        self.len = 0;
    }

    /// Writes queued bytes with vectored writes until the queue is empty, the writer would block,
    /// or `budget` bytes were written.
    ///
    /// Returns the number of bytes written and why it stopped.
    ///
    /// # Errors
    /// Any error of the writer other than `WouldBlock` and `Interrupted` (retried); the queue then
    /// holds whatever was not written.
    pub(crate) fn write_to(
        &mut self,
        writer: &mut dyn Write,
        budget: usize,
    ) -> io::Result<(usize, WriteStatus)> {
        let mut written_total = 0;
        while self.len > 0 {
            if written_total >= budget {
                return Ok((written_total, WriteStatus::BudgetSpent));
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for segment in self.segments.iter().take(MAX_IOVECS - 1) {
                slices[count] = IoSlice::new(segment);
                count += 1;
            }
            if self.tail.len() > self.tail_sent && count < MAX_IOVECS {
                slices[count] = IoSlice::new(&self.tail[self.tail_sent..]);
                count += 1;
            }
            let written = match writer.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((written_total, WriteStatus::Blocked));
                }
                Err(e) => return Err(e),
            };
            self.consume(written);
            written_total += written;
        }
        Ok((written_total, WriteStatus::Drained))
    }

    fn drop_sent_prefix(&mut self) {
        self.tail.advance(self.tail_sent);
        self.tail_sent = 0;
    }

    fn consume(&mut self, mut written: usize) {
        debug_assert!(written <= self.len);
        self.len -= written;
        while written > 0 {
            let Some(front) = self.segments.front_mut() else {
                // INVARIANT: whatever is not in a segment is in the unsent part of the tail.
                debug_assert!(written <= self.tail.len() - self.tail_sent);
                self.tail_sent += written;
                if self.tail_sent == self.tail.len() {
                    self.tail.clear();
                    self.tail_sent = 0;
                } else if self.tail_sent > COMPACT_AFTER {
                    self.drop_sent_prefix();
                }
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.segments.pop_front();
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
        let mut expected = Vec::new();
        for (header, payload) in frames() {
            queue.push(&header, &payload);
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
            let (_, status) = queue.write_to(&mut writer, 3000).unwrap();
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
        let (header, payload) = frames().remove(1);
        queue.push(&header, &payload);
        let mut writer = Trickle {
            out: Vec::new(),
            limit: 100,
            calls_left: 2,
        };
        let (written, status) = queue.write_to(&mut writer, usize::MAX).unwrap();
        assert_eq!((written, status), (200, WriteStatus::Blocked));
        assert_eq!(queue.len(), HEADER_LEN + payload.len() - 200);
        queue.clear();
        assert!(queue.is_empty());
    }

    #[test]
    fn large_payload_is_shared_not_copied() {
        let mut queue = OutboundQueue::default();
        let payload = Bytes::from(vec![1u8; COPY_THRESHOLD + 1]);
        queue.push(&[0; HEADER_LEN], &payload);
        let shared = queue
            .segments
            .iter()
            .any(|s| s.as_ptr() == payload.as_ptr());
        assert!(shared);
    }
}
