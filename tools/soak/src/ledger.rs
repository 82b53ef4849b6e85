//! What every actor of a round reports: counters, violations, and the facts needed to judge an
//! outcome that one actor cannot judge alone.
//!
//! Most outcomes are judged where they happen (a sender knows what it asked its receiver to do,
//! so it knows whether a TIMEOUT was expected). Three are judged at the end of the round, when
//! every actor's facts are in:
//! - PEER_GONE: expected only if the receiver that held the request was killed (the request id
//!   is among those a killed receiver held), or — when the sender cannot know which receiver
//!   held it — a receiver of the same channel died abruptly while the request was outstanding.
//!   A graceful receiver departure drains first, so it never explains a PEER_GONE.
//! - BROADCAST_INCOMPLETE: every peer it lists must have left (any departure) while the
//!   broadcast was in flight.
//! - a complete broadcast's ACK count must equal the number of peers that say they acked it
//!   (fewer is tolerated only if a receiver process was killed meanwhile, between its ACK and
//!   its report).
//!
//! Violations are counted by kind (`violation.<kind>`) and the first few are kept verbatim.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Phases of a round, in order.
pub const RUNNING: u8 = 0;
/// No new operation starts; senders finish what is in flight and leave. No more kills.
pub const DRAINING: u8 = 1;
/// Every sender has left: receivers leave too.
pub const CLOSING: u8 = 2;

/// A receiver killed this long before a request was sent may still have been assigned it (the
/// broker had not yet seen the reset); a peer that left this long before a broadcast started
/// may still have been in its snapshot.
const SLOP: Duration = Duration::from_secs(2);

/// Violation messages kept verbatim.
const SAMPLES: usize = 25;

pub type Id = [u8; 16];

/// One client leaving its channel.
#[derive(Clone, Copy, Debug)]
pub struct Departure {
    pub channel: usize,
    pub client: Id,
    pub at: Instant,
    /// Killed or reset (not a drained, graceful leave).
    pub abrupt: bool,
    /// The client served requests.
    pub receiver: bool,
}

/// An outcome judged at the end of the round.
#[derive(Clone, Debug)]
enum Deferred {
    PeerGone {
        channel: usize,
        /// The wire request id, when the sender knows it (raw senders).
        wire: Option<Id>,
        sent: Instant,
        at: Instant,
    },
    Incomplete {
        missing: Vec<Id>,
        sent: Instant,
        at: Instant,
    },
    BroadcastOk {
        id: Id,
        count: u32,
        sent: Instant,
        at: Instant,
    },
}

#[derive(Default)]
struct Inner {
    counts: BTreeMap<String, u64>,
    samples: Vec<String>,
    departures: Vec<Departure>,
    /// Wire request id → the receiver it was assigned to (at-most-once).
    assigned: HashMap<Id, Id>,
    /// Wire request ids held by receivers at the moment they were killed.
    abandoned: HashSet<Id>,
    /// Broadcast id → peers that acked it.
    acks: HashMap<Id, u32>,
    deferred: Vec<Deferred>,
}

/// The round's shared record. See the module docs.
pub struct Ledger {
    inner: Mutex<Inner>,
    phase: AtomicU8,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            inner: Mutex::new(Inner::default()),
            phase: AtomicU8::new(RUNNING),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method leaves the record consistent; a panicking actor poisons nothing real.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    pub fn count(&self, key: &str, n: u64) {
        *self.lock().counts.entry(key.to_owned()).or_default() += n;
    }

    pub fn violation(&self, kind: &str, message: String) {
        let mut inner = self.lock();
        *inner.counts.entry(format!("violation.{kind}")).or_default() += 1;
        if inner.samples.len() < SAMPLES {
            inner.samples.push(format!("{kind}: {message}"));
        }
    }

    pub fn depart(&self, departure: Departure) {
        self.lock().departures.push(departure);
    }

    /// Records that `wire` was assigned to `receiver`; a second assignment is a violation.
    pub fn assign(&self, wire: Id, receiver: Id) {
        let previous = self.lock().assigned.insert(wire, receiver);
        if let Some(previous) = previous {
            self.violation(
                "assigned_twice",
                format!(
                    "request {} delivered to {} and again to {}",
                    hex(&wire),
                    hex(&previous),
                    hex(&receiver)
                ),
            );
        }
    }

    pub fn abandon(&self, held: impl IntoIterator<Item = Id>) {
        self.lock().abandoned.extend(held);
    }

    pub fn acked(&self, broadcast: Id) {
        *self.lock().acks.entry(broadcast).or_default() += 1;
    }

    pub fn peer_gone(&self, channel: usize, wire: Option<Id>, sent: Instant, at: Instant) {
        self.lock().deferred.push(Deferred::PeerGone {
            channel,
            wire,
            sent,
            at,
        });
    }

    pub fn incomplete(&self, missing: Vec<Id>, sent: Instant, at: Instant) {
        self.lock()
            .deferred
            .push(Deferred::Incomplete { missing, sent, at });
    }

    pub fn broadcast_ok(&self, id: Id, count: u32, sent: Instant, at: Instant) {
        self.lock().deferred.push(Deferred::BroadcastOk {
            id,
            count,
            sent,
            at,
        });
    }

    /// Judges the deferred outcomes (see the module docs). Call once, after every actor ended.
    pub fn judge(&self) {
        let (deferred, departures, abandoned, acks) = {
            let mut inner = self.lock();
            (
                std::mem::take(&mut inner.deferred),
                inner.departures.clone(),
                std::mem::take(&mut inner.abandoned),
                std::mem::take(&mut inner.acks),
            )
        };
        let killed_receiver_between = |channel: usize, from: Instant, to: Instant| {
            departures.iter().any(|d| {
                d.channel == channel && d.abrupt && d.receiver && d.at + SLOP >= from && d.at <= to
            })
        };
        let any_kill_between = |from: Instant, to: Instant| {
            departures
                .iter()
                .any(|d| d.abrupt && d.receiver && d.at >= from && d.at <= to)
        };
        for item in deferred {
            match item {
                Deferred::PeerGone {
                    channel,
                    wire,
                    sent,
                    at,
                } => {
                    if wire.is_some_and(|w| abandoned.contains(&w)) {
                        self.count("requests.peer_gone_attributed", 1);
                    } else if killed_receiver_between(channel, sent, at) {
                        self.count("requests.peer_gone_during_kill", 1);
                    } else {
                        self.violation(
                            "peer_gone_unexplained",
                            format!(
                                "PEER_GONE on channel {channel} for {} with no receiver killed \
                                 while it was outstanding",
                                wire.map_or_else(|| "a library request".into(), |w| hex(&w))
                            ),
                        );
                    }
                }
                Deferred::Incomplete { missing, sent, at } => {
                    let unexplained: Vec<&Id> = missing
                        .iter()
                        .filter(|peer| {
                            !departures
                                .iter()
                                .any(|d| d.client == **peer && d.at + SLOP >= sent && d.at <= at)
                        })
                        .collect();
                    if unexplained.is_empty() {
                        self.count("broadcasts.incomplete_peer_left", 1);
                    } else {
                        self.violation(
                            "broadcast_incomplete_unexplained",
                            format!(
                                "BROADCAST_INCOMPLETE names {} peer(s) that did not leave, e.g. {}",
                                unexplained.len(),
                                hex(unexplained[0])
                            ),
                        );
                    }
                }
                Deferred::BroadcastOk {
                    id,
                    count,
                    sent,
                    at,
                } => {
                    let reported = acks.get(&id).copied().unwrap_or(0);
                    if reported == count {
                        self.count("broadcasts.ack_count_exact", 1);
                    } else if reported < count && any_kill_between(sent, at + SLOP) {
                        // A killed receiver process acked but died before it could report it.
                        self.count("broadcasts.ack_count_short_after_kill", 1);
                    } else {
                        self.violation(
                            "broadcast_ack_count",
                            format!(
                                "broadcast {} acked by {count} per the broker, {reported} per \
                                 the peers",
                                hex(&id)
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Every counter.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.lock().counts.clone()
    }

    /// The violation messages kept.
    pub fn samples(&self) -> Vec<String> {
        self.lock().samples.clone()
    }
}

/// Lower-case hex of an id (for messages; the UUID text form without dashes).
pub fn hex(id: &Id) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`hex`] back.
pub fn unhex(text: &str) -> Option<Id> {
    let text = text.trim();
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}
