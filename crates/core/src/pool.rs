//! A pool of byte buffers shared by all connections of one broker.
//!
//! A connection needs a read buffer only while it has undecoded bytes, and an outbound buffer
//! only while it has unsent bytes: between two bursts both are empty. Each connection takes a
//! buffer from the pool when bytes arrive and gives it back as soon as it is drained. So an idle
//! connection holds no buffer at all (memory per idle connection stays a few hundred bytes),
//! while busy connections keep cycling the same warm buffers (no allocation per frame).
//!
//! # Invariants
//! - The pool holds at most `keep` buffers, each empty and with a capacity of at most
//!   `max_capacity`: what it retains is bounded by `keep × max_capacity`.
//! - A buffer given back while still shared (a frozen payload split off it is alive elsewhere) is
//!   still safe to reuse: `BytesMut` reallocates on the next reserve instead of overwriting.

use bytes::BytesMut;

/// See the module docs.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<BytesMut>,
    keep: usize,
    initial: usize,
    max_capacity: usize,
}

impl BufferPool {
    /// A pool that keeps up to `keep` buffers of at most `max_capacity` bytes and makes new ones
    /// of `initial` bytes.
    pub fn new(keep: usize, initial: usize, max_capacity: usize) -> BufferPool {
        BufferPool {
            free: Vec::with_capacity(keep),
            keep,
            initial,
            max_capacity,
        }
    }

    /// An empty buffer: a pooled one, or a new one of the initial capacity.
    pub fn take(&mut self) -> BytesMut {
        self.free
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.initial))
    }

    /// Gives a drained buffer back. Too large ones, and any beyond `keep`, are freed.
    pub fn give(&mut self, mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() == 0 || buf.capacity() > self.max_capacity || self.free.len() >= self.keep
        {
            return;
        }
        self.free.push(buf);
    }

    /// Bytes of capacity the pool holds (for the broker's memory accounting).
    pub fn retained_bytes(&self) -> usize {
        self.free.iter().map(BytesMut::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_cycle_and_the_pool_stays_bounded() {
        let mut pool = BufferPool::new(2, 1024, 4096);
        let a = pool.take();
        assert_eq!(a.capacity(), 1024);
        let ptr = a.as_ptr();
        pool.give(a);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same buffer comes back");
        pool.give(again);
        pool.give(BytesMut::with_capacity(1024));
        pool.give(BytesMut::with_capacity(1024));
        assert_eq!(pool.free.len(), 2, "at most `keep` buffers");
        pool.give(BytesMut::with_capacity(1 << 20));
        assert_eq!(pool.retained_bytes(), 2048, "too large ones are freed");
        let mut used = pool.take();
        used.extend_from_slice(b"leftover");
        pool.give(used);
        assert!(pool.take().is_empty(), "given-back buffers are cleared");
    }
}
