//! [`AsyncClient`]: connecting, the link's state, ping, peers and close. Requests are in
//! `request.rs`, broadcast and presence in `broadcast.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use log::info;
use switchyard_proto::{Flags, FrameType};
use tokio::net::ToSocketAddrs;
use tokio::sync::{watch, Notify};

use super::driver::{self, Connection};
use super::{wire, with_timeout, Link, Locked, Shared};
use crate::session::{Capacities, Ids, Session};
use crate::{
    chan, ChannelId, ClientId, ClientOptions, ConnectionState, Error, Limits, RequestId,
    StateChange,
};

/// Unread state changes kept for [`AsyncClient::next_state_change`] (as the blocking client).
const STATE_QUEUE: usize = 64;

/// An async connection to the broker, joined to one channel, on the tokio runtime.
///
/// The same operations as the blocking [`Client`](crate::Client), as futures; every
/// operation is multiplexed over the one connection by request id, so any number may run at
/// once. It is a cheap handle: clone it into every task that needs it (`Clone`, `Send + Sync`).
/// The connection closes when the last clone is dropped, or at [`AsyncClient::close`]; frames
/// already queued then (a response just sent, a CANCEL) are still written first.
///
/// ```no_run
/// use std::time::Duration;
/// use switchyard_client::{AsyncClient, ChannelId};
///
/// # async fn run() -> Result<(), switchyard_client::Error> {
/// let channel = ChannelId::from_name("orders").expect("a valid name");
/// let client = AsyncClient::connect("127.0.0.1:7878", channel).await?;
/// let reply = client.request("ping?", Duration::from_secs(1)).await?;
/// println!("{} bytes back", reply.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AsyncClient {
    pub(crate) handle: Arc<Handle>,
}

/// What the clones of one [`AsyncClient`] share; dropping the last closes the client.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(Error::Closed);
    }
}

impl AsyncClient {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Connects with default options: see [`AsyncClient::connect_with`].
    ///
    /// # Errors
    /// As [`AsyncClient::connect_with`].
    pub async fn connect(
        addr: impl ToSocketAddrs,
        channel: ChannelId,
    ) -> Result<AsyncClient, Error> {
        AsyncClient::connect_with(addr, channel, ClientOptions::default()).await
    }

    /// Connects, sends HELLO for `channel` and waits for the WELCOME, all within
    /// `options.connect_timeout`, then spawns the client's driver task on the current tokio
    /// runtime. This first connection is not retried; once connected, the client reconnects on
    /// its own per [`ClientOptions::reconnect`], to the addresses `addr` resolved to now.
    ///
    /// ```no_run
    /// use switchyard_client::{AsyncClient, ChannelId, ClientOptions};
    ///
    /// # async fn run() -> Result<(), switchyard_client::Error> {
    /// let options = ClientOptions {
    ///     token: Some(b"secret".to_vec()),
    ///     ..ClientOptions::default()
    /// };
    /// let channel = ChannelId::from_name("orders").expect("a valid name");
    /// let client = AsyncClient::connect_with("127.0.0.1:7878", channel, options).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::ConnectionRefused`]: no address accepted the TCP connection;
    /// - [`Error::ConnectTimeout`]: no WELCOME in time;
    /// - [`Error::NotABroker`]: the address answered, but not as a broker;
    /// - [`Error::Unauthorized`]: the broker refused the token;
    /// - [`Error::Broker`]: the broker refused the handshake otherwise (`GOING_AWAY`,
    ///   `LIMIT_EXCEEDED`, …);
    /// - [`Error::Protocol`]: the broker answered something else than a valid WELCOME;
    /// - `Error::Tls` (features `tokio` + `tls`): the TLS handshake failed;
    /// - [`Error::Io`]: the connection failed during the handshake, or there is no tokio
    ///   runtime to spawn the driver task on.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        channel: ChannelId,
        options: ClientOptions,
    ) -> Result<AsyncClient, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(Error::ConnectionRefused)?
            .collect();
        let requested = options.client_id.unwrap_or(ClientId::NIL);
        let resume = options
            .resume_secret
            .map_or(RequestId::NIL, RequestId::from_bytes);
        let mut joined = wire::join(&addrs, channel, requested, resume, &options).await?;
        let ids = Ids {
            client: joined.welcomed.client,
            channel,
        };
        let capacities = Capacities {
            broadcasts: options.broadcast_queue,
            presence: options.presence_queue,
            states: STATE_QUEUE,
        };
        let limits = joined.welcomed.limits;
        let peers = std::mem::take(&mut joined.welcomed.peers);
        let session = Session::new(ids, limits.max_payload, peers, capacities);
        let (link, outbound, credits) = Link::new(limits);
        let link = Arc::new(link);
        let peer_addr = joined.peer_addr;
        let shared = Arc::new(Shared {
            ids,
            resume: joined.welcomed.resume,
            options,
            addrs,
            locked: Mutex::new(Locked {
                session,
                link: Some(Arc::clone(&link)),
                limits,
            }),
            requests_ready: Notify::new(),
            broadcasts_ready: Notify::new(),
            presence_ready: Notify::new(),
            states_ready: Notify::new(),
            closing: watch::Sender::new(false),
        });
        let connection = Connection {
            joined,
            link,
            outbound,
            credits,
        };
        runtime.spawn(driver::run(Arc::clone(&shared), connection));
        info!(
            "async client {} joined channel {channel} at {peer_addr}",
            ids.client
        );
        Ok(AsyncClient {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// This client's id (assigned by the broker when none was asked for); the same across
    /// reconnects.
    pub fn client_id(&self) -> ClientId {
        self.shared().ids.client
    }

    /// The channel joined.
    pub fn channel_id(&self) -> ChannelId {
        self.shared().ids.channel
    }

    /// The broker's limits from the last WELCOME.
    pub fn limits(&self) -> Limits {
        self.shared().lock().limits
    }

    /// The other peers on the channel now: the WELCOME's list, kept current by PEER_JOINED /
    /// PEER_LEFT (and replaced by the WELCOME of each reconnect).
    pub fn peers(&self) -> Vec<ClientId> {
        self.shared().lock().session.peers()
    }

    /// True once the client is closed for good.
    pub fn is_closed(&self) -> bool {
        self.shared().lock().session.close_reason().is_some()
    }

    /// The state of the link to the broker now.
    pub fn state(&self) -> ConnectionState {
        self.shared().lock().session.connection_state()
    }

    /// Waits for the next change of [`AsyncClient::state`] (`None`: no bound), as
    /// [`Client::next_state_change`](crate::Client::next_state_change): every change once, in
    /// order, with its cause.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) {
    /// while let Ok(change) = client.next_state_change(None).await {
    ///     println!("link {:?} ({:?})", change.state, change.cause);
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when nothing changed in time; the close reason once the `Closed`
    /// change was taken.
    pub async fn next_state_change(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<StateChange, Error> {
        let shared = self.shared();
        let wait = async {
            loop {
                let notified = shared.states_ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut locked = shared.lock();
                    if let Some(change) = locked.session.pop_state_change() {
                        return Ok(change);
                    }
                    if let Some(reason) = locked.session.close_reason() {
                        return Err(reason);
                    }
                }
                notified.await;
            }
        };
        with_timeout(timeout.into(), Error::WaitElapsed, wait).await
    }

    /// Returns once the client is connected and the broker is not draining (at once if so),
    /// waiting for a (re)connection for at most `timeout` (`None`: no bound). After the broker's
    /// GOING_AWAY this waits for the *next* connection.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// use std::time::Duration;
    /// use switchyard_client::Error;
    ///
    /// match client.request("job", Duration::from_secs(5)).await {
    ///     Err(Error::ConnectionLost | Error::Reconnecting | Error::GoingAway) => {
    ///         client.wait_connected(Duration::from_secs(30)).await?;
    ///         // retry, if the request is idempotent
    ///     }
    ///     other => drop(other?),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when still not connected at the deadline; the close reason when
    /// the client is (or becomes) closed.
    pub async fn wait_connected(&self, timeout: impl Into<Option<Duration>>) -> Result<(), Error> {
        let shared = self.shared();
        let wait = async {
            loop {
                let notified = shared.states_ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let locked = shared.lock();
                    match locked.session.connection_state() {
                        ConnectionState::Connected => return Ok(()),
                        ConnectionState::Closed => {
                            return Err(locked.session.close_reason().unwrap_or(Error::Closed))
                        }
                        ConnectionState::Draining | ConnectionState::Reconnecting { .. } => {}
                    }
                }
                notified.await;
            }
        };
        with_timeout(timeout.into(), Error::WaitElapsed, wait).await
    }

    /// Sends a PING and returns the round-trip time to its PONG (`timeout` `None`: no bound but
    /// the connection's end). The client answers the broker's PINGs on its own.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// let rtt = client.ping(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] when no PONG came in time, [`Error::ConnectionLost`] /
    /// [`Error::Reconnecting`], or a connection-fatal error.
    pub async fn ping(&self, timeout: impl Into<Option<Duration>>) -> Result<Duration, Error> {
        let shared = self.shared();
        let (waiter, pong) = chan::channel();
        let (sequence, link) = shared.register(|session| session.register_ping(waiter))?;
        // Forgets the ping however this future ends (PONG, timeout, or dropped).
        let _forget = OnDrop(|| shared.lock().session.forget_ping(sequence));
        // Only for the round trip reported; the session never sees a clock.
        let started = tokio::time::Instant::now();
        let frame = shared.ids.frame(
            FrameType::Ping,
            Flags::NONE,
            RequestId::NIL,
            sequence,
            false,
            Bytes::new(),
        );
        shared.send(&link, frame)?;
        let answer = async {
            match pong.recv_async().await {
                Some(()) => Ok(started.elapsed()),
                None => Err(shared.lost_error()),
            }
        };
        with_timeout(timeout.into(), Error::Timeout, answer).await
    }

    /// Asks the broker for the channel's current peer list (the others, including peers inside
    /// their presence grace period); [`AsyncClient::peers`] is refreshed too.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// let peers = client.fetch_peers(std::time::Duration::from_secs(1)).await?;
    /// println!("{} other peers", peers.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] when no answer came in time, [`Error::ConnectionLost`] /
    /// [`Error::Reconnecting`], or a connection-fatal error.
    pub async fn fetch_peers(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Vec<ClientId>, Error> {
        let shared = self.shared();
        let (waiter, answer) = chan::channel();
        let ((), link) = shared.register(|session| session.register_peer_list(waiter))?;
        let frame = shared.ids.frame(
            FrameType::Peers,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, frame)?;
        let answer = async { answer.recv_async().await.ok_or_else(|| shared.lost_error()) };
        with_timeout(timeout.into(), Error::Timeout, answer).await
    }

    /// Closes the client for good, for every clone: fails every pending operation with
    /// [`Error::Closed`], wakes every waiter, and stops the driver task, which writes what was
    /// already queued (within a short bound) and drops the connection. Idempotent. Dropping
    /// the last clone does the same.
    pub fn close(&self) {
        self.shared().close(Error::Closed);
    }
}

/// Runs a closure when dropped: cleanup that must happen however a future ends.
pub(crate) struct OnDrop<F: FnMut()>(pub(crate) F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
