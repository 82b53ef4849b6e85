//! The driver task: one per client, spawned at connect, the only code that touches the socket.
//! It drives one connection at a time ([`drive`]): a reader future feeds every frame to the
//! session and a writer future writes what operations queued, polled together by the one task;
//! a silent broker is pinged. When the connection ends it reconnects with the blocking client's
//! rules (`reconnect.rs`: same policy, same client id, the receive window re-issued first,
//! in-flight operations fail with `ConnectionLost`, nothing after `REPLACED` or a protocol
//! error) or closes the client. It returns once the client is closed.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use log::{debug, info};
use switchyard_proto::{encode_u32, Flags, Frame, FrameType, RequestId};
use tokio::sync::{mpsc, watch, Semaphore};

use super::wire::{self, Joined, Read, WireRead, WireWrite};
use super::{Link, Outbound, Shared};
use crate::reconnect::{is_recoverable, Backoff};
use crate::Error;

/// Bound on writing, at the close, what was queued before it: a broker that takes nothing for
/// that long is stuck, and closing must not hang on it.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes gathered from the queue before one socket write: several small frames per system call
/// under load, without holding a large body in a second buffer.
const WRITE_BATCH: usize = 256 * 1024;

/// One connection as the driver runs it.
pub(crate) struct Connection {
    pub(crate) joined: Joined,
    pub(crate) link: Arc<Link>,
    pub(crate) outbound: mpsc::UnboundedReceiver<Outbound>,
    pub(crate) credits: Arc<Semaphore>,
}

/// The driver task's body: see the module docs.
pub(crate) async fn run(shared: Arc<Shared>, mut connection: Connection) {
    let mut closing = shared.closing.subscribe();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&RequestId::random().as_bytes()[..8]);
    let mut backoff = shared
        .options
        .reconnect
        .map(|policy| Backoff::new(policy, u64::from_le_bytes(seed)));
    loop {
        let reason = drive(&shared, &mut connection, &mut closing).await;
        // Wakes body senders waiting for a credit of the ended connection.
        connection.credits.close();
        drop(connection);
        if *closing.borrow() {
            return;
        }
        let backoff = match backoff.as_mut() {
            Some(backoff) if is_recoverable(&reason) => backoff,
            _ => return shared.close(reason),
        };
        match reconnect(&shared, backoff, reason, &mut closing).await {
            Some(next) => connection = next,
            None => return,
        }
    }
}

/// Runs one connection until it ends; returns why.
async fn drive(
    shared: &Shared,
    connection: &mut Connection,
    closing: &mut watch::Receiver<bool>,
) -> Error {
    let Connection {
        joined,
        link,
        outbound,
        credits,
    } = connection;
    let reader = read_loop(shared, link, &mut joined.read);
    // The writer watches `closing` itself: it ends only between two writes, after writing
    // what was queued before the close (a response sent just before the last handle dropped).
    let writer = write_loop(&mut joined.write, outbound, credits, closing);
    tokio::select! {
        reason = reader => reason,
        reason = writer => reason,
    }
}

/// Reads and routes frames until the connection ends. With heartbeats announced, every silent
/// interval is answered by a PING and `heartbeat_misses + 1` of them in a row end the link.
async fn read_loop(shared: &Shared, link: &Link, read: &mut WireRead) -> Error {
    let heartbeat = link.limits.heartbeat;
    let interval = (!heartbeat.is_zero()).then_some(heartbeat);
    let misses = shared.options.heartbeat_misses;
    let mut silent_intervals = 0u32;
    loop {
        loop {
            match read.decode() {
                Ok(Some(frame)) => {
                    if let Err(reason) = handle_frame(shared, link, frame) {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(reason) => return reason,
            }
        }
        let received = match interval {
            None => read.read_some().await,
            // `read_some` is cancel-safe: a read cut short by the interval loses nothing.
            Some(interval) => match tokio::time::timeout(interval, read.read_some()).await {
                Ok(received) => received,
                Err(_) => {
                    silent_intervals += 1;
                    if silent_intervals > misses {
                        return Error::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the broker stopped answering (heartbeat)",
                        ));
                    }
                    let ping = shared.ids.frame(
                        FrameType::Ping,
                        Flags::NONE,
                        RequestId::NIL,
                        silent_intervals,
                        false,
                        Bytes::new(),
                    );
                    link.queue(ping);
                    continue;
                }
            },
        };
        match received {
            Ok(Read::Data) => {
                silent_intervals = 0;
                #[cfg(feature = "tls")]
                if read.tls_wants_write() {
                    link.queue_tls_records();
                }
            }
            Ok(Read::Eof) => {
                return Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ))
            }
            #[cfg(feature = "tls")]
            Ok(Read::TlsFailed(e)) => {
                // The alert rustls queued goes out through the writer, best effort.
                link.queue_tls_records();
                return Error::Tls(e);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Error::Io(e),
        }
    }
}

/// Feeds one frame to the session and queues what it answers; `Err` ends the connection.
fn handle_frame(shared: &Shared, link: &Link, frame: Frame) -> Result<(), Error> {
    let (result, wakeups) = {
        let mut locked = shared.lock();
        let result = locked.session.handle_frame(frame);
        while let Some(answer) = locked.session.poll_output() {
            link.queue(answer);
        }
        (result, locked.session.take_wakeups())
    };
    shared.notify(wakeups);
    result
}

/// Writes what operations queued, batching what is already there into one write; gives body
/// credits back once their frames are written. Ends with a write error, or once the client
/// closes: then whatever was queued before the close is written first (within [`CLOSE_FLUSH`]).
async fn write_loop(
    write: &mut WireWrite,
    outbound: &mut mpsc::UnboundedReceiver<Outbound>,
    credits: &Semaphore,
    closing: &mut watch::Receiver<bool>,
) -> Error {
    loop {
        let first = tokio::select! {
            first = outbound.recv() => Some(first),
            _ = closing.wait_for(|closed| *closed) => None,
        };
        let Some(first) = first else {
            let last = async {
                while let Ok(item) = outbound.try_recv() {
                    push(write, item, &mut 0)?;
                }
                write.flush().await
            };
            if let Ok(Err(e)) = tokio::time::timeout(CLOSE_FLUSH, last).await {
                debug!("the frames queued before the close were not all written: {e}");
            }
            return Error::Closed;
        };
        let Some(first) = first else {
            // Unreachable while the driver holds the link; end quietly if it happens.
            return Error::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the link's queue closed",
            ));
        };
        let mut returned = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            if let Err(e) = push(write, item, &mut returned) {
                return Error::Io(e);
            }
            if write.pending() < WRITE_BATCH {
                next = outbound.try_recv().ok();
            }
        }
        if let Err(e) = write.flush().await {
            return Error::Io(e);
        }
        credits.add_permits(returned);
    }
}

/// Adds one queued item to the pending bytes, counting the body credits it returns.
fn push(write: &mut WireWrite, item: Outbound, returned: &mut usize) -> io::Result<()> {
    match item {
        Outbound::Frame { frame, credited } => {
            *returned += usize::from(credited);
            write.push(&frame)
        }
        Outbound::TlsRecords => write.push_tls_records(),
    }
}

/// `Connected => Reconnecting`, then backoff and attempts until one joins (returned) or the
/// client closes (`None`). Mirrors the blocking client's `Shared::reconnect`.
async fn reconnect(
    shared: &Arc<Shared>,
    backoff: &mut Backoff,
    cause: Error,
    closing: &mut watch::Receiver<bool>,
) -> Option<Connection> {
    let message = cause.to_string();
    let mut last = cause.duplicate();
    let wakeups = {
        let mut locked = shared.lock();
        if !locked.session.handle_disconnect(cause) {
            return None; // Closed meanwhile.
        }
        locked.link = None;
        locked.session.take_wakeups()
    };
    shared.notify(wakeups);
    info!(
        "async client {} on channel {} lost its connection ({message}); reconnecting",
        shared.ids.client, shared.ids.channel
    );
    let policy = backoff.policy();
    let mut attempt = 1u32;
    loop {
        if !policy.allows(attempt) {
            shared.close(last);
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
            _ = closing.wait_for(|closed| *closed) => return None,
        }
        let error = tokio::select! {
            joined = attempt_join(shared) => match joined {
                Ok(Some(connection)) => return Some(connection),
                Ok(None) => return None,
                Err(error) => error,
            },
            _ = closing.wait_for(|closed| *closed) => return None,
        };
        debug!("reconnect attempt {attempt} failed: {error}");
        if !is_recoverable(&error) {
            shared.close(error);
            return None;
        }
        attempt = attempt.saturating_add(1);
        if !policy.allows(attempt) {
            shared.close(error);
            return None;
        }
        last = error.duplicate();
        let wakeups = {
            let mut locked = shared.lock();
            if !locked.session.handle_attempt_failed(error) {
                return None;
            }
            locked.session.take_wakeups()
        };
        shared.notify(wakeups);
    }
}

/// One connection attempt with the client's id: handshake, receive window re-issued (queued
/// first on the new link, under the session lock, so it precedes anything an operation sends
/// and a concurrent `set_receive_window` lands either before it or after it), then
/// `Reconnecting => Connected`. `Ok(None)` when the client closed meanwhile.
async fn attempt_join(shared: &Shared) -> Result<Option<Connection>, Error> {
    let mut joined = wire::join(
        &shared.addrs,
        shared.ids.channel,
        shared.ids.client,
        shared.resume,
        &shared.options,
    )
    .await?;
    let (link, outbound, credits) = Link::new(joined.welcomed.limits);
    let link = Arc::new(link);
    let peers = std::mem::take(&mut joined.welcomed.peers);
    let (window, wakeups) = {
        let mut locked = shared.lock();
        let window = locked.session.window();
        if window > 0 {
            let receive = shared.ids.frame(
                FrameType::Receive,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
                encode_u32(window),
            );
            link.queue(receive);
        }
        let max_payload = joined.welcomed.limits.max_payload;
        if !locked.session.handle_reconnected(max_payload, peers) {
            return Ok(None); // Closed meanwhile: the new connection is dropped.
        }
        locked.link = Some(Arc::clone(&link));
        locked.limits = link.limits;
        (window, locked.session.take_wakeups())
    };
    shared.notify(wakeups);
    info!(
        "async client {} rejoined channel {} at {} (receive window {window})",
        shared.ids.client, shared.ids.channel, joined.peer_addr
    );
    Ok(Some(Connection {
        joined,
        link,
        outbound,
        credits,
    }))
}
