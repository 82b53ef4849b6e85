//! Requests: [`Client::request`] / [`Client::request_with`] as the sender,
//! [`Client::set_receive_window`] / [`Client::next_request`] as a receiver.

use std::io::Read;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use switchyard_proto::{encode_u32, Flags, FrameType};

use super::Client;
use crate::body::{send_body, IncomingRequest, Response, SendFailure};
use crate::stream::{BodyStream, Direction};
use crate::{timeout_ms, transport, Error, RequestId, RequestOptions};

impl Client {
    // ----- sender side -----------------------------------------------------------------------

    /// Sends a request and waits for the whole response body. `timeout` is the request's
    /// timeout at the broker (`None`: the broker's default).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let client = Client::connect("127.0.0.1:7878", ChannelId::from_name("orders")?)?;
    /// let reply = client.request(b"order #1", Duration::from_secs(5))?;
    /// println!("{}", String::from_utf8_lossy(&reply));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NoReceiver`], [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], the
    /// other per-request broker errors as [`Error::Broker`], [`Error::ConnectionLost`] when the
    /// connection dropped meanwhile, [`Error::Reconnecting`] when there was none, or a
    /// connection-fatal error.
    pub fn request(
        &self,
        body: &[u8],
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Vec<u8>, Error> {
        let mut body = body;
        self.request_with(
            &mut body,
            RequestOptions {
                timeout: timeout.into(),
                no_wait: false,
            },
        )?
        .read_to_vec()
    }

    /// Streams a request body from `body` (frames of at most `limits().max_payload` bytes, read
    /// one chunk ahead so a small body is one START|FINAL frame), then waits for the response to
    /// begin and returns it for streaming.
    ///
    /// Returns once the whole request is sent *and* the response's START arrived, so the
    /// responder is known and an early failure (no receiver, timeout…) is this call's `Err`. If
    /// the response completes while the request is still being sent, sending stops there.
    ///
    /// ```no_run
    /// use std::io::Read;
    /// use switchyard_client::{ChannelId, Client, RequestOptions};
    ///
    /// let client = Client::connect("127.0.0.1:7878", ChannelId::from_name("files")?)?;
    /// let mut body = std::fs::File::open("upload.bin")?; // streamed, never held whole
    /// let mut response = client.request_with(&mut body, RequestOptions::default())?;
    /// let mut reply = Vec::new();
    /// response.read_to_end(&mut reply)?; // the response is a reader too
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Client::request`]; plus [`Error::Io`] with the body reader's error, in which case
    /// the request was cancelled (CANCEL(REQUEST)) if any of it was sent; the client stays open.
    pub fn request_with(
        &self,
        body: &mut dyn Read,
        options: RequestOptions,
    ) -> Result<Response, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (events, receiver) = crate::chan::channel();
        let (id, link) = shared.register(|session| session.register_request(events))?;
        let deadline = link.deadline(options.timeout, shared.grace);
        let mut stream = BodyStream::new(
            Arc::clone(shared),
            Arc::clone(&link),
            id,
            Direction::Outgoing,
            receiver,
            deadline,
        );
        let start_flags = if options.no_wait {
            Flags::NO_WAIT
        } else {
            Flags::NONE
        };
        let wire_timeout = timeout_ms(options.timeout);
        let sent = send_body(
            shared,
            &link,
            id,
            Flags::REQUEST,
            start_flags,
            wire_timeout,
            body,
            || stream.pump(),
        );
        match sent {
            Ok(()) => {}
            Err(SendFailure::Read { error, started }) => {
                if started {
                    stream.cancel();
                } else {
                    stream.settled = true; // Nothing reached the broker.
                }
                return Err(Error::Io(error));
            }
            Err(SendFailure::Abort(e)) => {
                stream.cancel();
                return Err(e);
            }
            Err(SendFailure::Ended(e)) => {
                stream.settled = true;
                return Err(e);
            }
        }
        let responder = stream.await_start()?;
        Ok(Response { stream, responder })
    }

    // ----- receiver side ---------------------------------------------------------------------

    /// Sends RECEIVE(window): the broker assigns this client at most `window` requests at once.
    /// The window is *set*, not added to; 0 stops new assignments (held requests finish). A
    /// held request frees its slot when it completes, times out or is cancelled.
    ///
    /// The window is a standing setting: the client re-issues it after every reconnect. While
    /// reconnecting (or when the connection drops during this call) it is recorded, `Ok`, and
    /// sent as soon as the link is back.
    ///
    /// ```no_run
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let worker = Client::connect("127.0.0.1:7878", ChannelId::from_name("orders")?)?;
    /// worker.set_receive_window(4)?; // up to 4 requests assigned at once
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A connection-fatal error.
    pub fn set_receive_window(&self, window: u32) -> Result<(), Error> {
        let shared = &self.shared;
        let _order = shared
            .window_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let link = {
            let mut locked = shared.lock();
            locked.session.set_window(window)?;
            locked.link.clone()
        };
        let Some(link) = link else {
            return Ok(()); // Reconnecting: re-issued by the link thread.
        };
        let frame = shared.ids.frame(
            FrameType::Receive,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            encode_u32(window),
        );
        match shared.send(&link, &frame) {
            // Recorded: the next connection gets it.
            Err(Error::ConnectionLost) => Ok(()),
            other => other,
        }
    }

    /// Waits for the next request assigned to this client (`None`: wait forever). Requests are
    /// only assigned after [`Client::set_receive_window`] gave credit. The wait goes on across a
    /// reconnect.
    ///
    /// ```no_run
    /// use switchyard_client::{ChannelId, Client};
    ///
    /// let worker = Client::connect("127.0.0.1:7878", ChannelId::from_name("orders")?)?;
    /// worker.set_receive_window(1)?;
    /// loop {
    ///     let mut request = worker.next_request(None)?; // blocks until one is assigned
    ///     let body = request.read_body()?;
    ///     request.respond(&body.to_ascii_uppercase())?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::WaitElapsed`] when none arrived in time, or a connection-fatal error.
    pub fn next_request(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<IncomingRequest, Error> {
        let shared = &self.shared;
        let (new, link) = shared.wait_queue(&shared.requests_ready, timeout.into(), |locked| {
            let link = locked.link.clone()?;
            locked.session.pop_request().map(|new| (new, link))
        })?;
        let remaining = Duration::from_millis(new.timeout_ms.into());
        let deadline = transport::now()
            .checked_add(remaining)
            .and_then(|d| d.checked_add(shared.grace));
        let mut stream = BodyStream::new(
            Arc::clone(shared),
            link,
            new.id,
            Direction::Incoming,
            new.events,
            deadline,
        );
        stream.settle_on_finish = false;
        Ok(IncomingRequest {
            stream,
            sender: new.sender,
            timeout: remaining,
        })
    }
}
