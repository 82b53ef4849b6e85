//! What every Criterion bench of this directory shares: one measurement configuration, so the
//! figures in PERF.md come from the same sample size and timings.

use criterion::Criterion;
use std::time::Duration;

/// 50 samples, 1 s of warm-up, 3 s of measurement per benchmark (PERF.md's "Micro-benchmarks").
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
