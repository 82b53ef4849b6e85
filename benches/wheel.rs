//! Timer-wheel micro-benchmarks with 100 000 armed timers, deadlines spread uniformly over the
//! next [`HORIZON_MS`] (about one timer per millisecond, as 100 000 requests with 100 s
//! timeouts would give).
//!
//! - `insert`: arm one more timer (batches of [`BATCH`] timed, then removed untimed).
//! - `remove`: cancel a random armed timer (batches timed, then re-armed untimed).
//! - `insert_remove`: arm one and cancel a random one, the steady state of request churn.
//! - `advance/<span>`: move the clock on by `span` ms and hand out every expired timer; each is
//!   re-armed one horizon later (a periodic timer), so the population stays at 100 000.
//! - `next_deadline`: the question the server asks after every wakeup.

mod common;

use criterion::measurement::{Measurement, WallTime};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use switchyard_core::wheel::{TimerKey, TimerWheel};

const ARMED: usize = 100_000;
const HORIZON_MS: u64 = 100_000;
const BATCH: usize = 1024;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A wheel at time 0 with [`ARMED`] timers due in `1..=HORIZON_MS`; each timer's value is its
/// deadline. Returns the keys too.
fn armed_wheel(rng: &mut Rng) -> (TimerWheel<u64>, Vec<TimerKey>) {
    let mut wheel = TimerWheel::with_capacity(ARMED + BATCH);
    let keys = (0..ARMED)
        .map(|_| {
            let deadline = 1 + rng.below(HORIZON_MS);
            wheel.insert(deadline, deadline).expect("in the future")
        })
        .collect();
    (wheel, keys)
}

/// Times `iters` calls of `timed` in batches of [`BATCH`], with `untimed` after each batch.
fn batched<S>(
    state: &mut S,
    iters: u64,
    mut timed: impl FnMut(&mut S),
    mut untimed: impl FnMut(&mut S),
) -> Duration {
    let clock = WallTime;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64);
        let start = clock.start();
        for _ in 0..n {
            timed(state);
        }
        total += clock.end(start);
        untimed(state);
        left -= n;
    }
    total
}

struct State {
    wheel: TimerWheel<u64>,
    keys: Vec<TimerKey>,
    rng: Rng,
    /// Timers touched by the current batch: keys armed, or indices into `keys` cancelled.
    batch_keys: Vec<TimerKey>,
    batch_slots: Vec<usize>,
}

fn state() -> State {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (wheel, keys) = armed_wheel(&mut rng);
    State {
        wheel,
        keys,
        rng,
        batch_keys: Vec::with_capacity(BATCH),
        batch_slots: Vec::with_capacity(BATCH),
    }
}

fn insert_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_100k");
    group.throughput(Throughput::Elements(1));
    let mut s = state();

    group.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            batched(
                &mut s,
                iters,
                |s| {
                    let deadline = 1 + s.rng.below(HORIZON_MS);
                    let key = s.wheel.insert(deadline, deadline).expect("future");
                    s.batch_keys.push(key);
                },
                |s| {
                    for key in s.batch_keys.drain(..) {
                        s.wheel.remove(key);
                    }
                },
            )
        })
    });

    group.bench_function("remove", |b| {
        b.iter_custom(|iters| {
            batched(
                &mut s,
                iters,
                |s| {
                    let slot = s.rng.below(ARMED as u64) as usize;
                    // A slot picked twice in a batch is a stale key the second time: still a
                    // valid (and cheap) call, but rare enough not to matter (1024 of 100 000).
                    black_box(s.wheel.remove(s.keys[slot]));
                    s.batch_slots.push(slot);
                },
                |s| {
                    for slot in s.batch_slots.drain(..) {
                        if s.wheel.deadline(s.keys[slot]).is_none() {
                            let deadline = 1 + s.rng.below(HORIZON_MS);
                            s.keys[slot] = s.wheel.insert(deadline, deadline).expect("future");
                        }
                    }
                },
            )
        })
    });

    group.bench_function("insert_remove", |b| {
        b.iter(|| {
            let deadline = 1 + s.rng.below(HORIZON_MS);
            let slot = s.rng.below(ARMED as u64) as usize;
            let old = s.wheel.remove(s.keys[slot]);
            s.keys[slot] = s.wheel.insert(deadline, deadline).expect("future");
            old
        })
    });
    assert_eq!(s.wheel.len(), ARMED);

    group.bench_function("next_deadline", |b| {
        b.iter(|| black_box(&s.wheel).next_deadline())
    });
    group.finish();
}

fn advance(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_100k_advance");
    for span in [1u64, 64, 1000] {
        let mut s = state();
        let mut now = 0;
        // About one timer is due per millisecond.
        group.throughput(Throughput::Elements(span));
        group.bench_function(BenchmarkId::from_parameter(format!("{span}ms")), |b| {
            b.iter(|| {
                now += span;
                let mut fired = 0u32;
                while let Some(deadline) = s.wheel.poll_expired(now) {
                    s.wheel
                        .insert(deadline + HORIZON_MS, deadline + HORIZON_MS)
                        .expect("future");
                    fired += 1;
                }
                fired
            })
        });
        assert_eq!(s.wheel.len(), ARMED);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = insert_remove, advance
}
criterion_main!(benches);
