//! The broker under test, in its own process so that its RSS is its own: the soak re-executes
//! itself as `soak --role broker`, which runs the library's `Server` (bind + run, as the
//! `switchyard` binary does) on 127.0.0.1:0 with the metrics endpoint on 127.0.0.1:0 — and with
//! `--tls`, a TLS listener on 127.0.0.1:0 with the certificate and key the parent generated
//! (`tls.rs`) — and prints every address on stdout. The parent reads its state from
//! `GET /metrics` and its memory from `/proc/<pid>/status`, and stops it with SIGTERM (graceful
//! shutdown, exit status 0 expected). A guard kills it (SIGKILL, by its PID) on any failure path.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use switchyard::server::{Server, ServerConfig, TlsListenerConfig};

use crate::tls::CertDir;

/// `soak --role broker`: the broker with the library's defaults, on ephemeral loopback ports;
/// `tls` is the certificate and key files of a TLS listener.
pub fn broker_main(tls: Option<(PathBuf, PathBuf)>) -> ExitCode {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_default_env()
        .init();
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tls: tls.map(|(cert_path, key_path)| TlsListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_path,
            key_path,
        }),
        ..ServerConfig::default()
    };
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("soak broker: bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listen {}", server.local_addr());
    if let Some(tls) = server.tls_addr() {
        println!("tls {tls}");
    }
    if let Some(metrics) = server.metrics_addr() {
        println!("metrics {metrics}");
    }
    let _ = std::io::stdout().flush();
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak broker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The broker process, stopped by PID on drop if it is still running.
pub struct BrokerProcess {
    pub pid: u32,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The TLS listener, when started with a certificate.
    pub tls_addr: Option<SocketAddr>,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl BrokerProcess {
    /// Starts the broker role; with `tls`, it also listens for TLS with that certificate.
    pub fn start(tls: Option<&CertDir>) -> Result<BrokerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut command = Command::new(exe);
        command.args(["--role", "broker"]);
        if let Some(certs) = tls {
            command
                .arg("--tls-cert")
                .arg(&certs.cert)
                .arg("--tls-key")
                .arg(&certs.key);
        }
        let mut child: Child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn the broker: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        // The waiter owns the child: it reaps it whenever it exits (no zombie), and reports.
        let (exit_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let mut broker = BrokerProcess {
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_addr: None,
            exited,
            status: None,
        };
        let (line_tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(line);
                }
            });
        }
        let mut got = (None, None);
        // The TLS line comes before the metrics line, so when the metrics line has come and no
        // TLS line, there is no TLS listener; the check below then fails the start.
        while got.0.is_none() || got.1.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "the broker did not print its addresses".to_string())?;
            let parse = |s: &str| s.trim().parse::<SocketAddr>().ok();
            if let Some(addr) = line.strip_prefix("listen ") {
                got.0 = parse(addr);
            } else if let Some(addr) = line.strip_prefix("tls ") {
                broker.tls_addr = parse(addr);
            } else if let Some(addr) = line.strip_prefix("metrics ") {
                got.1 = parse(addr);
            }
        }
        if tls.is_some() && broker.tls_addr.is_none() {
            return Err("the broker did not print its TLS listener's address".into());
        }
        broker.addr = got.0.unwrap_or(broker.addr);
        broker.metrics = got.1.unwrap_or(broker.metrics);
        Ok(broker)
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.try_recv().ok();
        }
        self.status
    }

    /// SIGTERM (graceful shutdown), then wait for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exited() {
            return Err(format!("the broker had already exited: {status}"));
        }
        signal(self.pid, libc::SIGTERM);
        let status = self
            .exited
            .recv_timeout(within)
            .map_err(|_| format!("the broker did not exit within {within:?} of SIGTERM"))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Current and peak resident set size, KiB.
    pub fn memory(&self) -> Result<Memory, String> {
        memory(self.pid)
    }

    /// One scrape of `GET /metrics`.
    pub fn scrape(&self) -> Result<Metrics, String> {
        scrape(self.metrics)
    }
}

/// Current and peak resident set size of process `pid`, KiB (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> Result<Memory, String> {
    {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .ok_or_else(|| format!("{path}: no {name}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

/// One scrape of `GET /metrics` at `addr`: every sample, by name with its labels.
pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("metrics connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("metrics write: {e}"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| format!("metrics read: {e}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or("metrics: no HTTP head")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("metrics: {}", head.lines().next().unwrap_or("")));
        }
        let mut samples = BTreeMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(value) = value.parse::<f64>() {
                    samples.insert(name.to_owned(), value);
                }
            }
        }
        Ok(Metrics { samples })
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // Still running (a failure path): kill it by its PID; the waiter thread reaps it.
            signal(self.pid, libc::SIGKILL);
            self.status = self.exited.recv_timeout(Duration::from_secs(10)).ok();
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with the PID of our own child, which the waiter thread has not reaped yet
    // (it reports the exit before we get here, and we checked), so the PID is not reused.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// One scrape.
pub struct Metrics {
    pub samples: BTreeMap<String, f64>,
}

/// The broker's state gauges that must all be zero when it is idle (see `ServerStats::is_idle`
/// and `src/server/metrics.rs`).
pub const STATE_GAUGES: [&str; 9] = [
    "switchyard_connections",
    "switchyard_channels",
    "switchyard_requests_pending",
    "switchyard_requests_in_flight",
    "switchyard_broadcasts_in_flight",
    "switchyard_timers_armed",
    "switchyard_buffered_bytes",
    "switchyard_paused_connections",
    "switchyard_presence_ghosts",
];

impl Metrics {
    pub fn get(&self, name: &str) -> u64 {
        self.samples.get(name).copied().unwrap_or(0.0) as u64
    }

    /// The state gauges.
    pub fn state(&self) -> Vec<(&'static str, u64)> {
        STATE_GAUGES.iter().map(|n| (*n, self.get(n))).collect()
    }

    pub fn is_idle(&self) -> bool {
        self.state().iter().all(|(_, v)| *v == 0)
    }

    /// `switchyard_errors_sent_total{code="…"}` samples, by code.
    pub fn errors_sent(&self) -> BTreeMap<String, u64> {
        self.samples
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
