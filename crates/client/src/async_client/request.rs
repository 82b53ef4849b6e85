//! Requests on the async client: [`AsyncClient::request`] / [`AsyncClient::request_with`] as
//! the sender, [`AsyncClient::set_receive_window`] / [`AsyncClient::next_request`] as a
//! receiver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::{encode_u32, Flags, FrameType};
use tokio::io::AsyncRead;

use super::body::Source;
use super::body::{send_body, settle, AsyncIncomingRequest, AsyncResponse, AsyncStream, Outgoing};
use super::client::AsyncClient;
use crate::stream::Direction;
use crate::{chan, timeout_ms, Error, RequestId, RequestOptions};

impl AsyncClient {
    // ----- sender side -----------------------------------------------------------------------

    /// Sends a request and waits for the whole response body. `timeout` is the request's
    /// timeout at the broker (`None`: the broker's default).
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// use std::time::Duration;
    ///
    /// let reply = client.request("2 + 2", Duration::from_secs(2)).await?;
    /// assert_eq!(&reply[..], b"4");
    /// # Ok(()) }
    /// ```
    ///
    /// Dropping the future before it completes cancels the request (CANCEL(REQUEST)): the
    /// receiver holding it sees [`Error::Cancelled`].
    ///
    /// # Errors
    /// [`Error::NoReceiver`], [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`],
    /// [`Error::GoingAway`], the other per-request broker errors as [`Error::Broker`],
    /// [`Error::ConnectionLost`] when the connection dropped meanwhile,
    /// [`Error::Reconnecting`] when there was none, or a connection-fatal error.
    pub async fn request(
        &self,
        body: impl Into<Bytes>,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Bytes, Error> {
        let options = RequestOptions {
            timeout: timeout.into(),
            no_wait: false,
        };
        self.request_from(Source::Bytes(body.into()), options)
            .await?
            .bytes()
            .await
    }

    /// Streams a request body from `body` (frames of at most `limits().max_payload` bytes, at
    /// most a few frames queued at a time), then waits for the response to begin and returns it
    /// for streaming. Returns once the whole request is queued *and* the response's START
    /// arrived; if the response completes while the request is still being sent, sending stops
    /// there. Dropping the future cancels the request.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// use std::time::Duration;
    /// use switchyard_client::RequestOptions;
    ///
    /// let body: &[u8] = &[0u8; 8 << 20]; // any `AsyncRead`: a file, a socket, a pipe
    /// let options = RequestOptions { timeout: Some(Duration::from_secs(30)), no_wait: true };
    /// let response = client.request_with(body, options).await?;
    /// let whole = response.bytes().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`AsyncClient::request`]; plus [`Error::Io`] with the body reader's error, in which
    /// case the request was cancelled if any of it was sent; the client stays open.
    pub async fn request_with(
        &self,
        body: impl AsyncRead + Unpin + Send,
        options: RequestOptions,
    ) -> Result<AsyncResponse, Error> {
        let mut body = body;
        self.request_from(Source::Reader(&mut body), options).await
    }

    async fn request_from(
        &self,
        mut source: Source<'_>,
        options: RequestOptions,
    ) -> Result<AsyncResponse, Error> {
        let shared = self.shared();
        let (events, receiver) = chan::channel();
        let (id, link) = shared.register(|session| session.register_request(events))?;
        let deadline = link.local_timeout(options.timeout, shared.options.deadline_grace);
        // From here on, dropping this future drops `stream`, which cancels the request.
        let mut stream = AsyncStream::new(
            Arc::clone(shared),
            Arc::clone(&link),
            id,
            Direction::Outgoing,
            receiver,
            Some(deadline),
        );
        let start_flags = if options.no_wait {
            Flags::NO_WAIT
        } else {
            Flags::NONE
        };
        let outgoing = Outgoing {
            id,
            flags: Flags::REQUEST,
            start_flags,
            timeout_ms: timeout_ms(options.timeout),
        };
        let sent = send_body(shared, &link, outgoing, &mut source, || stream.pump()).await;
        if let Err(e) = sent {
            return Err(settle(&mut stream, Err(e)).expect_err("a failure stays a failure"));
        }
        let responder = stream.await_start().await?;
        Ok(AsyncResponse { stream, responder })
    }

    // ----- receiver side ---------------------------------------------------------------------

    /// Sets the receive window: the broker assigns this client at most `window` requests at
    /// once (0 stops new assignments; held requests finish). A standing setting, re-issued
    /// after every reconnect; while reconnecting it is recorded and sent once the link is back.
    /// It never waits (the frame is queued for the driver task).
    ///
    /// ```no_run
    /// # fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// client.set_receive_window(8)?; // serve up to 8 requests at once
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A connection-fatal error.
    pub fn set_receive_window(&self, window: u32) -> Result<(), Error> {
        let shared = self.shared();
        // Recorded and queued under one lock: the driver re-issues the window under the same
        // lock when it reconnects, so the broker always ends up with the window set last.
        let mut locked = shared.lock();
        locked.session.set_window(window)?;
        if let Some(link) = &locked.link {
            let frame = shared.ids.frame(
                FrameType::Receive,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
                encode_u32(window),
            );
            // A connection that just ended: the next one gets the recorded window.
            link.queue(frame);
        }
        Ok(())
    }

    /// Waits for the next request assigned to this client (`None`: no bound). Requests are only
    /// assigned after [`AsyncClient::set_receive_window`] gave credit. The wait goes on across
    /// a reconnect. Cancel-safe: a dropped wait takes no request off the queue.
    ///
    /// ```no_run
    /// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
    /// client.set_receive_window(1)?;
    /// loop {
    ///     let mut request = client.next_request(None).await?;
    ///     let body = request.body().await?;
    ///     request.respond(body).await?; // an echo server
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, or a connection-fatal error.
    pub async fn next_request(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<AsyncIncomingRequest, Error> {
        let shared = self.shared();
        let (new, link) = shared
            .wait_queue(&shared.requests_ready, timeout.into(), |locked| {
                let link = locked.link.clone()?;
                locked.session.pop_request().map(|new| (new, link))
            })
            .await?;
        let remaining = Duration::from_millis(new.timeout_ms.into());
        let stream = AsyncStream::new(
            Arc::clone(shared),
            link,
            new.id,
            Direction::Incoming,
            new.events,
            Some(remaining.saturating_add(shared.options.deadline_grace)),
        );
        Ok(AsyncIncomingRequest::new(stream, new.sender, remaining))
    }
}
