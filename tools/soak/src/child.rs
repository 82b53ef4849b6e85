//! Receivers in their own processes, killed with SIGKILL in the middle of their work.
//!
//! The child (`soak --role receiver`) is a library receiver (`library::serve_once`) that reports
//! on stdout, one line per fact: `welcome <client>`, `hold <wire id> <client>`, `released <wire
//! id>`, `ack <broadcast>`, `count <key>`, `violation <kind> <text>`, `bye`. It serves until its
//! stdin closes, then leaves gracefully and exits 0. With `--tls` it connects to the broker's
//! TLS listener (`--addr` is that listener, `--tls-ca` the certificate to trust), so a SIGKILL
//! ends a TLS connection without a `close_notify`, in the middle of whatever record was going.
//!
//! The parent keeps one child per slot (`child_receivers` per channel). While the round runs it
//! kills each at random intervals — preferably while it holds a request (it waits up to 2 s for
//! a `hold` line; then kills anyway) — reaps it, reads its stdout to the end (so every request
//! it said it held is known), records those requests as abandoned, and starts a new one. When
//! the round closes, it closes every child's stdin and expects exit status 0.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use switchyard::ids::{ChannelId, ClientId, RequestId};

use crate::ledger::{hex, unhex, Departure, Id, Ledger, CLOSING, RUNNING};
use crate::library::{serve_once, Report};
use crate::tls::Endpoint;
use crate::{now, Load};

/// How long the parent waits for a killed child's stdout to end, or a closing child to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);

// ----- the child ---------------------------------------------------------------------------------

struct StdoutReport;

impl Report for StdoutReport {
    fn count(&self, key: &str) {
        println!("count {key}");
    }
    fn violation(&self, kind: &str, message: String) {
        println!("violation {kind} {}", message.replace('\n', " "));
    }
    fn hold(&self, wire: RequestId, receiver: ClientId) {
        println!("hold {} {}", hex(wire.as_bytes()), hex(receiver.as_bytes()));
    }
    fn released(&self, wire: RequestId) {
        println!("released {}", hex(wire.as_bytes()));
    }
    fn acked(&self, broadcast: Id) {
        println!("ack {}", hex(&broadcast));
    }
    fn departing(&self, _client: ClientId) {
        // The parent dates the departure itself: when it closed our stdin.
    }
}

/// `soak --role receiver`: serve until stdin closes.
pub fn child_main(endpoint: Endpoint, channel: ChannelId, window: u32) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let report: Arc<dyn Report> = Arc::new(StdoutReport);
    let stopped = || stop.load(Ordering::SeqCst);
    let welcome = |client: ClientId| println!("welcome {}", hex(client.as_bytes()));
    match serve_once(&endpoint, channel, window, None, report, &stopped, &welcome) {
        Ok(()) => {
            println!("bye");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("violation child_connect {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the parent's side -------------------------------------------------------------------------

/// A line from a child, or the end of its stdout.
enum Event {
    Line(usize, u64, String),
    Eof(usize, u64),
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    generation: u64,
    client: Option<Id>,
    held: HashSet<Id>,
    /// When we started waiting for it to hold something before the kill.
    kill_wanted_since: Option<Instant>,
    eof: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failure path must not leave a child behind: kill (by its own handle) and reap.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Slot {
    channel: usize,
    running: Option<Running>,
    respawn_at: Option<Instant>,
    next_kill: Instant,
}

struct Manager {
    load: Arc<Load>,
    ledger: Arc<Ledger>,
    rng: StdRng,
    slots: Vec<Slot>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    next_generation: u64,
}

/// Runs the receiver children of one round (see the module docs) until it closes.
pub fn run(load: Arc<Load>, ledger: Arc<Ledger>, seed: u64) {
    let (events_tx, events) = mpsc::channel();
    let mut manager = Manager {
        rng: StdRng::seed_from_u64(seed),
        slots: Vec::new(),
        events_tx,
        events,
        next_generation: 0,
        load: load.clone(),
        ledger,
    };
    for channel in 0..load.channels.len() {
        for _ in 0..load.child_receivers {
            let next_kill = now() + manager.kill_interval();
            manager.slots.push(Slot {
                channel,
                running: None,
                respawn_at: Some(now()),
                next_kill,
            });
        }
    }
    manager.run();
}

impl Manager {
    fn kill_interval(&mut self) -> Duration {
        let mean = self.load.kill_every_ms.max(2);
        Duration::from_millis(self.rng.gen_range(mean / 2..=mean * 3 / 2))
    }

    fn run(&mut self) {
        loop {
            let phase = self.ledger.phase();
            if phase >= CLOSING {
                self.close_all();
                return;
            }
            let now = now();
            for slot in 0..self.slots.len() {
                self.step(slot, phase, now);
            }
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => self.on_event(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
            }
        }
    }

    fn step(&mut self, slot: usize, phase: u8, now: Instant) {
        let s = &mut self.slots[slot];
        if s.running.is_none() {
            if phase == RUNNING && s.respawn_at.is_some_and(|at| at <= now) {
                s.respawn_at = None;
                self.spawn(slot);
            }
            return;
        }
        if phase != RUNNING || now < s.next_kill {
            return;
        }
        let Some(running) = s.running.as_mut() else {
            return;
        };
        if running.client.is_none() {
            return; // Not joined yet: a kill now would not be a receiver's death mid-request.
        }
        if running.held.is_empty() {
            let since = *running.kill_wanted_since.get_or_insert(now);
            if now.saturating_duration_since(since) < Duration::from_secs(2) {
                return;
            }
        }
        self.kill(slot);
    }

    fn spawn(&mut self, slot: usize) {
        let channel = self.slots[slot].channel;
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                self.ledger
                    .violation("harness", format!("current_exe: {e}"));
                return;
            }
        };
        let mut command = Command::new(exe);
        command
            .args(["--role", "receiver"])
            .args(["--addr", &self.load.library.addr.to_string()])
            .args(["--channel", &self.load.channels[channel].to_string()])
            .args(["--window", &self.load.window.to_string()]);
        if let Some(trust) = &self.load.library.tls {
            command.arg("--tls-ca").arg(&trust.ca_path);
        }
        let spawned = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.ledger
                    .violation("harness", format!("spawn receiver: {e}"));
                self.slots[slot].respawn_at = Some(now() + Duration::from_secs(1));
                return;
            }
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let events = self.events_tx.clone();
        if let Some(stdout) = stdout {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if events.send(Event::Line(slot, generation, line)).is_err() {
                        return;
                    }
                }
                let _ = events.send(Event::Eof(slot, generation));
            });
        }
        self.ledger.count("children.spawned", 1);
        self.slots[slot].running = Some(Running {
            child,
            stdin,
            generation,
            client: None,
            held: HashSet::new(),
            kill_wanted_since: None,
            eof: false,
        });
    }

    fn on_event(&mut self, event: Event) {
        let (slot, generation) = match &event {
            Event::Line(slot, generation, _) | Event::Eof(slot, generation) => (*slot, *generation),
        };
        let channel = self.slots[slot].channel;
        let Some(running) = self.slots[slot]
            .running
            .as_mut()
            .filter(|r| r.generation == generation)
        else {
            return;
        };
        let line = match event {
            Event::Eof(..) => {
                running.eof = true;
                return;
            }
            Event::Line(_, _, line) => line,
        };
        let mut words = line.splitn(3, ' ');
        let (verb, first, rest) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
        );
        match verb {
            "welcome" => {
                running.client = unhex(first);
            }
            "hold" => {
                if let (Some(wire), Some(receiver)) = (unhex(first), unhex(rest)) {
                    running.held.insert(wire);
                    self.ledger.assign(wire, receiver);
                }
            }
            "released" => {
                if let Some(wire) = unhex(first) {
                    running.held.remove(&wire);
                }
            }
            "ack" => {
                if let Some(id) = unhex(first) {
                    self.ledger.acked(id);
                }
            }
            "count" => self.ledger.count(first, 1),
            "violation" => self
                .ledger
                .violation(first, format!("(receiver child) {rest}")),
            "bye" => {}
            _ => self.ledger.violation(
                "harness",
                format!("unexpected line from a receiver child on channel {channel}: {line}"),
            ),
        }
    }

    /// SIGKILL, reap, read its stdout to the end, record what it held, schedule the next one.
    fn kill(&mut self, slot: usize) {
        let Some(mut running) = self.slots[slot].running.take() else {
            return;
        };
        let channel = self.slots[slot].channel;
        let holding = !running.held.is_empty();
        let killed_at = now();
        // `Child::kill` is SIGKILL on Unix, sent to this child's own PID.
        if let Err(e) = running.child.kill() {
            self.ledger
                .violation("harness", format!("kill receiver child: {e}"));
        }
        if let Some(client) = running.client {
            self.ledger.depart(Departure {
                channel,
                client,
                at: killed_at,
                abrupt: true,
                receiver: true,
            });
        }
        self.ledger.count("faults.sigkill_receiver", 1);
        if holding {
            self.ledger.count("faults.sigkill_receiver_holding", 1);
        }
        match running.child.wait() {
            Ok(status) if status.success() => self
                .ledger
                .violation("harness", "a SIGKILLed receiver child exited 0".into()),
            Ok(_) => {}
            Err(e) => self.ledger.violation("harness", format!("wait: {e}")),
        }
        // Everything it wrote before it died is in the pipe: read it to the end.
        let generation = running.generation;
        self.slots[slot].running = Some(running);
        self.await_eof(slot, generation);
        if let Some(running) = self.slots[slot].running.take() {
            self.ledger.count("clients.disconnects", 1);
            self.ledger.abandon(running.held.iter().copied());
        }
        let respawn = now() + Duration::from_millis(self.rng.gen_range(100..=800));
        let next_kill = respawn + self.kill_interval();
        let s = &mut self.slots[slot];
        s.respawn_at = Some(respawn);
        s.next_kill = next_kill;
    }

    fn await_eof(&mut self, slot: usize, generation: u64) {
        let deadline = now() + EXIT_DEADLINE;
        while self.slots[slot]
            .running
            .as_ref()
            .is_some_and(|r| r.generation == generation && !r.eof)
        {
            let left = deadline.saturating_duration_since(now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.on_event(event),
                Err(_) => {
                    self.ledger.violation(
                        "harness",
                        "a receiver child's stdout did not end in time".into(),
                    );
                    return;
                }
            }
        }
    }

    /// The round closes: every child leaves gracefully and must exit 0.
    fn close_all(&mut self) {
        for slot in 0..self.slots.len() {
            let channel = self.slots[slot].channel;
            if let Some(running) = self.slots[slot].running.as_mut() {
                if let Some(client) = running.client {
                    self.ledger.depart(Departure {
                        channel,
                        client,
                        at: now(),
                        abrupt: false,
                        receiver: true,
                    });
                }
                // EOF on its stdin: the child leaves gracefully.
                running.stdin = None;
            }
        }
        for slot in 0..self.slots.len() {
            let Some(generation) = self.slots[slot].running.as_ref().map(|r| r.generation) else {
                continue;
            };
            self.await_eof(slot, generation);
            let Some(mut running) = self.slots[slot].running.take() else {
                continue;
            };
            match running.child.wait() {
                Ok(status) if status.success() => {
                    self.ledger.count("clients.graceful_leave_child", 1);
                }
                Ok(status) => self
                    .ledger
                    .violation("child_exit", format!("a receiver child left with {status}")),
                Err(e) => self.ledger.violation("harness", format!("wait: {e}")),
            }
            if !running.held.is_empty() {
                self.ledger.violation(
                    "child_exit",
                    format!(
                        "a receiver child left holding {} request(s)",
                        running.held.len()
                    ),
                );
            }
        }
    }
}
