//! Async bodies: [`AsyncResponse`] and [`AsyncIncomingRequest`] (each a `Stream` of `Bytes`),
//! the stream core they share ([`AsyncStream`], the async twin of the blocking `BodyStream`,
//! with the same cancel-on-drop duty), and [`send_body`], which streams a body out as START,
//! CHUNK…, END.
//!
//! # Invariants
//! - Every path that ends an operation from the client's side without the broker knowing (a
//!   local deadline, a drop before the end, a failing body source) queues the CANCEL of the
//!   stream's direction, once (`settled`).
//! - Reads after a failure repeat the failure.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use log::debug;
use switchyard_proto::{Flags, FrameType, MAX_SEQUENCE};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Sleep;

use super::{Link, Shared};
use crate::body::SendFailure;
use crate::chan::Receiver;
use crate::session::StreamEvent;
use crate::stream::{Direction, StreamState};
use crate::{ClientId, Error, RequestId};

/// The reading end of one stream, with the operation's cancel-on-drop duty.
#[derive(Debug)]
pub(crate) struct AsyncStream {
    pub(crate) shared: Arc<Shared>,
    /// The connection the operation was registered on: its only way out.
    pub(crate) link: Arc<Link>,
    pub(crate) id: RequestId,
    pub(crate) direction: Direction,
    events: Receiver<StreamEvent>,
    /// Events taken off `events` while sending, to be read in order.
    early: VecDeque<StreamEvent>,
    final_queued: bool,
    state: StreamState,
    /// True once nothing more is owed on the wire (no CANCEL on drop).
    pub(crate) settled: bool,
    /// Whether the inbound FINAL settles the operation (a response: yes; an incoming request,
    /// which still owes its response: no).
    settle_on_finish: bool,
    /// The local deadline (the operation's timeout plus the grace), armed at creation.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl AsyncStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: Arc<Link>,
        id: RequestId,
        direction: Direction,
        events: Receiver<StreamEvent>,
        deadline: Option<Duration>,
    ) -> AsyncStream {
        AsyncStream {
            shared,
            link,
            id,
            direction,
            events,
            early: VecDeque::new(),
            final_queued: false,
            state: StreamState::Open,
            settled: false,
            settle_on_finish: direction == Direction::Outgoing,
            deadline: deadline.map(|timeout| Box::pin(tokio::time::sleep(timeout))),
        }
    }

    fn forget(&self) -> bool {
        let session = &mut self.shared.lock().session;
        match self.direction {
            Direction::Outgoing => session.forget_outgoing(self.id),
            Direction::Incoming => session.forget_incoming(self.id),
        }
    }

    /// Ends the operation from our side: stops routing and, unless settled, queues CANCEL in
    /// our direction.
    pub(crate) fn cancel(&mut self) {
        let was_routed = self.forget();
        if !self.settled {
            self.settled = true;
            let flags = match self.direction {
                Direction::Outgoing => Flags::REQUEST,
                Direction::Incoming => Flags::RESPONSE,
            };
            // Even an unrouted incoming request is worth cancelling: the broker only drops it.
            if was_routed || self.direction == Direction::Incoming {
                // A connection that ended needs no CANCEL: the broker ended the stream itself.
                self.link.queue(self.shared.ids.cancel(self.id, flags));
            }
        }
    }

    fn fail(&mut self, error: &Error) {
        self.set_state(StreamState::Failed(error.duplicate()));
        self.settled = true;
    }

    fn set_state(&mut self, state: StreamState) {
        log::trace!(
            "async stream {} ({:?}): {:?} => {:?}",
            self.id,
            self.direction,
            self.state,
            state
        );
        self.state = state;
    }

    fn finish(&mut self) {
        self.set_state(StreamState::Finished);
        if self.settle_on_finish {
            self.settled = true;
        }
    }

    /// The next event; a deadline or a lost connection fails the stream.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<StreamEvent, Error>> {
        if let Some(event) = self.early.pop_front() {
            return Poll::Ready(Ok(event));
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => return Poll::Ready(Ok(event)),
            Poll::Ready(None) => {
                let error = self.shared.lost_error();
                self.fail(&error);
                return Poll::Ready(Err(error));
            }
            Poll::Pending => {}
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                debug!("stream {} passed its local deadline; cancelling", self.id);
                self.cancel();
                self.fail(&Error::Timeout);
                return Poll::Ready(Err(Error::Timeout));
            }
        }
        Poll::Pending
    }

    /// The next non-empty run of bytes, `Ready(Ok(None))` at the end of the stream.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            match &self.state {
                StreamState::Finished => return Poll::Ready(Ok(None)),
                StreamState::Failed(e) => return Poll::Ready(Err(e.duplicate())),
                StreamState::Open => {}
            }
            let event = match self.poll_event(cx) {
                Poll::Ready(Ok(event)) => event,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match event {
                StreamEvent::Start { data, is_final, .. }
                | StreamEvent::Data { data, is_final } => {
                    if is_final {
                        self.finish();
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                StreamEvent::Failed(e) => {
                    self.fail(&e);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// Waits for the response START; returns the responder and puts the START's bytes back as
    /// the first to read.
    pub(crate) async fn await_start(&mut self) -> Result<ClientId, Error> {
        let event = poll_fn(|cx| self.poll_event(cx)).await?;
        match event {
            StreamEvent::Start {
                peer,
                data,
                is_final,
            } => {
                self.early.push_front(StreamEvent::Data { data, is_final });
                Ok(peer)
            }
            // The session only routes a START first; keep the data anyway.
            StreamEvent::Data { data, is_final } => {
                self.early.push_front(StreamEvent::Data { data, is_final });
                Ok(ClientId::NIL)
            }
            StreamEvent::Failed(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// The rest of the body, whole.
    pub(crate) async fn collect(&mut self) -> Result<Bytes, Error> {
        let mut body = BytesMut::new();
        let mut only = None;
        while let Some(chunk) = poll_fn(|cx| self.poll_chunk(cx)).await? {
            // A one-frame body is returned as received, without a copy.
            match only.take() {
                None if body.is_empty() => only = Some(chunk),
                None => body.extend_from_slice(&chunk),
                Some(first) => {
                    body.extend_from_slice(&first);
                    body.extend_from_slice(&chunk);
                }
            }
        }
        Ok(only.unwrap_or_else(|| body.freeze()))
    }

    /// Takes every event already delivered, without waiting (between two frames we send).
    /// Returns whether the stream's FINAL is among them; `Err` when the stream failed.
    pub(crate) fn pump(&mut self) -> Result<bool, Error> {
        if let StreamState::Failed(e) = &self.state {
            return Err(e.duplicate());
        }
        loop {
            match self.events.try_recv() {
                Ok(StreamEvent::Failed(e)) => {
                    self.fail(&e);
                    return Err(e);
                }
                Ok(event) => {
                    if matches!(
                        event,
                        StreamEvent::Start { is_final: true, .. }
                            | StreamEvent::Data { is_final: true, .. }
                    ) {
                        self.final_queued = true;
                    }
                    self.early.push_back(event);
                }
                Err(TryRecvError::Empty) => return Ok(self.final_queued),
                Err(TryRecvError::Disconnected) => {
                    let e = self.shared.lost_error();
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for AsyncStream {
    fn drop(&mut self) {
        // Unsettled: abandoned mid-way (a dropped future or body); tell the broker.
        if self.settled {
            self.forget();
        } else {
            self.cancel();
        }
    }
}

/// A response being received: a [`Stream`] of its body's bytes, as they arrive.
///
/// Dropping it before the body's end cancels the request (CANCEL(REQUEST)).
///
/// ```no_run
/// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
/// use switchyard_client::RequestOptions;
///
/// let upload: &[u8] = &[7u8; 4 << 20]; // any `AsyncRead`: a file, a socket, a pipe
/// let mut response = client.request_with(upload, RequestOptions::default()).await?;
/// while let Some(chunk) = response.next_chunk().await? {
///     println!("{} bytes", chunk.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncResponse {
    pub(crate) stream: AsyncStream,
    pub(crate) responder: ClientId,
}

impl AsyncResponse {
    /// The receiver that responded.
    pub fn responder(&self) -> ClientId {
        self.responder
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.stream.id
    }

    /// The next part of the body as it arrived, `None` at its end.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], another broker error,
    /// [`Error::ConnectionLost`], or a connection-fatal error; then every later call repeats it.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| self.stream.poll_chunk(cx)).await
    }

    /// The rest of the body, whole (a one-frame body without a copy).
    ///
    /// # Errors
    /// As [`AsyncResponse::next_chunk`].
    pub async fn bytes(mut self) -> Result<Bytes, Error> {
        self.stream.collect().await
    }
}

impl Stream for AsyncResponse {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().stream.poll_chunk(cx).map(Result::transpose)
    }
}

/// A request assigned to this client: a [`Stream`] of its body's bytes (they arrive as the
/// sender streams them). Answer with [`AsyncIncomingRequest::respond`] /
/// [`AsyncIncomingRequest::respond_with`], or give up with [`AsyncIncomingRequest::cancel`].
///
/// Dropping it without responding sends CANCEL(RESPONSE), so the sender is not left waiting.
/// If the sender cancels (or the request times out), reading fails with [`Error::Cancelled`]
/// and so does responding.
///
/// ```no_run
/// # async fn run(client: switchyard_client::AsyncClient) -> Result<(), switchyard_client::Error> {
/// let mut request = client.next_request(None).await?;
/// let mut size = 0;
/// while let Some(chunk) = request.next_chunk().await? {
///     size += chunk.len(); // process the body as it streams in
/// }
/// // Stream the answer from any `AsyncRead`: a file, a socket, a child process.
/// let report = format!("{size} bytes from {}", request.sender()).into_bytes();
/// request.respond_with(&report[..]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncIncomingRequest {
    pub(crate) stream: AsyncStream,
    pub(crate) sender: ClientId,
    pub(crate) timeout: Duration,
}

impl AsyncIncomingRequest {
    pub(crate) fn new(stream: AsyncStream, sender: ClientId, timeout: Duration) -> Self {
        AsyncIncomingRequest {
            stream,
            sender,
            timeout,
        }
    }

    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.stream.id
    }

    /// The client that sent it.
    pub fn sender(&self) -> ClientId {
        self.sender
    }

    /// The time the request had left when the broker assigned it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The next part of the body as it arrived, `None` at its end.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled (or the request timed out),
    /// [`Error::Timeout`] past the local deadline, or a connection-fatal error.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| self.stream.poll_chunk(cx)).await
    }

    /// The rest of the body, whole.
    ///
    /// # Errors
    /// As [`AsyncIncomingRequest::next_chunk`].
    pub async fn body(&mut self) -> Result<Bytes, Error> {
        self.stream.collect().await
    }

    /// Sends the response `body` in one go (split into frames as needed).
    ///
    /// # Errors
    /// As [`AsyncIncomingRequest::respond_with`].
    pub async fn respond(self, body: impl Into<Bytes>) -> Result<(), Error> {
        self.respond_from(Source::Bytes(body.into())).await
    }

    /// Streams the response from `body`, in frames of at most the broker's max payload. The
    /// request body need not have been read; what is left of it is discarded.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled first (sending stops), [`Error::Io`] with
    /// the reader's error (the response is cancelled), another per-request broker error, or a
    /// connection-fatal error.
    pub async fn respond_with(self, body: impl AsyncRead + Unpin + Send) -> Result<(), Error> {
        let mut body = body;
        self.respond_from(Source::Reader(&mut body)).await
    }

    async fn respond_from(mut self, mut source: Source<'_>) -> Result<(), Error> {
        self.stream.pump()?;
        let shared = Arc::clone(&self.stream.shared);
        let link = Arc::clone(&self.stream.link);
        let id = self.stream.id;
        let stream = &mut self.stream;
        let sent = send_body(
            &shared,
            &link,
            Outgoing {
                id,
                flags: Flags::RESPONSE,
                start_flags: Flags::NONE,
                timeout_ms: 0,
            },
            &mut source,
            || stream.pump().map(|_| false),
        )
        .await;
        settle(&mut self.stream, sent)
    }

    /// Gives up on the request: sends CANCEL(RESPONSE) (the sender gets [`Error::Cancelled`]).
    pub fn cancel(mut self) {
        self.stream.cancel();
    }
}

impl Stream for AsyncIncomingRequest {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().stream.poll_chunk(cx).map(Result::transpose)
    }
}

/// Ends a stream after [`send_body`]: settled when the broker knows the outcome, cancelled when
/// we gave up.
pub(crate) fn settle(stream: &mut AsyncStream, sent: Result<(), SendFailure>) -> Result<(), Error> {
    match sent {
        Ok(()) => {
            stream.settled = true;
            Ok(())
        }
        Err(SendFailure::Read { error, started }) => {
            if started {
                stream.cancel();
            } else {
                stream.settled = true; // Nothing reached the broker.
            }
            Err(Error::Io(error))
        }
        Err(SendFailure::Abort(e)) => {
            stream.cancel();
            Err(e)
        }
        Err(SendFailure::Ended(e)) => {
            stream.settled = true;
            Err(e)
        }
    }
}

// ----- sending bodies --------------------------------------------------------------------------

/// Where a body comes from: bytes already in memory (sliced into frames without a copy) or a
/// reader (read one frame ahead).
pub(crate) enum Source<'a> {
    Bytes(Bytes),
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
}

impl Source<'_> {
    /// The next chunk of at most `max` bytes (fewer only at the end of the body).
    async fn next_chunk(&mut self, max: usize) -> io::Result<Bytes> {
        match self {
            Source::Bytes(bytes) => Ok(bytes.split_to(max.min(bytes.len()))),
            Source::Reader(reader) => {
                let mut chunk = BytesMut::with_capacity(max.min(64 * 1024));
                while chunk.len() < max {
                    let want = max - chunk.len();
                    let n = (&mut **reader)
                        .take(u64::try_from(want).unwrap_or(u64::MAX))
                        .read_buf(&mut chunk)
                        .await?;
                    if n == 0 {
                        break;
                    }
                }
                Ok(chunk.freeze())
            }
        }
    }
}

/// The header fields of the stream a body is sent on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: RequestId,
    pub(crate) flags: Flags,
    /// Added to the START only (NO_WAIT).
    pub(crate) start_flags: Flags,
    pub(crate) timeout_ms: u32,
}

/// Streams `source` as START, CHUNK…, END (or one START|FINAL), reading one chunk ahead so the
/// last frame carries FINAL; each frame waits for a body credit of the link. `check` runs before
/// every frame, as in the blocking `send_body`: `Err` stops with [`SendFailure::Ended`],
/// `Ok(true)` stops successfully (the counterpart completed the exchange).
pub(crate) async fn send_body(
    shared: &Shared,
    link: &Link,
    stream: Outgoing,
    source: &mut Source<'_>,
    mut check: impl FnMut() -> Result<bool, Error>,
) -> Result<(), SendFailure> {
    let max = link.chunk_size();
    let mut sequence = 0u32;
    let mut current = source
        .next_chunk(max)
        .await
        .map_err(|error| SendFailure::Read {
            error,
            started: false,
        })?;
    loop {
        let next = if current.len() < max {
            None
        } else {
            let next = source
                .next_chunk(max)
                .await
                .map_err(|error| SendFailure::Read {
                    error,
                    started: sequence > 0,
                })?;
            (!next.is_empty()).then_some(next)
        };
        if check().map_err(SendFailure::Ended)? {
            return Ok(());
        }
        let is_final = next.is_none();
        let (frame_type, frame_flags) = match (sequence, is_final) {
            (0, _) => (FrameType::Start, stream.flags | stream.start_flags),
            (_, true) => (FrameType::End, stream.flags),
            (_, false) => (FrameType::Chunk, stream.flags),
        };
        let mut frame = shared.ids.frame(
            frame_type,
            frame_flags,
            stream.id,
            sequence,
            is_final,
            current,
        );
        if sequence == 0 {
            frame.header.timeout_ms = stream.timeout_ms;
        }
        if !link.queue_body(frame).await {
            return Err(SendFailure::Ended(shared.lost_error()));
        }
        let Some(next) = next else {
            return Ok(());
        };
        if sequence == MAX_SEQUENCE {
            let max_payload = link.limits.max_payload;
            return Err(SendFailure::Abort(Error::TooLarge { max_payload }));
        }
        sequence += 1;
        current = next;
    }
}
