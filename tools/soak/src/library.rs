//! Clients built on the crate's own client library (`switchyard::client::Client`): receivers
//! that churn gracefully (in this process) or get killed (as child processes, see `child.rs`),
//! and senders that reconnect every few dozen operations. They check bodies end to end like
//! the raw clients; what the library hides (duplicate frames) is the raw clients' job.
//!
//! Reconnection is off: a connection the broker drops is a failure here, not something to ride
//! out. With `--tls` they connect to the broker's TLS listener (`tls.rs`); every TLS connection
//! is counted as `clients.tls_connects` once its handshake is done, which the end of the run
//! compares with the broker's own count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use switchyard::client::{Client, Error, IncomingRequest, RequestOptions};
use switchyard::ids::{ChannelId, ClientId, RequestId};

use crate::body::{self, Behavior, Head, Kind};
use crate::ledger::{Departure, Id, Ledger, CLOSING, RUNNING};
use crate::raw::log_uniform;
use crate::tls::Endpoint;
use crate::{code_name, now, pause_until, Load};

/// How a library receiver reports what it sees: into the ledger in this process, as lines on
/// stdout in a receiver child process (the parent turns them into ledger entries).
pub trait Report: Send + Sync {
    fn count(&self, key: &str);
    fn violation(&self, kind: &str, message: String);
    /// A request was assigned to `receiver` (checked at-most-once by the ledger).
    fn hold(&self, wire: RequestId, receiver: ClientId);
    /// The request is no longer held (answered, cancelled, or given up).
    fn released(&self, wire: RequestId);
    /// A broadcast was received whole, checked and acknowledged.
    fn acked(&self, broadcast: Id);
    /// The receiver stops acknowledging broadcasts and leaves.
    fn departing(&self, client: ClientId);
}

/// [`Report`] into the round's ledger.
pub struct LedgerReport {
    pub ledger: Arc<Ledger>,
    pub channel: usize,
}

impl Report for LedgerReport {
    fn count(&self, key: &str) {
        self.ledger.count(key, 1);
    }
    fn violation(&self, kind: &str, message: String) {
        self.ledger.violation(kind, message);
    }
    fn hold(&self, wire: RequestId, receiver: ClientId) {
        self.ledger.assign(*wire.as_bytes(), *receiver.as_bytes());
    }
    fn released(&self, _wire: RequestId) {}
    fn acked(&self, broadcast: Id) {
        self.ledger.acked(broadcast);
    }
    fn departing(&self, client: ClientId) {
        self.ledger.depart(Departure {
            channel: self.channel,
            client: *client.as_bytes(),
            at: now(),
            abrupt: false,
            receiver: true,
        });
    }
}

/// Connects a library client to `endpoint` and counts the connection (and whether it is TLS).
fn connect(endpoint: &Endpoint, channel: ChannelId, report: &dyn Report) -> Result<Client, Error> {
    let client = Client::connect_with(endpoint.addr, channel, endpoint.options())?;
    report.count("clients.connects");
    if endpoint.is_tls() {
        report.count("clients.tls_connects");
    }
    Ok(client)
}

/// Takes broadcasts (the library acks each as it hands it out) and checks them, until `stop`.
fn drain_broadcasts(client: Arc<Client>, report: Arc<dyn Report>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match client.next_broadcast(Some(Duration::from_millis(100))) {
            Ok(broadcast) => match body::verify(&broadcast.body) {
                Ok((head, _))
                    if head.kind == Kind::Broadcast
                        && head.author == *broadcast.sender.as_bytes()
                        && (!head.wire_id_known || head.id == *broadcast.id.as_bytes()) =>
                {
                    report.count("broadcasts.delivered");
                    report.acked(head.id);
                }
                Ok((head, _)) => report.violation(
                    "foreign_broadcast",
                    format!(
                        "broadcast {} carried another body ({:?})",
                        broadcast.id, head.kind
                    ),
                ),
                Err(e) => report.violation("corrupt_broadcast", format!("{}: {e}", broadcast.id)),
            },
            Err(Error::WaitElapsed) => {}
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) => {
                report.violation("library_client", format!("next_broadcast: {e}"));
                return;
            }
        }
    }
}

/// One library receiver connection, from connect to a graceful leave: serves with `window`
/// until `lifetime` is over or `stop()` says so; then RECEIVE(0), a PING as a barrier (every
/// request assigned before the broker processed the window is queued by the time its PONG is
/// back), serves those too, waits for every handler, and closes.
///
/// # Errors
/// The connect or window error (the caller counts it).
pub fn serve_once(
    endpoint: &Endpoint,
    channel: ChannelId,
    window: u32,
    lifetime: Option<Duration>,
    report: Arc<dyn Report>,
    stop: &dyn Fn() -> bool,
    on_welcome: &dyn Fn(ClientId),
) -> Result<(), Error> {
    let client = Arc::new(connect(endpoint, channel, &*report)?);
    let me = client.client_id();
    on_welcome(me);
    client.set_receive_window(window)?;
    let draining = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (client, report, draining) = (client.clone(), report.clone(), draining.clone());
        thread::spawn(move || drain_broadcasts(client, report, draining))
    };
    let leave_at = lifetime.map(|l| now() + l);
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut failed = false;
    while !stop() && leave_at.is_none_or(|at| now() < at) {
        match client.next_request(Some(Duration::from_millis(100))) {
            Ok(request) => handlers.push(spawn_handler(request, me, report.clone())),
            Err(Error::WaitElapsed) => {}
            Err(e) => {
                report.violation("library_client", format!("next_request: {e}"));
                failed = true;
                break;
            }
        }
        handlers.retain(|h| !h.is_finished());
    }
    if !failed {
        let barrier = client
            .set_receive_window(0)
            .and_then(|()| client.ping(Duration::from_secs(10)));
        if let Err(e) = barrier {
            report.violation("library_client", format!("window 0 + ping: {e}"));
        }
        loop {
            match client.next_request(Some(Duration::ZERO)) {
                Ok(request) => handlers.push(spawn_handler(request, me, report.clone())),
                Err(Error::WaitElapsed) => break,
                Err(e) => {
                    report.violation("library_client", format!("next_request: {e}"));
                    break;
                }
            }
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
    report.departing(me);
    draining.store(true, Ordering::SeqCst);
    let _ = drainer.join();
    client.close();
    report.count("clients.disconnects");
    Ok(())
}

fn spawn_handler(
    request: IncomingRequest,
    me: ClientId,
    report: Arc<dyn Report>,
) -> JoinHandle<()> {
    thread::spawn(move || handle_request(request, me, &*report))
}

/// Serves one request as its body asks (see [`Behavior`]).
fn handle_request(mut request: IncomingRequest, me: ClientId, report: &dyn Report) {
    let wire = request.id();
    report.hold(wire, me);
    let sender = request.sender();
    let arrived = now();
    let remaining = request.timeout();
    let bytes = match request.read_body() {
        Ok(bytes) => bytes,
        Err(Error::Cancelled) => {
            // The sender left (or the request timed out) before the body was complete.
            report.count("receivers.cancel_received");
            report.released(wire);
            return;
        }
        Err(e) => {
            report.violation("library_client", format!("read_body: {e}"));
            report.released(wire);
            return;
        }
    };
    report.count("receivers.requests_read");
    let (head, hash) = match body::verify(&bytes) {
        Ok(ok) => ok,
        Err(e) => {
            report.violation("corrupt_request", format!("request {wire}: {e}"));
            report.released(wire);
            return;
        }
    };
    if head.kind != Kind::Request
        || (head.wire_id_known && head.id != *wire.as_bytes())
        || head.author != *sender.as_bytes()
    {
        report.violation(
            "foreign_request",
            format!(
                "request {wire} from {sender} carried a {:?} body",
                head.kind
            ),
        );
        report.released(wire);
        return;
    }
    let respond = |request: IncomingRequest, late: bool| {
        let response = Head::response_to(&head, *me.as_bytes(), hash).build();
        match request.respond(&response) {
            Ok(()) if late => report.count("receivers.late_responses_sent"),
            Ok(()) => report.count("receivers.responses_sent"),
            // The library saw the broker's CANCEL first: the request timed out (late ones) or
            // its sender vanished.
            Err(Error::Cancelled) => report.count("receivers.respond_found_cancelled"),
            Err(e) => report.violation("library_client", format!("respond: {e}")),
        }
    };
    match head.behavior {
        Some(Behavior::Answer { delay_ms }) => {
            pause_until(now() + Duration::from_millis(delay_ms.into()));
            respond(request, false);
        }
        Some(Behavior::Late { extra_ms }) => {
            pause_until(arrived + remaining + Duration::from_millis(extra_ms.into()));
            respond(request, true);
        }
        Some(Behavior::Never) | None => {
            // Hold it past its deadline, then let go (the broker has cancelled it by then).
            pause_until(arrived + remaining + Duration::from_secs(1));
            drop(request);
            report.count("receivers.never_answered");
        }
        Some(Behavior::Cancel) => {
            request.cancel();
            report.count("receivers.cancelled");
        }
    }
    report.released(wire);
}

/// The in-process library receiver of one channel: connects, serves a random lifetime, leaves
/// gracefully, again, until the round closes.
pub fn receiver_actor(load: Arc<Load>, ledger: Arc<Ledger>, channel: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let report: Arc<dyn Report> = Arc::new(LedgerReport {
        ledger: ledger.clone(),
        channel,
    });
    while ledger.phase() < CLOSING {
        let lifetime =
            Duration::from_millis(rng.gen_range(load.lifetime_ms / 4..=load.lifetime_ms));
        let stop = || ledger.phase() >= CLOSING;
        if let Err(e) = serve_once(
            &load.library,
            load.channels[channel],
            load.window,
            Some(lifetime),
            report.clone(),
            &stop,
            &|_| {},
        ) {
            ledger.violation("library_client", format!("receiver connect: {e}"));
            return;
        }
        ledger.count("clients.graceful_leave_library_receiver", 1);
    }
}

/// Picks what a request asks of its receiver, and its timeout: mostly a prompt answer within a
/// generous timeout (a timeout there is a failure), some answered late or never within a short
/// timeout (a timeout there is expected), some cancelled by the receiver.
pub fn pick_behavior(rng: &mut StdRng, load: &Load) -> (Behavior, u32) {
    let roll: f64 = rng.gen();
    if roll < load.p_late {
        let timeout = rng.gen_range(200..=1000);
        let extra_ms = rng.gen_range(300..=600);
        (Behavior::Late { extra_ms }, timeout)
    } else if roll < load.p_late + load.p_never {
        (Behavior::Never, rng.gen_range(200..=1000))
    } else if roll < load.p_late + load.p_never + load.p_cancel {
        (Behavior::Cancel, load.timeout_ms)
    } else {
        let delay_ms = rng.gen_range(0..=load.service_ms);
        (Behavior::Answer { delay_ms }, load.timeout_ms)
    }
}

/// The library sender of one channel: connects, runs a few dozen requests and broadcasts,
/// closes, reconnects, until the round drains. Reports on `done` when it has stopped.
pub fn sender_actor(
    load: Arc<Load>,
    ledger: Arc<Ledger>,
    channel: usize,
    seed: u64,
    done: mpsc::Sender<&'static str>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let report: Arc<dyn Report> = Arc::new(LedgerReport {
        ledger: ledger.clone(),
        channel,
    });
    while ledger.phase() == RUNNING {
        let client = match connect(&load.library, load.channels[channel], &*report) {
            Ok(client) => Arc::new(client),
            Err(e) => {
                ledger.violation("library_client", format!("sender connect: {e}"));
                break;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (client, report, stop) = (client.clone(), report.clone(), stop.clone());
            thread::spawn(move || drain_broadcasts(client, report, stop))
        };
        let ops = rng.gen_range(20..=80);
        for _ in 0..ops {
            if ledger.phase() != RUNNING {
                break;
            }
            pause_until(now() + Duration::from_millis(rng.gen_range(0..=load.think_ms)));
            // A broadcast needs a peer: at the very start of a round the channel may have none.
            if rng.gen_bool(load.p_broadcast) && !client.peers().is_empty() {
                broadcast(&client, &load, &ledger, &mut rng);
            } else {
                request(&client, &load, &ledger, channel, &mut rng);
            }
        }
        ledger.depart(Departure {
            channel,
            client: *client.client_id().as_bytes(),
            at: now(),
            abrupt: false,
            receiver: false,
        });
        stop.store(true, Ordering::SeqCst);
        let _ = drainer.join();
        client.close();
        ledger.count("clients.disconnects", 1);
        ledger.count("clients.graceful_leave_library_sender", 1);
    }
    let _ = done.send("library sender");
}

fn request(client: &Client, load: &Load, ledger: &Ledger, channel: usize, rng: &mut StdRng) {
    let (behavior, timeout_ms) = pick_behavior(rng, load);
    let len = log_uniform(rng, load.min_body, load.max_body) as u32;
    let response_len = log_uniform(rng, load.min_body, load.max_body) as u32;
    let chunk = log_uniform(rng, 1024, load.max_payload as usize) as u32;
    let id = *RequestId::random().as_bytes();
    // The library picks the wire id: the body's soak id is its own.
    let head = Head::request(id, *client.client_id().as_bytes(), len, behavior, false)
        .with_response(response_len, chunk);
    let body = head.build();
    let hash = body::hash(&body);
    ledger.count("requests.sent", 1);
    ledger.count(&format!("requests.behavior_{}", behavior.name()), 1);
    ledger.count("requests.library", 1);
    let sent = now();
    let options = RequestOptions {
        timeout: Some(Duration::from_millis(timeout_ms.into())),
        no_wait: false,
    };
    let outcome = client
        .request_with(&mut body.as_slice(), options)
        .and_then(|response| {
            let responder = response.responder();
            response.read_to_vec().map(|bytes| (responder, bytes))
        });
    let expects_timeout = matches!(behavior, Behavior::Late { .. } | Behavior::Never);
    match outcome {
        Ok((responder, bytes)) => {
            ledger.count("bytes.responses", bytes.len() as u64);
            let expected = Head::response_to(&head, *responder.as_bytes(), hash);
            match body::verify(&bytes) {
                Ok((got, _)) if got == expected => match behavior {
                    Behavior::Answer { .. } => ledger.count("requests.ok", 1),
                    Behavior::Late { .. } => ledger.count("requests.late_answer_ok", 1),
                    Behavior::Never | Behavior::Cancel => ledger.violation(
                        "impossible_answer",
                        format!("a {} request got an answer", behavior.name()),
                    ),
                },
                Ok((got, _)) if got.id != id => ledger.violation(
                    "foreign_answer",
                    "a library request answered with another request's response".into(),
                ),
                Ok((got, _)) => ledger.violation(
                    "corrupt_answer",
                    format!("response not derived from the request: {got:?} vs {expected:?}"),
                ),
                Err(e) => ledger.violation("corrupt_answer", format!("library response: {e}")),
            }
        }
        Err(Error::Timeout) if expects_timeout => ledger.count("requests.timeout_expected", 1),
        Err(Error::NoReceiver) if expects_timeout => {
            ledger.count("requests.no_receiver_expected", 1)
        }
        Err(Error::Cancelled) if behavior == Behavior::Cancel => {
            ledger.count("requests.cancelled_expected", 1)
        }
        Err(Error::PeerGone) => {
            ledger.count("requests.peer_gone", 1);
            ledger.peer_gone(channel, None, sent, now());
        }
        Err(Error::Timeout) => ledger.violation(
            "timeout_unexpected",
            format!(
                "library request ({len} bytes, {}) timed out after {:?}",
                behavior.name(),
                sent.elapsed()
            ),
        ),
        Err(e) => ledger.violation(
            "error_unexpected",
            format!(
                "library request ({}) failed: {e} ({})",
                behavior.name(),
                e.code().map_or("-", code_name)
            ),
        ),
    }
}

fn broadcast(client: &Client, load: &Load, ledger: &Ledger, rng: &mut StdRng) {
    let len = log_uniform(rng, load.min_body, load.max_broadcast) as u32;
    let id = *RequestId::random().as_bytes();
    // The library picks the wire id: peers key their acks by this soak id instead.
    let head = Head::broadcast(id, *client.client_id().as_bytes(), len, false);
    ledger.count("broadcasts.sent", 1);
    ledger.count("broadcasts.library", 1);
    let sent: Instant = now();
    match client.broadcast(&head.build(), Duration::from_millis(load.timeout_ms.into())) {
        Ok(count) => {
            ledger.count("broadcasts.ok", 1);
            ledger.broadcast_ok(id, count, sent, now());
        }
        Err(Error::BroadcastIncomplete { missing }) => {
            ledger.count("broadcasts.incomplete", 1);
            if sent.elapsed() >= Duration::from_millis(load.timeout_ms.into()) {
                ledger.violation("broadcast_timeout", "a library broadcast timed out".into());
            }
            let missing = missing.iter().map(|p| *p.as_bytes()).collect();
            ledger.incomplete(missing, sent, now());
        }
        Err(e) => ledger.violation("broadcast_error", format!("library broadcast: {e}")),
    }
}
