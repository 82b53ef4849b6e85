//! The broker's state counts (connections, channels, requests, assignments, broadcasts, armed
//! timers, buffered bytes, paused connections, presence ghosts): event-driven waits on them, the
//! end-of-test idle (leak) check, the peak of buffered bytes over a piece of a test, and the same
//! counts read from the metrics endpoint's exposition (for a broker in another process).
//!
//! In-process waits use `ServerHandle::wait_until`, whose watcher is checked after every loop
//! turn of the broker: no polling, and a failure panics with the broker's current stats.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use switchyard::protocol::HEADER_LEN;
use switchyard::server::{ServerConfig, ServerHandle, ServerStats};

use crate::DEADLINE;

/// Waits until every count of the broker is back to zero ([`ServerStats::is_idle`]); panics with
/// the broker's current stats otherwise.
#[track_caller]
pub fn wait_idle(handle: &ServerHandle) -> ServerStats {
    match handle.wait_idle(DEADLINE) {
        Ok(stats) => stats,
        Err(err) => panic!(
            "the broker did not return to idle within {DEADLINE:?} ({err}); now: {:#?}",
            handle.stats()
        ),
    }
}

/// Waits until the broker's stats satisfy `condition`; panics naming `what` otherwise.
#[track_caller]
pub fn wait_for(
    handle: &ServerHandle,
    what: &str,
    condition: impl Fn(&ServerStats) -> bool + Send + 'static,
) -> ServerStats {
    match handle.wait_until(condition, DEADLINE) {
        Ok(stats) => stats,
        Err(err) => panic!(
            "broker state never reached: {what} (within {DEADLINE:?}: {err}); now: {:#?}",
            handle.stats()
        ),
    }
}

/// Runs `body` while a watcher records the largest buffered-bytes figure the broker reports
/// after any loop turn (a watcher is checked after every turn, so it sees every state the loop
/// passes through). Returns the body's result and that peak.
pub fn with_peak_buffered<T>(handle: &ServerHandle, body: impl FnOnce() -> T) -> (T, usize) {
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    thread::scope(|s| {
        let monitor = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            s.spawn(move || {
                handle.wait_until(
                    move |stats: &ServerStats| {
                        peak.fetch_max(stats.buffered_bytes(), Ordering::Relaxed);
                        stop.load(Ordering::Relaxed)
                    },
                    // Outlives the body, whose many waits are each bounded by DEADLINE.
                    DEADLINE * 6,
                )
            })
        };
        let stopping = StopMonitor { stop, handle };
        let result = body();
        drop(stopping);
        monitor.join().unwrap().expect("the monitor saw every turn");
        (result, peak.load(Ordering::Relaxed))
    })
}

/// Ends the monitor's watch, passing or failing: sets its flag and makes the broker turn once
/// more (a stats request) so that the watcher sees it.
struct StopMonitor<'a> {
    stop: Arc<AtomicBool>,
    handle: &'a ServerHandle,
}

impl Drop for StopMonitor<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.stats();
    }
}

/// The most bytes a broker with `config` may hold for `connections` connections when one
/// receiver's queue is full (what [`with_peak_buffered`] may see), from its configuration:
/// - a receiver's outbound queue: the high watermark, plus the one frame that crossed it (the
///   producer is paused after that frame is queued);
/// - frames held for requests waiting for a receiver: the allowance, plus the frame that crossed
///   it;
/// - each connection's read buffer: a partial frame plus at most one read budget of bytes read
///   past it before the pause took effect (over TLS the budget counts ciphertext, so the
///   plaintext it yields is within it; rustls' own buffer is not part of these counts);
/// - a few KiB of control frames (welcome, presence, pongs).
pub fn buffered_bound(config: &ServerConfig, connections: usize) -> usize {
    let router = &config.router;
    let frame = HEADER_LEN + router.max_payload as usize;
    (router.high_watermark + frame)
        + (router.max_held_bytes + frame)
        + connections * (frame + config.read_budget)
        + 4096
}

/// The metrics endpoint's gauges of the broker's live state: every one is zero when the broker
/// is idle (the binary's `ServerStats::is_idle`; `src/server/metrics.rs`).
pub const STATE_GAUGES: [&str; 10] = [
    "switchyard_connections",
    "switchyard_channels",
    "switchyard_requests_pending",
    "switchyard_requests_in_flight",
    "switchyard_broadcasts_in_flight",
    "switchyard_timers_armed",
    "switchyard_buffered_bytes",
    "switchyard_paused_connections",
    "switchyard_presence_ghosts",
    "switchyard_accept_starved",
];

/// The samples of one scrape of the metrics endpoint, by series name with its labels
/// (`switchyard_x` or `switchyard_x{label="v"}`).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses a Prometheus text exposition: every line that is not a comment is one
    /// `series value` sample; lines whose value is not a number are skipped.
    pub fn parse(exposition: &str) -> Metrics {
        let series = exposition
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse::<f64>().ok()?)))
            .collect();
        Metrics { series }
    }

    /// The value of `series`, if the scrape has it.
    pub fn value(&self, series: &str) -> Option<u64> {
        self.series.get(series).map(|v| *v as u64)
    }

    /// The value of `series`.
    ///
    /// # Panics
    /// When the scrape does not have it (the message lists what it has).
    #[track_caller]
    pub fn get(&self, series: &str) -> u64 {
        match self.value(series) {
            Some(v) => v,
            None => panic!("no series {series} in the scrape: {:?}", self.series),
        }
    }

    /// The [`STATE_GAUGES`] and their values (0 for one the scrape lacks).
    pub fn state(&self) -> Vec<(&'static str, u64)> {
        STATE_GAUGES
            .iter()
            .map(|name| (*name, self.value(name).unwrap_or(0)))
            .collect()
    }

    /// Whether every state gauge is zero.
    pub fn is_idle(&self) -> bool {
        self.state().iter().all(|(_, v)| *v == 0)
    }

    /// Asserts that every state gauge is present and zero.
    #[track_caller]
    pub fn assert_idle(&self) {
        for gauge in STATE_GAUGES {
            assert_eq!(self.get(gauge), 0, "{gauge}: {:?}", self.series);
        }
    }

    /// The `switchyard_errors_sent_total{code="…"}` samples, by code.
    pub fn errors_sent(&self) -> BTreeMap<String, u64> {
        self.series
            .iter()
            .filter_map(|(name, value)| {
                let code = name
                    .strip_prefix("switchyard_errors_sent_total{code=\"")?
                    .strip_suffix("\"}")?;
                Some((code.to_owned(), *value as u64))
            })
            .collect()
    }
}

/// One scrape (`GET /metrics`) of the endpoint at `addr`; connecting and every read are bounded
/// by [`DEADLINE`].
///
/// # Errors
/// Connecting, writing or reading failed, or the answer is not `HTTP/1.1 200` with a body.
pub fn scrape(addr: SocketAddr) -> io::Result<Metrics> {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("").to_owned();
        return Err(io::Error::new(io::ErrorKind::InvalidData, status));
    }
    Ok(Metrics::parse(body))
}
