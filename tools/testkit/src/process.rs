//! The real broker binary in a child process, for tests of process-level faults and resource
//! limits: started on ephemeral ports (its addresses read from its log), optionally with a
//! lowered descriptor limit, its log lines kept for event-driven waits, its counts read through
//! the metrics endpoint, its CPU time read from `/proc`, and killed by PID (SIGKILL) and reaped
//! when dropped, also when a test fails.
// libc calls with no safe std equivalent: setrlimit in the child before exec, sysconf for the
// clock tick, kill by PID. Each block is a single FFI call on plain integers.
#![allow(unsafe_code)]

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::gauges::{self, Metrics};
use crate::DEADLINE;

/// The `switchyard` binary of this build: `$SWITCHYARD_BIN` when set, else the one cargo built
/// beside the running test (test binaries live in `target/<profile>/deps/`, the broker binary in
/// `target/<profile>/`; cargo builds it before the root package's integration tests).
///
/// # Panics
/// When neither exists: the message says how to build it.
pub fn broker_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the running test's path");
    let mut dir = exe.parent().expect("a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    let candidate = dir.join("switchyard");
    assert!(
        candidate.exists(),
        "no broker binary at {}: run `cargo build` first or set SWITCHYARD_BIN",
        candidate.display()
    );
    candidate
}

/// Every line the broker logged so far, and a signal for each new one.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// How long [`BrokerProcess::wait_all_closed`] waits for a log line before it scrapes again (a
/// close whose line the broker's rate limit suppressed writes none).
const RESCRAPE: Duration = Duration::from_millis(100);

/// A broker process. Dropping it kills (SIGKILL) and reaps it.
pub struct BrokerProcess {
    child: Option<Child>,
    pid: i32,
    /// The broker's listening address.
    pub addr: SocketAddr,
    /// The metrics endpoint's address (`None` when started with `--metrics-listen off`).
    pub metrics: Option<SocketAddr>,
    log: Arc<Log>,
}

impl BrokerProcess {
    /// Starts the broker with `args` after `--listen 127.0.0.1:0 --log-level info`, and
    /// `--metrics-listen 127.0.0.1:0` unless `args` sets it. With `nofile`, the child's
    /// RLIMIT_NOFILE (soft and hard) is lowered to it before `exec`.
    #[track_caller]
    pub fn start(args: &[&str], nofile: Option<u64>) -> BrokerProcess {
        Self::start_on("127.0.0.1:0".parse().unwrap(), args, nofile)
    }

    /// As [`BrokerProcess::start`], listening on `listen`.
    #[track_caller]
    pub fn start_on(listen: SocketAddr, args: &[&str], nofile: Option<u64>) -> BrokerProcess {
        Self::start_logging(listen, args, nofile, None)
    }

    /// As [`BrokerProcess::start_on`], with `RUST_LOG` set to `rust_log` (which wins over
    /// `--log-level`), for a test that waits on finer log lines.
    #[track_caller]
    pub fn start_logging(
        listen: SocketAddr,
        args: &[&str],
        nofile: Option<u64>,
        rust_log: Option<&str>,
    ) -> BrokerProcess {
        let mut command = Command::new(broker_binary());
        command
            .args(["--listen", &listen.to_string(), "--log-level", "info"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        if !args.contains(&"--metrics-listen") {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if let Some(limit) = nofile {
            // SAFETY: between fork and exec only async-signal-safe calls are allowed; setrlimit
            // is a plain system call, and the closure touches no lock or allocation.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("starting the broker");
        let pid = i32::try_from(child.id()).expect("a pid");
        let stderr = child.stderr.take().expect("the broker's stderr");
        let log = Arc::new(Log::default());
        {
            let log = Arc::clone(&log);
            // Reads the log to its end, so the broker never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lines.lock().unwrap().push(line);
                    log.grew.notify_all();
                }
            });
        }
        let mut broker = BrokerProcess {
            child: Some(child),
            pid,
            addr: listen,
            metrics: None,
            log,
        };
        let listening = broker.wait_line("listening on ", DEADLINE);
        broker.addr = after(&listening, "listening on ")
            .parse()
            .unwrap_or_else(|e| panic!("the broker's address in {listening:?}: {e}"));
        let metrics = broker.wait_line("metrics ", DEADLINE);
        broker.metrics = metrics.split("http://").nth(1).map(|rest| {
            rest.trim_end_matches("/metrics")
                .parse()
                .expect("metrics address")
        });
        broker
    }

    /// The broker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the broker has logged a line containing `needle`; returns the first one.
    #[track_caller]
    pub fn wait_line(&self, needle: &str, within: Duration) -> String {
        self.wait_lines(needle, 1, within).remove(0)
    }

    /// Waits until the broker has logged at least `count` lines containing `needle`; returns
    /// them all.
    #[track_caller]
    pub fn wait_lines(&self, needle: &str, count: usize, within: Duration) -> Vec<String> {
        let lines = self.log.lines.lock().unwrap();
        let (lines, timeout) = self
            .log
            .grew
            .wait_timeout_while(lines, within, |lines| {
                lines.iter().filter(|l| l.contains(needle)).count() < count
            })
            .unwrap();
        let found: Vec<String> = lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect();
        if timeout.timed_out() {
            panic!(
                "the broker logged {} of {count} lines with {needle:?} within {within:?}; its \
                 log:\n{}",
                found.len(),
                lines.join("\n")
            );
        }
        found
    }

    /// The lines logged so far that contain `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until every connection the broker accepted has been closed again: its metrics say
    /// `switchyard_connections 0`. Event-driven through the log: a connection's one info line
    /// is written at its close, so the endpoint is scraped again each time the log grows. Close
    /// lines beyond the log's rate limit are not written; for those the wait re-scrapes every
    /// 100 ms without a new line.
    #[track_caller]
    pub fn wait_all_closed(&self, within: Duration) {
        let deadline = crate::now() + within;
        loop {
            let seen = self.log.lines.lock().unwrap().len();
            if self.scrape().get("switchyard_connections") == 0 {
                return;
            }
            let now = crate::now();
            assert!(
                now < deadline,
                "the broker still has connections after {within:?}; its log:\n{}",
                self.log.lines.lock().unwrap().join("\n")
            );
            let lines = self.log.lines.lock().unwrap();
            let wait = (deadline - now).min(RESCRAPE);
            drop(
                self.log
                    .grew
                    .wait_timeout_while(lines, wait, |lines| lines.len() == seen)
                    .unwrap(),
            );
        }
    }

    /// CPU time (user + system) the broker has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .expect("the broker's /proc/<pid>/stat");
        // Fields after the command name (which is in parentheses and may contain spaces): the
        // first is field 3 (state); utime and stime are fields 14 and 15, in clock ticks.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Descriptor numbers below `limit` the broker does not use now: how many more it can
    /// open under an RLIMIT_NOFILE of `limit`. (Counted by number: a descriptor inherited
    /// above the limit takes no slot below it.)
    pub fn free_fds(&self, limit: u64) -> u64 {
        let used = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("the broker's /proc/<pid>/fd")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|fd| *fd < limit)
            .count() as u64;
        limit.saturating_sub(used)
    }

    /// One scrape of the metrics endpoint.
    ///
    /// # Panics
    /// When the endpoint is off or the scrape fails.
    #[track_caller]
    pub fn scrape(&self) -> Metrics {
        let addr = self.metrics.expect("the metrics endpoint is on");
        gauges::scrape(addr).unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
    }

    /// Sends `signal` (a `libc::SIG*` number) to the broker.
    pub fn signal(&self, signal: i32) {
        if self.child.is_some() {
            // SAFETY: kill has no memory preconditions; the pid is our own, unreaped child.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// True while the broker process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Waits for the broker to exit by itself (after a signal) and returns its exit status;
    /// panics (with its log) after `within`.
    #[track_caller]
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the broker was not reaped yet");
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = self.pid;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the broker: {e}"),
            Err(_) => {
                // SAFETY: as in `kill`; the waiting thread reaps it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let lines = self.log.lines.lock().unwrap();
                panic!(
                    "the broker did not exit within {within:?}; its log:\n{}",
                    lines.join("\n")
                )
            }
        }
    }

    /// SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory preconditions; the pid is our own, unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker).nth(1).unwrap_or("").trim()
}
