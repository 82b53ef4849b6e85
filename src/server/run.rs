//! Running the server: its own poll loop ([`Server::run`]), or a thread of its own
//! ([`Server::spawn`]) steered through a [`ServerHandle`].
//!
//! Both loops are built only on the embedding API (`register`, `owns`, `handle_event`,
//! `handle_timeout`, `poll_timeout`): one *turn* reads the clock once after `poll` returns,
//! hands every owned event to [`Server::handle_event`] and finishes with
//! [`Server::handle_timeout`]. The spawned loop then answers control messages (stats, watchers,
//! shutdown) between turns, so a watcher sees every state the loop passes through.

use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, ServerConfig, ServerStats};

impl Server {
    /// Runs the server's own poll loop. SIGINT or SIGTERM begins a graceful shutdown; a second
    /// one closes every connection at once. SIGHUP is logged and ignored (nothing to reload:
    /// see [`Server::run_with_reload`]). Returns when the shutdown is complete.
    ///
    /// # Errors
    /// Failure to create or wait on the poll, or to install the signal handlers.
    pub fn run(self) -> io::Result<()> {
        self.run_with_reload(|| Ok(None))
    }

    /// As [`Server::run`], and on SIGHUP calls `reload`: `Ok(Some(config))` applies what can
    /// change live ([`Server::reload`]: access tokens and admission limits), `Ok(None)` means
    /// there is nothing to reload, `Err(text)` keeps the configuration in force (a warning
    /// with the text). SIGHUP never stops the broker.
    ///
    /// # Errors
    /// As [`Server::run`].
    pub fn run_with_reload(
        mut self,
        mut reload: impl FnMut() -> Result<Option<ServerConfig>, String>,
    ) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut poll = Poll::new()?;
        self.register(poll.registry(), Token(0))?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        // From here on a signal is handled, never the default action (SIGHUP would kill).
        log::info!("signals: SIGINT/SIGTERM drain gracefully, SIGHUP reloads");
        let mut events = Events::with_capacity(1024);
        loop {
            let foreign = self.turn(&mut poll, &mut events)?;
            if foreign {
                for signal in signals.pending() {
                    #[allow(clippy::disallowed_methods)] // the server reads the clock
                    let now = Instant::now();
                    if signal == SIGHUP {
                        match reload() {
                            Ok(Some(config)) => {
                                self.reload(&config);
                                log::info!(
                                    "SIGHUP: reloaded access tokens and admission limits; \
                                     other settings need a restart"
                                );
                            }
                            Ok(None) => log::info!(
                                "SIGHUP: nothing to reload (no configuration file); ignored"
                            ),
                            Err(e) => log::warn!(
                                "SIGHUP: configuration not reloaded, the one in force stays: {e}"
                            ),
                        }
                    } else if self.shutting_down {
                        log::warn!("signal {signal} again: closing every connection now");
                        self.close_all();
                    } else {
                        log::info!("signal {signal}: graceful shutdown");
                        self.begin_shutdown(now);
                        self.handle_timeout(now);
                    }
                }
            }
            if self.is_finished() {
                log::info!("shutdown complete");
                return Ok(());
            }
        }
    }

    /// Applies the settings of `new` that are safe to change while running, and only those:
    /// the access tokens (checked at each new HELLO: connected clients stay), and the admission
    /// limits `max_connections`, `max_connections_per_ip`, `max_unauthenticated`,
    /// `max_channels`, `max_peers_per_channel`, `max_in_flight_per_connection`,
    /// `max_waiting_per_channel` and `handshake_timeout` (checked at each new connection,
    /// HELLO or START: nothing in place is undone). Everything else (addresses, TLS, frame and
    /// buffer sizes, timeouts announced in WELCOMEs, heartbeats, the grace period) needs a
    /// restart; the run loop reloads on SIGHUP ([`Server::run_with_reload`]).
    pub fn reload(&mut self, new: &ServerConfig) {
        self.config.max_connections = new.max_connections;
        self.config.max_connections_per_ip = new.max_connections_per_ip;
        self.router.reload(&new.router);
        let live = &mut self.config.router;
        let new = &new.router;
        live.tokens = new.tokens.clone();
        live.max_unauthenticated = new.max_unauthenticated;
        live.max_channels = new.max_channels;
        live.max_peers_per_channel = new.max_peers_per_channel;
        live.max_in_flight_per_connection = new.max_in_flight_per_connection;
        live.max_waiting_per_channel = new.max_waiting_per_channel;
        live.handshake_timeout = new.handshake_timeout;
    }

    /// Runs the server on its own thread; the handle reads its stats and stops it.
    ///
    /// # Errors
    /// Bind or poll creation failure.
    pub fn spawn(config: ServerConfig) -> io::Result<ServerHandle> {
        let mut server = Server::bind(config)?;
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let tls_addr = server.tls_addr();
        let poll = Poll::new()?;
        server.register(poll.registry(), Token(0))?;
        let waker = Waker::new(poll.registry(), CONTROL_TOKEN)?;
        let (control_tx, control_rx) = mpsc::channel::<Control>();
        let thread = thread::Builder::new()
            .name("switchyard".into())
            .spawn(move || serve_with_control(server, poll, control_rx))?;
        Ok(ServerHandle {
            addr,
            metrics_addr,
            tls_addr,
            waker,
            control: control_tx,
            thread: Some(thread),
        })
    }

    /// One loop turn: wait, dispatch events, finish the turn. Returns whether an event for a
    /// token outside the server's range arrived (the caller's own sources).
    pub(super) fn turn(&mut self, poll: &mut Poll, events: &mut Events) -> io::Result<bool> {
        #[allow(clippy::disallowed_methods)] // the server is where the clock is read
        let before = Instant::now();
        let mut timeout = self
            .poll_timeout()
            .map(|at| at.saturating_duration_since(before));
        if self.spin_until > before {
            // Busy-poll window after activity: look for more without sleeping, which saves the
            // wakeup (tens of µs on a VM) of a request that follows the last one closely.
            timeout = Some(Duration::ZERO);
        }
        match poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        #[allow(clippy::disallowed_methods)] // once per wakeup, passed down
        let now = Instant::now();
        let mut foreign = false;
        for event in events.iter() {
            if self.owns(event.token()) {
                self.handle_event(event, now);
            } else {
                foreign = true;
            }
        }
        if !events.is_empty() && !self.config.busy_poll.is_zero() {
            self.spin_until = now + self.config.busy_poll;
        }
        self.handle_timeout(now);
        Ok(foreign)
    }
}

/// The loop of [`Server::spawn`]: turns, then control messages, then watchers.
fn serve_with_control(mut server: Server, mut poll: Poll, control_rx: mpsc::Receiver<Control>) {
    let mut events = Events::with_capacity(1024);
    let mut watchers: Vec<Watcher> = Vec::new();
    loop {
        if let Err(e) = server.turn(&mut poll, &mut events) {
            log::error!("poll failed: {e}");
            return;
        }
        while let Ok(control) = control_rx.try_recv() {
            match control {
                Control::Stats(reply) => {
                    let _ = reply.send(server.stats());
                }
                Control::Watch(watcher) => watchers.push(watcher),
                Control::BeginShutdown => {
                    #[allow(clippy::disallowed_methods)] // the server reads the clock
                    let now = Instant::now();
                    server.begin_shutdown(now);
                    server.handle_timeout(now);
                }
                Control::Shutdown => {
                    server.close_all();
                    return;
                }
            }
        }
        if !watchers.is_empty() {
            // Checked after every turn, so a watcher sees every state the loop passes through.
            let stats = server.stats();
            watchers.retain(|w| {
                if (w.condition)(&stats) {
                    let _ = w.reply.try_send(stats);
                    false
                } else {
                    !w.abandoned()
                }
            });
        }
        if server.is_finished() {
            log::info!("shutdown complete");
            return;
        }
    }
}

/// Token of the control waker in [`Server::spawn`]'s loop: just past the server's range.
const CONTROL_TOKEN: Token = Token(Server::TOKEN_SPAN);

/// Token of the signal source in [`Server::run`]'s loop.
const SIGNAL_TOKEN: Token = Token(Server::TOKEN_SPAN + 1);

enum Control {
    Stats(mpsc::Sender<ServerStats>),
    Watch(Watcher),
    BeginShutdown,
    Shutdown,
}

/// A waiter of [`ServerHandle::wait_until`]: answered with the first stats that satisfy it.
struct Watcher {
    condition: Box<dyn Fn(&ServerStats) -> bool + Send>,
    reply: mpsc::SyncSender<ServerStats>,
    gave_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    fn abandoned(&self) -> bool {
        self.gave_up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Handle to a server running on its own thread ([`Server::spawn`]). Dropping it stops the
/// server.
pub struct ServerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    waker: Waker,
    control: mpsc::Sender<Control>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address of the TLS listener, when it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// A snapshot of the server's state counts, taken between two loop turns.
    ///
    /// # Errors
    /// `BrokenPipe` when the server thread has stopped.
    pub fn stats(&self) -> io::Result<ServerStats> {
        let (tx, rx) = mpsc::channel();
        self.control
            .send(Control::Stats(tx))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Waits until the server's stats satisfy `condition` (checked after every loop turn), for at
    /// most `timeout`. Returns the first satisfying stats, or the error `TimedOut` with no stats.
    /// Event-driven: no polling, no sleeping.
    ///
    /// # Errors
    /// `TimedOut`, or `BrokenPipe` when the server thread has stopped.
    pub fn wait_until(
        &self,
        condition: impl Fn(&ServerStats) -> bool + Send + 'static,
        timeout: Duration,
    ) -> io::Result<ServerStats> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = Watcher {
            condition: Box::new(condition),
            reply: tx,
            gave_up: gave_up.clone(),
        };
        self.control
            .send(Control::Watch(watcher))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()?;
        match rx.recv_timeout(timeout) {
            Ok(stats) => Ok(stats),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                gave_up.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "condition not reached in time",
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Waits until every connection, channel, request, broadcast, timer and buffered byte is
    /// gone ([`ServerStats::is_idle`]).
    ///
    /// # Errors
    /// As [`ServerHandle::wait_until`].
    pub fn wait_idle(&self, timeout: Duration) -> io::Result<ServerStats> {
        self.wait_until(ServerStats::is_idle, timeout)
    }

    /// Begins a graceful shutdown, as a signal does for [`Server::run`]: the server thread ends
    /// once the graceful shutdown is complete (see [`ServerHandle::join`]).
    ///
    /// # Errors
    /// `BrokenPipe` when the server thread has stopped.
    pub fn begin_shutdown(&self) -> io::Result<()> {
        self.control
            .send(Control::BeginShutdown)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()
    }

    /// Waits for the server thread to end (after a graceful shutdown completed).
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops the server: closes every connection and joins its thread. Idempotent.
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.control.send(Control::Shutdown);
            let _ = self.waker.wake();
            let _ = thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
