//! Bodies: the public handles of streams ([`Response`], [`IncomingRequest`], both `io::Read`),
//! and [`send_body`], which streams a body out as START, CHUNK…, END.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::{Flags, FrameType, MAX_SEQUENCE};

use crate::link::Link;
use crate::shared::Shared;
use crate::stream::BodyStream;
use crate::{ClientId, Error, RequestId};

/// A response being received: an [`io::Read`] over its body.
///
/// Dropping it before the body's end cancels the request (CANCEL(REQUEST)).
#[derive(Debug)]
pub struct Response {
    pub(crate) stream: BodyStream,
    pub(crate) responder: ClientId,
}

impl Response {
    /// The receiver that responded.
    pub fn responder(&self) -> ClientId {
        self.responder
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.stream.id
    }

    /// Reads the rest of the body.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], another broker error, or
    /// a connection-fatal error.
    pub fn read_to_vec(mut self) -> Result<Vec<u8>, Error> {
        self.stream.read_to_vec()
    }
}

/// Errors convert with `From<Error> for io::Error` (the typed error is the inner error).
impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf).map_err(io::Error::from)
    }
}

/// A request assigned to this client. Read its body (it streams in as it arrives), then answer
/// with [`IncomingRequest::respond`] / [`IncomingRequest::respond_with`], or give up with
/// [`IncomingRequest::cancel`].
///
/// Dropping it without responding sends CANCEL(RESPONSE), so the sender is not left waiting.
/// If the sender cancels (or the request times out), reading the body fails with
/// [`Error::Cancelled`] and so does responding.
#[derive(Debug)]
pub struct IncomingRequest {
    pub(crate) stream: BodyStream,
    pub(crate) sender: ClientId,
    pub(crate) timeout: Duration,
}

impl IncomingRequest {
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

    /// Reads the rest of the body.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled (or the request timed out),
    /// [`Error::Timeout`] past the local deadline, or a connection-fatal error.
    pub fn read_body(&mut self) -> Result<Vec<u8>, Error> {
        self.stream.read_to_vec()
    }

    /// Sends the response `body` (see [`IncomingRequest::respond_with`]).
    ///
    /// # Errors
    /// As [`IncomingRequest::respond_with`].
    pub fn respond(self, body: &[u8]) -> Result<(), Error> {
        let mut body = body;
        self.respond_with(&mut body)
    }

    /// Streams the response from `body`, split as request bodies are. The request body need not
    /// have been read; what is left of it is discarded.
    ///
    /// ```no_run
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let worker = Client::connect("127.0.0.1:7878", ChannelId::from_name("files")?)?;
    /// worker.set_receive_window(1)?;
    /// let request = worker.next_request(None)?;
    /// let mut file = std::fs::File::open("report.pdf")?;
    /// request.respond_with(&mut file)?; // streamed in frames of at most max_payload bytes
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled first (sending stops), [`Error::Io`] with
    /// the reader's error (the response is cancelled), another per-request broker error, or a
    /// connection-fatal error.
    pub fn respond_with(mut self, body: &mut dyn Read) -> Result<(), Error> {
        self.stream.pump()?;
        let shared = Arc::clone(&self.stream.shared);
        let link = Arc::clone(&self.stream.link);
        let stream = &mut self.stream;
        let sent = send_body(
            &shared,
            &link,
            stream.id,
            Flags::RESPONSE,
            Flags::NONE,
            0,
            body,
            || stream.pump().map(|_| false),
        );
        match sent {
            Ok(()) => {
                self.stream.settled = true;
                Ok(())
            }
            Err(SendFailure::Read { error, .. }) => {
                self.stream.cancel();
                Err(Error::Io(error))
            }
            Err(SendFailure::Abort(e)) => {
                self.stream.cancel();
                Err(e)
            }
            Err(SendFailure::Ended(e)) => {
                self.stream.settled = true;
                Err(e)
            }
        }
    }

    /// Gives up on the request: sends CANCEL(RESPONSE) (the sender gets [`Error::Cancelled`]).
    pub fn cancel(mut self) {
        self.stream.cancel();
    }
}

/// Errors convert with `From<Error> for io::Error` (the typed error is the inner error).
impl Read for IncomingRequest {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf).map_err(io::Error::from)
    }
}

// ----- sending bodies --------------------------------------------------------------------------

/// Why [`send_body`] stopped early.
#[derive(Debug)]
pub(crate) enum SendFailure {
    /// The body reader failed; `started` says whether the START went out.
    Read { error: io::Error, started: bool },
    /// We must give up; the caller MUST cancel the stream.
    Abort(Error),
    /// The stream or the connection already ended; nothing to cancel.
    Ended(Error),
}

/// One chunk of at most `max` bytes (fewer only at the end of the body).
pub(crate) fn read_chunk(body: &mut dyn Read, max: u64) -> io::Result<Bytes> {
    let mut chunk = Vec::new();
    body.take(max).read_to_end(&mut chunk)?;
    Ok(Bytes::from(chunk))
}

/// Streams `body` as START, CHUNK…, END (or one START|FINAL), reading one chunk ahead so the
/// last frame carries FINAL. `check` runs between frames: `Err` stops with [`SendFailure::Ended`]
/// (the counterpart ended the stream), `Ok(true)` stops successfully (the counterpart completed
/// the exchange; more frames would only be answered with UNKNOWN_REQUEST).
#[allow(clippy::too_many_arguments)] // One call per direction; a struct would only rename them.
pub(crate) fn send_body(
    shared: &Shared,
    link: &Link,
    id: RequestId,
    flags: Flags,
    start_flags: Flags,
    timeout_ms: u32,
    body: &mut dyn Read,
    mut check: impl FnMut() -> Result<bool, Error>,
) -> Result<(), SendFailure> {
    let max = link.chunk_size();
    let mut sequence = 0u32;
    let mut current = read_chunk(body, max).map_err(|error| SendFailure::Read {
        error,
        started: false,
    })?;
    loop {
        let next = if (current.len() as u64) < max {
            None
        } else {
            let next = read_chunk(body, max).map_err(|error| SendFailure::Read {
                error,
                started: sequence > 0,
            })?;
            (!next.is_empty()).then_some(next)
        };
        // The read ahead may have blocked for a while: the stream may have been cancelled or
        // ended meanwhile. Check before every frame, the final one included, so a stream the
        // client knows is over is never continued nor reported as sent.
        if check().map_err(SendFailure::Ended)? {
            return Ok(());
        }
        let is_final = next.is_none();
        let (frame_type, frame_flags) = match (sequence, is_final) {
            (0, _) => (FrameType::Start, flags | start_flags),
            (_, true) => (FrameType::End, flags),
            (_, false) => (FrameType::Chunk, flags),
        };
        let mut frame = shared
            .ids
            .frame(frame_type, frame_flags, id, sequence, is_final, current);
        if sequence == 0 {
            frame.header.timeout_ms = timeout_ms;
        }
        shared.send(link, &frame).map_err(SendFailure::Ended)?;
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
