//! Rate limits for log lines that one line per connection would otherwise make unbounded.
//!
//! The broker logs one info line per connection lifecycle (at its close). Under churn — a
//! client reconnecting in a loop, a flood of handshake-less connections — that is still one line
//! per connection: thousands a second. A [`RateLimit`] is a token bucket per kind of line: a
//! burst of [`BURST`] lines, then [`PER_SECOND`] a second; a line over the limit is not written
//! but counted, and the next line written says how many similar lines were suppressed before it.
//!
//! Pure: it is given the time (the server's `now`), never reads a clock.

use std::time::{Duration, Instant};

/// Lines written at once before the limit applies: a restart's reconnect wave of a small
/// deployment is logged in full.
pub(crate) const BURST: u64 = 100;

/// Lines a second once the burst is spent: about 2 KB/s of info log under any churn.
pub(crate) const PER_SECOND: u64 = 10;

/// A token bucket for one kind of log line. Tokens are kept in thousandths, so a refill of
/// `PER_SECOND` tokens a second is exact at millisecond resolution.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: u64,
    per_second: u64,
    /// Thousandths of a token available.
    milli_tokens: u64,
    /// When the bucket was last refilled.
    refilled: Option<Instant>,
    /// Lines suppressed since the last one written.
    suppressed: u64,
}

/// What to do with one log line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// Write it; `suppressed` similar lines were dropped since the last one written (say so).
    Write {
        /// Lines dropped since the last one written.
        suppressed: u64,
    },
    /// Drop it (counted, reported with the next line written).
    Suppress,
}

impl RateLimit {
    /// A full bucket of `burst` lines, refilled at `per_second`.
    pub(crate) fn new(burst: u64, per_second: u64) -> RateLimit {
        RateLimit {
            burst,
            per_second,
            milli_tokens: burst * 1000,
            refilled: None,
            suppressed: 0,
        }
    }

    /// Decides about one line at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = match self.refilled {
            Some(at) => now.saturating_duration_since(at),
            None => Duration::ZERO,
        };
        // Refill only whole milliseconds, and move the mark by exactly those: no drift.
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if self.refilled.is_none() || ms > 0 {
            self.refilled = Some(match self.refilled {
                Some(at) => at + Duration::from_millis(ms),
                None => now,
            });
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(ms.saturating_mul(self.per_second))
                .min(self.burst * 1000);
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            Verdict::Write {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(BURST, PER_SECOND)
    }
}

/// `" (N similar lines suppressed)"`, or nothing when none were.
pub(crate) fn suppressed_note(suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        1 => String::from(" (1 similar line suppressed)"),
        n => format!(" ({n} similar lines suppressed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(limit: &mut RateLimit, at: Instant, lines: usize) -> (usize, u64) {
        let mut written = 0;
        let mut reported = 0;
        for _ in 0..lines {
            if let Verdict::Write { suppressed } = limit.check(at) {
                written += 1;
                reported += suppressed;
            }
        }
        (written, reported)
    }

    #[test]
    fn a_burst_then_the_rate_and_every_suppressed_line_is_reported() {
        // The test's origin; only offsets from it matter.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut limit = RateLimit::new(5, 10);
        assert_eq!(writes(&mut limit, t0, 8), (5, 0), "the burst");
        // 100 ms later: one token (10 a second); it reports the 3 suppressed before it.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limit.check(t1), Verdict::Write { suppressed: 3 });
        assert_eq!(limit.check(t1), Verdict::Suppress);
        // 99 ms: not yet a whole token; 1 ms more: one.
        assert_eq!(
            limit.check(t1 + Duration::from_millis(99)),
            Verdict::Suppress
        );
        assert_eq!(
            limit.check(t1 + Duration::from_millis(100)),
            Verdict::Write { suppressed: 2 }
        );
        // A long silence refills the burst, never more.
        let later = t1 + Duration::from_secs(3600);
        assert_eq!(writes(&mut limit, later, 10), (5, 0));
    }

    #[test]
    fn the_note_says_how_many() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(1), " (1 similar line suppressed)");
        assert_eq!(suppressed_note(7), " (7 similar lines suppressed)");
    }
}
