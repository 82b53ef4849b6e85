//! [`Client`]: connecting, the link's state, ping and close. The operations live beside it:
//! requests (sender and receiver side) in `request.rs`, broadcast and presence in
//! `broadcast.rs`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use log::{debug, info};
use switchyard_proto::{Flags, FrameType};

use crate::handshake::handshake;
use crate::session::{Capacities, Ids, Session};
use crate::shared::{Locked, Shared};
use crate::transport;
use crate::{
    ChannelId, ClientId, ClientOptions, ConnectionState, Error, Limits, RequestId, StateChange,
};

mod broadcast;
mod request;

pub use broadcast::{Broadcast, PresenceEvent};

/// A connection to the broker, joined to one channel. See the module docs.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    link_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Client {
    /// Connects with default options: see [`Client::connect_with`].
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub fn connect(addr: impl ToSocketAddrs, channel: ChannelId) -> Result<Client, Error> {
        Client::connect_with(addr, channel, ClientOptions::default())
    }

    /// Connects, sends HELLO for `channel`, and waits for the WELCOME, all within
    /// `options.connect_timeout`. This first connection is not retried: a wrong address or a
    /// broker that is down fails here, at once. Once connected, the client reconnects on its
    /// own per [`ClientOptions::reconnect`], to the addresses `addr` resolved to now.
    ///
    /// # Errors
    /// - [`Error::ConnectionRefused`]: no address accepted the TCP connection;
    /// - [`Error::ConnectTimeout`]: no WELCOME in time;
    /// - [`Error::NotABroker`]: the address answered, but not as a broker (an HTTP server, the
    ///   metrics port);
    /// - [`Error::Unauthorized`]: the broker refused the token ([`ClientOptions::token`]);
    /// - [`Error::Broker`]: the broker refused the handshake otherwise (`CHANNEL_MISMATCH` for
    ///   a nil channel, `GOING_AWAY`, `LIMIT_EXCEEDED` when the broker is at a connection,
    ///   channel or peer limit, …);
    /// - [`Error::Protocol`]: the broker answered something else than a valid WELCOME;
    /// - `Error::Tls` (the `tls` feature): with `ClientOptions::tls`, the TLS handshake failed
    ///   (an untrusted certificate, a wrong server name, a port that does not speak TLS);
    /// - [`Error::Io`]: the connection failed during the handshake.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        channel: ChannelId,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(Error::ConnectionRefused)?
            .collect();
        let requested = options.client_id.unwrap_or(ClientId::NIL);
        let joined = handshake(
            &addrs,
            channel,
            requested,
            options
                .resume_secret
                .map_or(RequestId::NIL, RequestId::from_bytes),
            &options,
            &|_| Ok(()),
        )?;
        let link = Arc::new(joined.link()?);
        let ids = Ids {
            client: joined.client,
            channel,
        };
        let capacities = Capacities {
            broadcasts: options.broadcast_queue,
            presence: options.presence_queue,
            states: STATE_QUEUE,
        };
        let peer_addr = joined.peer_addr;
        let session = Session::new(ids, joined.max_payload, joined.peers.clone(), capacities);
        let shared = Arc::new(Shared {
            ids,
            resume: joined.resume,
            grace: options.deadline_grace,
            addrs,
            options,
            locked: Mutex::new(Locked {
                session,
                link: Some(Arc::clone(&link)),
                limits: link.limits,
                dialing: None,
            }),
            requests_ready: Condvar::new(),
            broadcasts_ready: Condvar::new(),
            presence_ready: Condvar::new(),
            states_ready: Condvar::new(),
            backoff: Condvar::new(),
            window_order: Mutex::new(()),
        });
        let running = Arc::clone(&shared);
        let link_thread = thread::Builder::new()
            .name("switchyard-client-link".into())
            .spawn(move || running.run_link(joined, link))
            .map_err(Error::Io)?;
        info!(
            "client {} joined channel {channel} at {peer_addr}",
            ids.client
        );
        Ok(Client {
            shared,
            link_thread: Mutex::new(Some(link_thread)),
        })
    }

    /// This client's id (assigned by the broker when none was asked for). It stays the same
    /// across reconnects.
    pub fn client_id(&self) -> ClientId {
        self.shared.ids.client
    }

    /// The channel joined.
    pub fn channel_id(&self) -> ChannelId {
        self.shared.ids.channel
    }

    /// The broker's limits from the last WELCOME.
    pub fn limits(&self) -> Limits {
        self.shared.lock().limits
    }

    /// The other peers on the channel now: the WELCOME's list, kept current by PEER_JOINED /
    /// PEER_LEFT (and replaced by the WELCOME of each reconnect).
    pub fn peers(&self) -> Vec<ClientId> {
        self.shared.lock().session.peers()
    }

    /// True once the client is closed for good (by [`Client::close`], a fatal broker error, or a
    /// lost connection that is not, or no longer, retried). False while reconnecting.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().session.close_reason().is_some()
    }

    /// The state of the link to the broker now.
    pub fn state(&self) -> ConnectionState {
        self.shared.lock().session.connection_state()
    }

    /// Waits for the next change of [`Client::state`] (`None`: wait forever) and returns it
    /// with its cause. Every change is reported once, in order (the oldest are dropped beyond
    /// 64 unread ones); the last is the `Closed` change, after which this returns the close
    /// reason. Several threads calling it share the changes (each gets different ones); to
    /// wait for a state, use [`Client::wait_connected`].
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when nothing changed in time; the close reason once the `Closed`
    /// change was taken.
    pub fn next_state_change(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<StateChange, Error> {
        let shared = &self.shared;
        let timeout = timeout.into();
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut locked = shared.lock();
        loop {
            if let Some(change) = locked.session.pop_state_change() {
                return Ok(change);
            }
            if let Some(reason) = locked.session.close_reason() {
                return Err(reason);
            }
            locked = shared.wait(&shared.states_ready, locked, deadline)?;
        }
    }

    /// Returns once the client is connected and the broker is not draining (at once if so),
    /// waiting for a reconnect for at most `timeout` (`None`: forever). After the broker's
    /// GOING_AWAY ([`ConnectionState::Draining`]) this waits for the *next* connection.
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when still not connected at the deadline; the close reason when the
    /// client is (or becomes) closed, for example the last attempt's error.
    pub fn wait_connected(&self, timeout: impl Into<Option<Duration>>) -> Result<(), Error> {
        let shared = &self.shared;
        let timeout = timeout.into();
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut locked = shared.lock();
        loop {
            match locked.session.connection_state() {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Closed => {
                    return Err(locked.session.close_reason().unwrap_or(Error::Closed))
                }
                ConnectionState::Draining | ConnectionState::Reconnecting { .. } => {}
            }
            locked = shared.wait(&shared.states_ready, locked, deadline)?;
        }
    }
    /// Sends a PING and returns the round-trip time to its PONG (`timeout` `None`: no bound but
    /// the connection's end). (The client answers the broker's PINGs on its own.)
    ///
    /// # Errors
    /// [`Error::Timeout`] when no PONG came within `timeout`, [`Error::ConnectionLost`] /
    /// [`Error::Reconnecting`], or a connection-fatal error.
    pub fn ping(&self, timeout: impl Into<Option<Duration>>) -> Result<Duration, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = crate::chan::channel();
        let (sequence, link) = shared.register(|session| session.register_ping(waiter))?;
        let started = transport::now();
        let frame = shared.ids.frame(
            FrameType::Ping,
            Flags::NONE,
            RequestId::NIL,
            sequence,
            false,
            Bytes::new(),
        );
        if let Err(e) = shared.send(&link, &frame) {
            shared.lock().session.forget_ping(sequence);
            return Err(e);
        }
        let answer = match timeout.into() {
            Some(timeout) => receiver.recv_timeout(timeout),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(()) => Ok(started.elapsed()),
            Err(RecvTimeoutError::Timeout) => {
                shared.lock().session.forget_ping(sequence);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }

    /// Closes the client for good: shuts the connection down both ways (or stops reconnecting,
    /// cutting a backoff short at once), fails every pending operation with [`Error::Closed`],
    /// wakes every blocked caller, and joins the link thread. (A TCP connect of a reconnect
    /// attempt cannot be interrupted: in that case this waits for it, at most
    /// [`ClientOptions::connect_timeout`].) Idempotent; every later call returns
    /// `Err(Error::Closed)` (or the earlier cause, when the client had already closed).
    pub fn close(&self) {
        self.shared.close(Error::Closed);
        let link_thread = self
            .link_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(link_thread) = link_thread {
            if link_thread.join().is_err() {
                debug!("the client link thread panicked");
            }
        }
    }
}

/// Unread state changes kept for [`Client::next_state_change`]: enough for every change of an
/// outage and its recovery to be seen by an application that reads them as they come; beyond
/// that only the latest matter (the current state is always [`Client::state`]).
const STATE_QUEUE: usize = 64;

impl Drop for Client {
    /// Closes the client (see [`Client::close`]).
    fn drop(&mut self) {
        self.close();
    }
}
