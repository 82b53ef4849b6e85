//! Broadcast and presence on the async client: [`AsyncClient::broadcast`] to every other peer,
//! [`AsyncClient::next_broadcast`] and [`AsyncClient::next_presence`] from them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::{Flags, FrameType};

use super::body::{send_body, Outgoing, Source};
use super::client::{AsyncClient, OnDrop};
use super::with_timeout;
use crate::body::SendFailure;
use crate::{chan, timeout_ms, Broadcast, Error, PresenceEvent};

impl AsyncClient {
    /// Sends `body` to every other peer of the channel and waits until all acknowledged
    /// (`timeout` `None`: the broker's default). Returns the number of peers that acknowledged.
    /// Dropping the future before the outcome cancels the broadcast.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// use std::time::Duration;
    /// use switchyard_client::Error;
    ///
    /// match client.broadcast("config changed", Duration::from_secs(1)).await {
    ///     Ok(acked) => println!("{acked} peers have it"),
    ///     Err(Error::BroadcastIncomplete { missing }) => println!("{} missed it", missing.len()),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoPeers`], [`Error::BroadcastIncomplete`] with the peers that did not ack,
    /// [`Error::Timeout`] when the broker did not answer within the local deadline,
    /// [`Error::ConnectionLost`] / [`Error::Reconnecting`], or a connection-fatal error.
    pub async fn broadcast(
        &self,
        body: impl Into<Bytes>,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<u32, Error> {
        let shared = self.shared();
        let timeout = timeout.into();
        let (outcome, receiver) = chan::channel();
        let (id, link) = shared.register(|session| session.register_broadcast(outcome))?;
        let flags = Flags::REQUEST | Flags::BROADCAST;
        // However this future ends before the outcome (dropped, a local deadline, a failure),
        // the broadcast is forgotten and, if the broker still runs it, cancelled.
        let armed = AtomicBool::new(true);
        let _cancel_on_drop = OnDrop(|| {
            if armed.load(Ordering::Relaxed) && shared.lock().session.forget_outgoing(id) {
                link.queue(shared.ids.cancel(id, flags));
            }
        });
        let mut early = None;
        let outgoing = Outgoing {
            id,
            flags,
            start_flags: Flags::NONE,
            timeout_ms: timeout_ms(timeout),
        };
        let sent = send_body(
            shared,
            &link,
            outgoing,
            &mut Source::Bytes(body.into()),
            || match receiver.try_recv() {
                Ok(outcome) => {
                    early = Some(outcome);
                    Ok(true)
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(shared.lost_error()),
            },
        )
        .await;
        match sent {
            Ok(()) => {}
            Err(SendFailure::Read { error, .. }) => return Err(Error::Io(error)),
            Err(SendFailure::Abort(e) | SendFailure::Ended(e)) => return Err(e),
        }
        if let Some(outcome) = early {
            return outcome;
        }
        let local = link.local_timeout(timeout, shared.options.deadline_grace);
        let outcome = async {
            match receiver.recv_async().await {
                Some(outcome) => outcome,
                None => Err(shared.lost_error()),
            }
        };
        let result = with_timeout(Some(local), Error::Timeout, outcome).await;
        // Answered: the route is gone already; nothing to cancel.
        if !matches!(result, Err(Error::Timeout)) {
            armed.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Waits for the next broadcast from another peer (`None`: no bound), queues its ACK and
    /// returns it. A broadcast is handed out only once received in full; the wait goes on
    /// across a reconnect. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// let broadcast = client.next_broadcast(None).await?;
    /// println!("{} from {}", String::from_utf8_lossy(&broadcast.body), broadcast.sender);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, [`Error::ConnectionLost`] when the ACK
    /// could not be sent, or a connection-fatal error.
    pub async fn next_broadcast(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Broadcast, Error> {
        let shared = self.shared();
        let (done, link) = shared
            .wait_queue(&shared.broadcasts_ready, timeout.into(), |locked| {
                let link = locked.link.clone()?;
                locked.session.pop_broadcast().map(|done| (done, link))
            })
            .await?;
        let ack = shared.ids.frame(
            FrameType::Ack,
            Flags::BROADCAST,
            done.id,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, ack)?;
        Ok(Broadcast {
            id: done.id,
            sender: done.sender,
            body: done.body,
        })
    }

    /// Waits for the next presence change (`None`: no bound). The wait goes on across a
    /// reconnect; after one, the difference between the old and the new WELCOME's peer lists
    /// is reported as `Left` / `Joined` events.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// use switchyard_client::PresenceEvent;
    ///
    /// match client.next_presence(None).await? {
    ///     PresenceEvent::Joined(peer) => println!("{peer} joined"),
    ///     PresenceEvent::Left(peer) => println!("{peer} left"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, or a connection-fatal error.
    pub async fn next_presence(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<PresenceEvent, Error> {
        let shared = self.shared();
        shared
            .wait_queue(&shared.presence_ready, timeout.into(), |locked| {
                locked.session.pop_presence()
            })
            .await
    }
}
