//! A running byte pattern with a prime period, for checking large bodies (many frames, many
//! megabytes) in order without storing them.

/// A deterministic byte pattern with a prime period, so a body of any length can be produced
/// and checked in order by slicing (memcpy / memcmp speed even in debug builds) without storing
/// it. A lost, duplicated or reordered piece shifts the bytes against the period and is caught
/// (a shift by an exact multiple of the period would also change the total length).
pub struct Pattern {
    /// The period's bytes twice over, so any window of up to `PERIOD` bytes is one slice.
    table: Vec<u8>,
}

impl Pattern {
    /// The period: a prime just under 2 MiB, above any frame payload the tests send.
    pub const PERIOD: usize = 2_097_143;

    /// The pattern (xorshift bytes; the seed only has to be fixed).
    pub fn new() -> Pattern {
        let mut table = Vec::with_capacity(2 * Self::PERIOD);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        while table.len() < Self::PERIOD {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            table.extend_from_slice(&state.to_le_bytes());
        }
        table.truncate(Self::PERIOD);
        table.extend_from_within(..Self::PERIOD);
        Pattern { table }
    }

    /// The `len` pattern bytes at stream offset `offset` (`len <= PERIOD`).
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        assert!(len <= Self::PERIOD, "pattern window too long");
        let start = (offset % Self::PERIOD as u64) as usize;
        &self.table[start..start + len]
    }

    /// Checks that `data` is the pattern at `offset`; panics with the first differing offset.
    #[track_caller]
    pub fn check(&self, offset: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let len = (data.len() - done).min(Self::PERIOD);
            let expected = self.slice(offset + done as u64, len);
            let got = &data[done..done + len];
            if got != expected {
                let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap();
                panic!(
                    "body differs from the pattern at stream offset {}",
                    offset + (done + at) as u64
                );
            }
            done += len;
        }
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern::new()
    }
}
