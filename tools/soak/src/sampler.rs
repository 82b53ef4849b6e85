//! The sampler of the broker's RSS and state gauges during the run, and the RSS bound the end
//! is checked against.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::{broker, tls};

/// Peaks seen by the sampler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peaks {
    pub rss_kib: u64,
    pub connections: u64,
    /// TLS connections open at once (counted in `connections` too).
    pub tls_connections: u64,
    pub streams: u64,
    pub buffered_bytes: u64,
    pub samples: u64,
    pub failed_samples: u64,
}

/// Samples the broker's RSS (`/proc`) and state gauges (`/metrics`) every period, keeping the
/// peaks. A fixed period is what a measurement needs; nothing waits on it.
pub struct Sampler {
    pub stop: mpsc::Sender<()>,
    pub peaks: Arc<Mutex<Peaks>>,
    pub handle: JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, metrics: SocketAddr, period: Duration) -> Sampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let shared = peaks.clone();
        let handle = thread::spawn(move || loop {
            match stopped.recv_timeout(period) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let memory = broker::memory(pid);
            let scraped = broker::scrape(metrics);
            let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
            p.samples += 1;
            match (memory, scraped) {
                (Ok(memory), Ok(m)) => {
                    p.rss_kib = p.rss_kib.max(memory.rss_kib);
                    p.connections = p
                        .connections
                        .max(m.value("switchyard_connections").unwrap_or(0));
                    p.tls_connections = p
                        .tls_connections
                        .max(m.value("switchyard_tls_connections").unwrap_or(0));
                    let streams = m.value("switchyard_requests_pending").unwrap_or(0)
                        + m.value("switchyard_requests_in_flight").unwrap_or(0)
                        + m.value("switchyard_broadcasts_in_flight").unwrap_or(0);
                    p.streams = p.streams.max(streams);
                    p.buffered_bytes = p
                        .buffered_bytes
                        .max(m.value("switchyard_buffered_bytes").unwrap_or(0));
                }
                _ => p.failed_samples += 1,
            }
        });
        Sampler {
            stop,
            peaks,
            handle,
        }
    }

    pub fn finish(self) -> Peaks {
        let _ = self.stop.send(());
        let _ = self.handle.join();
        *self.peaks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The RSS the broker may keep, on purpose, once every client has left — what its final RSS
/// may exceed its baseline (after start-up and a small warm-up) by:
///
/// - **buffer pools**: the server's read-buffer pool and the router's outbound pool
///   (`src/pool.rs`, created in `src/server/mod.rs` and `src/router/mod.rs`) keep up to 256
///   drained buffers of at most 64 KiB each. A connection takes at most one buffer from each at
///   a time and gives it back drained, so each pool holds at most min(256, peak connections)
///   buffers: `2 x min(256, peak connections) x 64 KiB`;
/// - **container capacity**: the connection table, the router's slab and maps, the timer wheel
///   keep the capacity their peak needed (they do not shrink): generously 4 KiB per peak
///   connection and 1 KiB per peak request or broadcast in flight;
/// - **TLS** (`--tls`): rustls' buffers of each TLS connection, freed at its close but, like
///   any heap memory, possibly still resident: [`tls::ALLOWANCE_PER_CONNECTION_KIB`] (64 KiB of
///   records plus per-record buffers and session state) per peak TLS connection open at once
///   (the broker's read buffer and outbound queue of a TLS connection are the pools' and
///   containers' above, like a plain connection's);
/// - **allocator slack** (`--rss-slack-mib`, 16 MiB by default): glibc's malloc does not hand
///   every freed page back to the kernel. Freed 1 MiB payloads raise its mmap threshold, after
///   which such payloads come from the heap, whose top is only trimmed beyond twice that
///   threshold, and whose holes stay resident until reused.
///
/// A leak of state per request or per connection shows up instead in the state counts (which
/// must all be zero) and in the drift of the idle RSS from round to round (`--drift-mib`).
#[derive(Clone, Copy, Debug)]
pub struct RssBound {
    pub pools_kib: u64,
    pub containers_kib: u64,
    pub tls_kib: u64,
    pub slack_kib: u64,
}

impl RssBound {
    pub fn new(peaks: &Peaks, slack_mib: u64) -> RssBound {
        RssBound {
            pools_kib: 2 * peaks.connections.min(256) * 64,
            containers_kib: 4 * peaks.connections + peaks.streams,
            tls_kib: peaks.tls_connections * tls::ALLOWANCE_PER_CONNECTION_KIB,
            slack_kib: slack_mib * 1024,
        }
    }

    pub fn total_kib(&self) -> u64 {
        self.pools_kib + self.containers_kib + self.tls_kib + self.slack_kib
    }
}
