//! Broadcast and presence: [`Client::broadcast`] to every other peer, [`Client::next_broadcast`]
//! and [`Client::next_presence`] from them, [`Client::fetch_peers`] for the current list.

use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::{Flags, FrameType};

use super::Client;
use crate::body::{send_body, SendFailure};
use crate::{chan, timeout_ms, transport, ClientId, Error, RequestId};

/// A change of the channel's peers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// A peer joined the channel.
    Joined(ClientId),
    /// A peer left the channel.
    Left(ClientId),
    /// The broker dropped presence events while this client was behind (PRESENCE_OVERFLOW):
    /// the events so far may miss some. The client has asked for the peer list again; when it
    /// arrives, `Joined`/`Left` events follow for the difference, so the events still add up
    /// to [`Client::peers`].
    Resync,
}

/// A broadcast received in full and acknowledged.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Broadcast {
    /// The broadcast's stream id.
    pub id: RequestId,
    /// The peer that sent it.
    pub sender: ClientId,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Client {
    /// Sends `body` to every other peer of the channel and waits until all acknowledged
    /// (`timeout` `None`: the broker's default). Returns the number of peers that acknowledged.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let client = Client::connect("127.0.0.1:7878", ChannelId::from_name("config")?)?;
    /// let acked = client.broadcast(b"reload", Duration::from_secs(2))?;
    /// println!("{acked} peers reloaded");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NoPeers`], [`Error::BroadcastIncomplete`] with the peers that did not ack,
    /// [`Error::Timeout`] when the broker did not answer within the local deadline,
    /// [`Error::ConnectionLost`] / [`Error::Reconnecting`], or a connection-fatal error.
    pub fn broadcast(
        &self,
        body: &[u8],
        timeout: impl Into<Option<Duration>>,
    ) -> Result<u32, Error> {
        let shared = &self.shared;
        let timeout = timeout.into();
        shared.check_open()?;
        let (outcome, receiver) = chan::channel();
        let (id, link) = shared.register(|session| session.register_broadcast(outcome))?;
        let deadline = link.deadline(timeout, shared.grace);
        let mut early = None;
        let flags = Flags::REQUEST | Flags::BROADCAST;
        let mut body = body;
        let sent = send_body(
            shared,
            &link,
            id,
            flags,
            Flags::NONE,
            timeout_ms(timeout),
            &mut body,
            || match receiver.try_recv() {
                Ok(outcome) => {
                    early = Some(outcome);
                    Ok(true)
                }
                Err(TryRecvError::Empty) => Ok(false),
                Err(TryRecvError::Disconnected) => Err(shared.lost_error()),
            },
        );
        let cancel = || {
            if shared.lock().session.forget_outgoing(id) {
                shared.send_quietly(&link, &shared.ids.cancel(id, flags));
            }
        };
        match sent {
            Ok(()) => {}
            Err(SendFailure::Read { error, .. }) => {
                cancel();
                return Err(Error::Io(error));
            }
            Err(SendFailure::Abort(e)) => {
                cancel();
                return Err(e);
            }
            Err(SendFailure::Ended(e)) => {
                shared.lock().session.forget_outgoing(id);
                return Err(e);
            }
        }
        let outcome = match early {
            Some(outcome) => Ok(outcome),
            None => match deadline {
                Some(deadline) => {
                    receiver.recv_timeout(deadline.saturating_duration_since(transport::now()))
                }
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            },
        };
        match outcome {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                cancel();
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }

    /// Waits for the next broadcast from another peer (`None`: wait forever), sends its ACK and
    /// returns it. A broadcast is handed out only once received in full. The wait goes on
    /// across a reconnect (broadcasts received but not handed out when the connection dropped
    /// are discarded: their ACK can no longer reach the broker).
    ///
    /// ```no_run
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let client = Client::connect("127.0.0.1:7878", ChannelId::from_name("config")?)?;
    /// loop {
    ///     let broadcast = client.next_broadcast(None)?; // acknowledged when handed out
    ///     println!("{} says {:?}", broadcast.sender, String::from_utf8_lossy(&broadcast.body));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, [`Error::ConnectionLost`] when the ACK
    /// could not be sent, or a connection-fatal error.
    pub fn next_broadcast(&self, timeout: impl Into<Option<Duration>>) -> Result<Broadcast, Error> {
        let shared = &self.shared;
        let (done, link) =
            shared.wait_queue(&shared.broadcasts_ready, timeout.into(), |locked| {
                let link = locked.link.clone()?;
                locked.session.pop_broadcast().map(|done| (done, link))
            })?;
        let ack = shared.ids.frame(
            FrameType::Ack,
            Flags::BROADCAST,
            done.id,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, &ack)?;
        Ok(Broadcast {
            id: done.id,
            sender: done.sender,
            body: done.body,
        })
    }

    /// Waits for the next presence change (`None`: wait forever). The wait goes on across a
    /// reconnect; after one, the difference between the old and the new WELCOME's peer lists is
    /// reported as `Left` / `Joined` events.
    ///
    /// ```no_run
    /// use switchyard_client::{ChannelId, Client, PresenceEvent};
    ///
    /// let client = Client::connect("127.0.0.1:7878", ChannelId::from_name("orders")?)?;
    /// println!("already here: {:?}", client.peers());
    /// loop {
    ///     match client.next_presence(None)? {
    ///         PresenceEvent::Joined(peer) => println!("{peer} joined"),
    ///         PresenceEvent::Left(peer) => println!("{peer} left"),
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, or a connection-fatal error.
    pub fn next_presence(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<PresenceEvent, Error> {
        let shared = &self.shared;
        shared.wait_queue(&shared.presence_ready, timeout.into(), |locked| {
            locked.session.pop_presence()
        })
    }

    /// Asks the broker for the current peer list of the channel (the others, including peers
    /// inside their presence grace period) and returns it; [`Client::peers`] is refreshed too.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no answer came within `timeout` (`None`: no bound but the
    /// connection's end), [`Error::ConnectionLost`] / [`Error::Reconnecting`], or a
    /// connection-fatal error.
    pub fn fetch_peers(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Vec<ClientId>, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = chan::channel();
        // Answers are matched to callers in registration order. Two callers racing may swap
        // answers, which is harmless: both lists are current (the lock is not held across the
        // write, so the link thread is never blocked behind a slow socket).
        let ((), link) = shared.register(|session| session.register_peer_list(waiter))?;
        let frame = shared.ids.frame(
            FrameType::Peers,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, &frame)?;
        let answer = match timeout.into() {
            Some(timeout) => receiver.recv_timeout(timeout),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(peers) => Ok(peers),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }
}
