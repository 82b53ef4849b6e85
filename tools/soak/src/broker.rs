//! The broker under test, in its own process so that its RSS is its own: the soak re-executes
//! itself as `soak --role broker`, which runs the library's `Server` (bind + run, as the
//! `switchyard` binary does) on 127.0.0.1:0 with the metrics endpoint on 127.0.0.1:0 — and with
//! `--tls`, a TLS listener on 127.0.0.1:0 with the certificate and key the parent generated
//! (`tls.rs`) — and prints every address on stdout. The parent reads its state from
//! `GET /metrics` and its memory from `/proc/<pid>/status`, and stops it with SIGTERM (graceful
//! shutdown, exit status 0 expected). A guard kills it (SIGKILL, by its PID) on any failure path.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use switchyard::server::{Server, ServerConfig, TlsListenerConfig};
use switchyard_testkit::gauges;
pub use switchyard_testkit::gauges::Metrics;
use switchyard_testkit::tls::Certs;

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
    pub fn start(tls: Option<&Certs>) -> Result<BrokerProcess, String> {
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

/// One scrape of `GET /metrics` at `addr` (the test kit's scrape and parser).
pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    gauges::scrape(addr).map_err(|e| format!("metrics {addr}: {e}"))
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
