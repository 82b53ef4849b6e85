//! Level edges, key staleness, cost of long jumps, and a proptest against a `BTreeMap` model.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::level::{level_for, slot_for, List, NIL, NUM_LEVELS, RANGE_BITS};
use super::{Elapsed, Location, TimerKey, TimerWheel};

/// First deadline (from time 0) of each level 1..=5 and of the overflow list: 64^k.
const LEVEL_STARTS: [u64; NUM_LEVELS] =
    [1 << 6, 1 << 12, 1 << 18, 1 << 24, 1 << 30, 1 << RANGE_BITS];

const YEAR_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Where the timer `key` sits: `Some(level)`, `Some(NUM_LEVELS)` for the overflow list, `None`
/// for the expired list.
#[track_caller]
fn level_of<T>(wheel: &TimerWheel<T>, key: TimerKey) -> Option<usize> {
    let entry = wheel.get(key).expect("key is live");
    match entry.location {
        Location::Slot { level, .. } => Some(usize::from(level)),
        Location::Overflow => Some(NUM_LEVELS),
        Location::Expired => None,
    }
}

/// Polls at `now` until `None`, returning the values in the order handed out.
fn fire_due<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<T> {
    std::iter::from_fn(|| wheel.poll_expired(now)).collect()
}

/// Walks one list, checking its links and that each entry says it is in `location`.
#[track_caller]
fn walk<T>(wheel: &TimerWheel<T>, list: List, location: impl Fn(u64) -> Location) -> Vec<u64> {
    let mut deadlines = Vec::new();
    let mut prev = NIL;
    let mut cursor = list.head;
    while cursor != NIL {
        let entry = &wheel.entries[cursor as usize];
        assert_eq!(entry.prev, prev, "broken prev link");
        assert_eq!(entry.location, location(entry.deadline));
        deadlines.push(entry.deadline);
        prev = cursor;
        cursor = entry.next;
    }
    assert_eq!(list.tail, prev, "tail is not the last entry");
    deadlines
}

/// Checks every invariant listed in the module docs, in O(timers + slots).
#[track_caller]
fn assert_invariants<T>(wheel: &TimerWheel<T>) {
    let elapsed = wheel.elapsed;
    let mut count = 0;
    for (l, level) in wheel.levels.iter().enumerate() {
        assert_eq!(level.level, l);
        for (s, &list) in level.slots.iter().enumerate() {
            assert_eq!(
                level.occupied & (1 << s) != 0,
                !list.is_empty(),
                "mask bit {l}/{s}"
            );
            let location = |_| Location::Slot {
                level: l as u8,
                slot: s as u8,
            };
            for deadline in walk(wheel, list, location) {
                assert!(deadline > elapsed);
                assert_eq!(level_for(elapsed, deadline), Some(l));
                assert_eq!(slot_for(deadline, l), s);
                count += 1;
            }
        }
    }
    for deadline in walk(wheel, wheel.overflow, |_| Location::Overflow) {
        assert_eq!(level_for(elapsed, deadline), None);
        let epoch_start = deadline >> RANGE_BITS << RANGE_BITS;
        assert!(wheel.overflow_next <= epoch_start && wheel.overflow_next > elapsed);
        count += 1;
    }
    let expired = walk(wheel, wheel.expired, |_| Location::Expired);
    assert!(expired.iter().all(|&d| d <= elapsed));
    assert!(
        expired.windows(2).all(|w| w[0] <= w[1]),
        "expired list unsorted"
    );
    count += expired.len();
    assert_eq!(count, wheel.len(), "an entry is in no list");
}

#[test]
fn level_for_edges() {
    assert_eq!(level_for(0, 1), Some(0));
    assert_eq!(level_for(0, 63), Some(0));
    for (l, &start) in LEVEL_STARTS.iter().enumerate() {
        let above = (l + 1 < NUM_LEVELS).then_some(l + 1);
        assert_eq!(level_for(0, start - 1), Some(l), "{start} - 1");
        assert_eq!(level_for(0, start), above, "{start}");
        assert_eq!(level_for(0, start + 1), above, "{start} + 1");
        // Placement is relative to the wheel's position, not to the distance: one ms across a
        // boundary still goes in the level of that boundary, one ms after it in level 0.
        assert_eq!(
            level_for(start - 1, start),
            above,
            "{start} from {start} - 1"
        );
        assert_eq!(
            level_for(start, start + 1),
            Some(0),
            "{start} + 1 from {start}"
        );
        assert_eq!(level_for(1, start), above, "{start} from 1");
    }
    assert_eq!(level_for(0, u64::MAX), None);
    assert_eq!(level_for(u64::MAX - 1, u64::MAX), Some(0));
}

#[test]
fn every_level_edge_fires_exactly_at_its_deadline() {
    for start in [0, 1, 1000, 12_345_678_901] {
        for (l, &width) in LEVEL_STARTS.iter().enumerate() {
            for deadline in [width - 1, width, width + 1].map(|d| start + d) {
                let mut wheel = TimerWheel::new();
                assert_eq!(fire_due(&mut wheel, start), Vec::<u64>::new());
                let key = wheel.insert(deadline, deadline).unwrap();
                let expected = level_for(start, deadline).unwrap_or(NUM_LEVELS);
                assert_eq!(level_of(&wheel, key), Some(expected));
                if start == 0 && deadline == width - 1 {
                    assert_eq!(expected, l, "{deadline} from 0");
                }
                assert!(wheel.next_deadline().unwrap() <= deadline);
                assert_eq!(
                    wheel.poll_expired(deadline - 1),
                    None,
                    "{deadline} fired early"
                );
                assert_invariants(&wheel);
                assert_eq!(wheel.deadline(key), Some(deadline));
                assert_eq!(
                    wheel.poll_expired(deadline),
                    Some(deadline),
                    "{deadline} late"
                );
                assert_eq!(wheel.poll_expired(deadline), None);
                assert!(wheel.is_empty());
                assert_eq!(wheel.deadline(key), None);
            }
        }
    }
}

#[test]
fn timers_fire_exactly_when_now_reaches_their_deadline() {
    let deadlines = [
        1, 2, 63, 64, 65, 100, 127, 128, 500, 4095, 4096, 4097, 4100, 9999,
    ];
    let mut wheel = TimerWheel::new();
    for d in deadlines {
        wheel.insert(d, d).unwrap();
    }
    let mut fired = Vec::new();
    for now in 0..=10_000 {
        while let Some(d) = wheel.poll_expired(now) {
            assert_eq!(d, now, "timer {d} fired at {now}");
            fired.push(d);
        }
        assert!(wheel.next_deadline().is_none_or(|next| next > now));
    }
    assert_eq!(fired, deadlines);
    assert!(wheel.is_empty());
}

#[test]
fn insert_in_the_past_is_elapsed() {
    let mut wheel = TimerWheel::new();
    assert_eq!(wheel.insert(0, 'a'), Err(Elapsed('a')));
    assert_eq!(fire_due(&mut wheel, 100), Vec::<char>::new());
    assert_eq!(wheel.elapsed(), 100);
    assert_eq!(wheel.insert(50, 'b'), Err(Elapsed('b')));
    assert_eq!(wheel.insert(100, 'c'), Err(Elapsed('c')));
    assert!(wheel.is_empty());
    wheel.insert(101, 'd').unwrap();
    assert_eq!(wheel.len(), 1);
}

#[test]
fn stale_key_after_slot_reuse_returns_none() {
    let mut wheel = TimerWheel::new();
    let removed = wheel.insert(10, "removed").unwrap();
    assert_eq!(wheel.remove(removed), Some("removed"));
    let reused = wheel.insert(10, "reused").unwrap();
    assert_eq!(reused.index, removed.index, "the slab slot is reused");
    assert_eq!(wheel.remove(removed), None);
    assert_eq!(wheel.deadline(removed), None);
    assert_eq!(wheel.len(), 1);

    // The same after the timer fired rather than being removed.
    assert_eq!(wheel.poll_expired(10), Some("reused"));
    let again = wheel.insert(20, "again").unwrap();
    assert_eq!(again.index, reused.index);
    assert_eq!(wheel.remove(reused), None);
    assert_eq!(wheel.remove(removed), None);
    assert_eq!(wheel.deadline(again), Some(20));
    assert_eq!(wheel.remove(again), Some("again"));
    assert_eq!(wheel.remove(again), None);

    // A key from another wheel that names no slot at all.
    let foreign = TimerKey {
        index: 1234,
        generation: 0,
    };
    assert_eq!(wheel.remove(foreign), None);
}

#[test]
fn remove_all_leaves_nothing() {
    let mut wheel = TimerWheel::with_capacity(16);
    let mut keys = Vec::new();
    for (i, d) in [
        1,
        5,
        63,
        64,
        4096,
        1 << 20,
        1 << 30,
        1 << 36,
        u64::MAX,
        3,
        3,
    ]
    .into_iter()
    .enumerate()
    {
        keys.push(wheel.insert(d, i).unwrap());
    }
    // Expire two timers without handing them out: they sit in the expired list.
    assert!(wheel.poll_expired(3).is_some());
    assert_invariants(&wheel);
    for key in keys {
        wheel.remove(key);
        assert_invariants(&wheel);
    }
    assert_eq!(wheel.len(), 0);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
    assert_eq!(wheel.poll_expired(u64::MAX), None);
    assert!(wheel.levels.iter().all(|level| level.occupied == 0));
}

#[test]
fn polling_early_twice_or_backwards_is_harmless() {
    let mut wheel = TimerWheel::new();
    wheel.insert(1000, 'x').unwrap();
    assert_eq!(wheel.poll_expired(999), None);
    assert_eq!(wheel.poll_expired(999), None);
    assert_eq!(wheel.poll_expired(5), None);
    assert_eq!(wheel.elapsed(), 999);
    assert_eq!(wheel.poll_expired(1000), Some('x'));
    assert_eq!(wheel.poll_expired(1000), None);
    assert_eq!(wheel.poll_expired(0), None);
    assert_eq!(wheel.elapsed(), 1000);
}

#[test]
fn next_deadline_leads_to_the_earliest_timer() {
    let mut wheel = TimerWheel::new();
    assert_eq!(wheel.next_deadline(), None);
    wheel.insert(5000, ()).unwrap();
    // Follow next_deadline like the router would: it must never overshoot the deadline.
    let mut wakeups = 0;
    let mut now = 0;
    loop {
        let next = wheel.next_deadline().unwrap();
        assert!(next > now && next <= 5000);
        now = next;
        wakeups += 1;
        if wheel.poll_expired(now).is_some() {
            break;
        }
    }
    assert_eq!(now, 5000);
    assert!(wakeups <= NUM_LEVELS, "{wakeups} wakeups");
}

#[test]
fn large_jump_costs_levels_not_milliseconds() {
    let mut wheel = TimerWheel::new();
    wheel.insert(YEAR_MS, "year").unwrap();
    let steps = wheel.advance(YEAR_MS);
    assert!(steps <= NUM_LEVELS, "{steps} steps for one timer");
    assert_eq!(wheel.poll_expired(YEAR_MS), Some("year"));

    // Deadlines past the levels' range keep their exact time, and the longest possible jump is
    // still a handful of steps.
    let start = wheel.elapsed();
    let far = start + 10 * YEAR_MS;
    wheel.insert(far, "far").unwrap();
    wheel.insert(u64::MAX - 1, "max-1").unwrap();
    wheel.insert(u64::MAX, "max").unwrap();
    assert_eq!(wheel.poll_expired(far - 1), None, "fired early");
    assert_invariants(&wheel);
    assert_eq!(wheel.poll_expired(far), Some("far"));
    let steps = wheel.advance(u64::MAX);
    assert!(steps <= 2 * (NUM_LEVELS + 1), "{steps} steps");
    assert_eq!(fire_due(&mut wheel, u64::MAX), ["max-1", "max"]);
    assert!(wheel.is_empty());
}

#[test]
fn many_timers_come_out_in_deadline_order() {
    let mut wheel = TimerWheel::new();
    let mut deadlines: Vec<u64> = (1..2000u64).map(|i| i * 7919 % 300_000 + 1).collect();
    for &d in &deadlines {
        wheel.insert(d, d).unwrap();
    }
    assert_invariants(&wheel);
    let fired = fire_due(&mut wheel, 300_000);
    deadlines.sort_unstable();
    assert_eq!(fired, deadlines);
}

#[test]
fn cancel_an_expired_timer_before_it_is_handed_out() {
    let mut wheel = TimerWheel::new();
    let a = wheel.insert(10, 'a').unwrap();
    let b = wheel.insert(10, 'b').unwrap();
    let first = wheel.poll_expired(10).unwrap();
    let (other, other_key) = if first == 'a' { ('b', b) } else { ('a', a) };
    assert_eq!(wheel.next_deadline(), Some(10));
    assert_eq!(wheel.remove(other_key), Some(other));
    assert_eq!(wheel.poll_expired(10), None);
    assert_eq!(wheel.next_deadline(), None);
}

/// One step of a random scenario.
#[derive(Clone, Debug)]
enum Op {
    /// Arm a timer `delta` ms after the current time (0 = in the past).
    Insert(u64),
    /// Remove the n-th live key (modulo their number).
    Remove(usize),
    /// Remove the n-th stale key: must return `None`.
    RemoveStale(usize),
    /// Advance by `delta` and take just one value (leaves the rest in the expired list).
    PollOne(u64),
    /// Advance by `delta` and fire what is due.
    Advance(u64),
}

fn delta() -> impl Strategy<Value = u64> {
    let edges: Vec<u64> = LEVEL_STARTS
        .iter()
        .flat_map(|&w| [w - 1, w, w + 1])
        .collect();
    prop_oneof![
        4 => 0..130u64,
        3 => 0..20_000u64,
        1 => proptest::sample::select(edges),
        1 => 0..(1u64 << 40),
        1 => Just(u64::MAX),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => delta().prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::RemoveStale),
        1 => delta().prop_map(Op::PollOne),
        2 => delta().prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random insert/remove/advance sequences against a `BTreeMap` model: the same timers fire
    /// at each step, in deadline order, never early, and the counts agree.
    #[test]
    fn matches_btreemap_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut wheel = TimerWheel::new();
        // (deadline, id) -> key: iterates in deadline order.
        let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
        let mut deadline_of: BTreeMap<u64, u64> = BTreeMap::new();
        let mut stale: Vec<TimerKey> = Vec::new();
        let mut now = 0u64;
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Insert(delta) => {
                    let deadline = now.saturating_add(delta);
                    let id = next_id;
                    next_id += 1;
                    match wheel.insert(deadline, id) {
                        Ok(key) => {
                            prop_assert!(deadline > now);
                            model.insert((deadline, id), key);
                            deadline_of.insert(id, deadline);
                        }
                        Err(Elapsed(back)) => {
                            prop_assert_eq!(back, id);
                            prop_assert!(deadline <= now);
                        }
                    }
                }
                Op::Remove(n) if !model.is_empty() => {
                    let (&(deadline, id), &key) = model.iter().nth(n % model.len()).unwrap();
                    prop_assert_eq!(wheel.deadline(key), Some(deadline));
                    prop_assert_eq!(wheel.remove(key), Some(id));
                    model.remove(&(deadline, id));
                    deadline_of.remove(&id);
                    stale.push(key);
                }
                Op::Remove(_) => {}
                Op::RemoveStale(n) if !stale.is_empty() => {
                    let key = stale[n % stale.len()];
                    prop_assert_eq!(wheel.remove(key), None);
                    prop_assert_eq!(wheel.deadline(key), None);
                }
                Op::RemoveStale(_) => {}
                Op::PollOne(delta) => {
                    now = now.saturating_add(delta);
                    if let Some(id) = wheel.poll_expired(now) {
                        let deadline = deadline_of.remove(&id).expect("fired a live timer");
                        prop_assert!(deadline <= now, "{} fired early at {}", id, now);
                        // Never out of order: nothing earlier is left behind.
                        let (&(earliest, _), _) = model.first_key_value().unwrap();
                        prop_assert_eq!(earliest, deadline);
                        stale.push(model.remove(&(deadline, id)).unwrap());
                    } else {
                        prop_assert!(model.first_key_value().is_none_or(|(&(d, _), _)| d > now));
                    }
                }
                Op::Advance(delta) => {
                    now = now.saturating_add(delta);
                    let fired = fire_due(&mut wheel, now);
                    let due: Vec<(u64, u64)> =
                        model.keys().copied().take_while(|&(d, _)| d <= now).collect();
                    if now == u64::MAX {
                        prop_assert_eq!(due.len(), model.len());
                    }
                    let fired_deadlines: Vec<u64> = fired.iter().map(|id| deadline_of[id]).collect();
                    prop_assert!(fired_deadlines.windows(2).all(|w| w[0] <= w[1]), "out of order");
                    let fired_set: HashSet<u64> = fired.iter().copied().collect();
                    let due_set: HashSet<u64> = due.iter().map(|&(_, id)| id).collect();
                    prop_assert_eq!(fired_set.len(), fired.len(), "a timer fired twice");
                    prop_assert_eq!(fired_set, due_set);
                    for (deadline, id) in due {
                        stale.push(model.remove(&(deadline, id)).unwrap());
                        deadline_of.remove(&id);
                    }
                }
            }
            prop_assert_eq!(wheel.elapsed(), now);
            prop_assert_eq!(wheel.len(), model.len());
            prop_assert_eq!(wheel.is_empty(), model.is_empty());
            match (wheel.next_deadline(), model.first_key_value()) {
                (Some(next), Some((&(earliest, _), _))) => prop_assert!(next <= earliest),
                (None, None) => {}
                (next, earliest) => prop_assert!(false, "next_deadline {:?} vs {:?}", next, earliest),
            }
            assert_invariants(&wheel);
        }
        // Everything still armed fires by the end of time, then the wheel is empty.
        let rest = fire_due(&mut wheel, u64::MAX);
        prop_assert_eq!(rest.len(), model.len());
        prop_assert!(wheel.is_empty());
        prop_assert_eq!(wheel.next_deadline(), None);
    }
}
