//! Processes for the CLI tests: a broker on an ephemeral port (its address read from its log),
//! client commands run to completion with a watchdog, and long-running commands (`reply`,
//! `listen`) whose output lines are awaited with deadlines. Every process is stopped by its PID
//! when its handle drops, so a failing test leaves nothing behind.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// How long any one expected line or exit may take: generous for a loaded debug build, and
/// only ever reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A process whose stdout and stderr lines arrive on channels.
pub struct Proc {
    child: Option<Child>,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `BIN args` with `env` set and stdin closed.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("SWITCHYARD_URL")
            .env_remove("SWITCHYARD_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start switchyard");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Proc {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    #[track_caller]
    pub fn wait_stderr(&self, needle: &str) -> String {
        wait_line(&self.stderr, needle)
    }

    /// Waits for a stdout line containing `needle` and returns it.
    #[track_caller]
    pub fn wait_stdout(&self, needle: &str) -> String {
        wait_line(&self.stdout, needle)
    }

    /// The next `n` stdout lines, in order.
    #[track_caller]
    pub fn stdout_lines(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.stdout
                    .recv_timeout(PATIENCE)
                    .unwrap_or_else(|e| panic!("stdout line {i}: {e}"))
            })
            .collect()
    }

    /// Waits for the process to exit on its own.
    #[track_caller]
    pub fn wait_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(PATIENCE) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                kill(pid);
                panic!("process {pid} did not exit in time");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Stops it (if still running) by its PID.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody reads any more; keep draining so the process never blocks.
                continue;
            }
        }
    });
    rx
}

#[track_caller]
fn wait_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

/// A broker process on an ephemeral loopback port.
pub struct Broker {
    pub proc: Proc,
    pub addr: String,
}

impl Broker {
    /// `switchyard --listen 127.0.0.1:0 --metrics-listen off EXTRA...`.
    pub fn start(extra: &[&str]) -> Broker {
        let mut args = vec!["--listen", "127.0.0.1:0", "--metrics-listen", "off"];
        args.extend_from_slice(extra);
        Broker::start_with(&args)
    }

    /// The broker with exactly these arguments; its address from its log.
    pub fn start_with(args: &[&str]) -> Broker {
        let proc = Proc::start(args, &[]);
        let line = proc.wait_stderr("switchyard listening on ");
        let addr = line
            .split("switchyard listening on ")
            .nth(1)
            .expect("address")
            .trim()
            .to_owned();
        Broker { proc, addr }
    }

    /// A client command against this broker (`--url` from the environment).
    pub fn start_cli(&self, args: &[&str]) -> Proc {
        Proc::start(args, &[("SWITCHYARD_URL", &self.addr)])
    }

    /// Runs a client command to its end, with `stdin` as its input.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        run(args, &[("SWITCHYARD_URL", &self.addr)], stdin)
    }

    /// As [`Broker::run`], with more environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let mut all = vec![("SWITCHYARD_URL", self.addr.as_str())];
        all.extend_from_slice(env);
        run(args, &all, stdin)
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `BIN args` to its end with a watchdog (killed by PID past [`PATIENCE`]).
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchyard");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin); // dropping it closes stdin
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(PATIENCE) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            kill(pid);
            panic!("`switchyard {}` did not finish in time", args.join(" "));
        }
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
