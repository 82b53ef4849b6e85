//! The link: one connection to the broker ([`Link`]: its write side and the limits its WELCOME
//! announced) and the link thread that reads it ([`Shared::run_link`]): every frame goes to the
//! session, a silent broker is pinged, and when the connection ends the thread reconnects
//! (`reconnect.rs`) or closes the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_proto::{Flags, FrameType, RequestId, MAX_PAYLOAD_CEILING};

use crate::handshake::Joined;
use crate::reconnect::{is_recoverable, Backoff};
use crate::shared::Shared;
use crate::transport::{self, Transport};
use crate::Limits;

/// One connection to the broker: its write side and the limits its WELCOME announced. An
/// operation keeps the `Arc<Link>` it was registered on and writes only there, so no frame of
/// an operation started on one connection can go out on the next one (at-most-once).
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) transport: Transport,
    pub(crate) limits: Limits,
}

impl Link {
    /// Bytes per frame when sending: the broker's limit, within the decoder ceiling every
    /// broker honours.
    pub(crate) fn chunk_size(&self) -> u64 {
        u64::from(self.limits.max_payload.clamp(1, MAX_PAYLOAD_CEILING))
    }

    /// The local deadline of an operation with the given timeout (`None`: the broker's
    /// default), from now, plus `grace`. `None` when it does not fit an `Instant` (wait
    /// forever).
    pub(crate) fn deadline(&self, timeout: Option<Duration>, grace: Duration) -> Option<Instant> {
        let effective = self.limits.effective_timeout(timeout);
        transport::now().checked_add(effective)?.checked_add(grace)
    }
}

impl Shared {
    /// The link thread: reads the current connection until it ends, then reconnects (per the
    /// policy) or closes the client. Returns once the client is closed.
    pub(crate) fn run_link(&self, mut joined: Joined, mut link: Arc<Link>) {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&RequestId::random().as_bytes()[..8]);
        let mut backoff = self
            .options
            .reconnect
            .map(|policy| Backoff::new(policy, u64::from_le_bytes(seed)));
        loop {
            // The broker pings a silent client; the client, symmetrically, pings a silent
            // broker and gives up on it after `heartbeat_misses` unanswered intervals.
            let heartbeat = link.limits.heartbeat;
            let liveness = transport::Liveness {
                interval: (!heartbeat.is_zero()).then_some(heartbeat),
                misses: self.options.heartbeat_misses,
            };
            let inbound = transport::Inbound {
                stream: &mut joined.stream,
                tls: joined.tls.as_ref(),
                decoder: &mut joined.decoder,
                buf: &mut joined.buf,
            };
            let reason = transport::read_frames(
                inbound,
                liveness,
                |frame| self.handle_frame(&link, frame),
                |sequence| {
                    let ping = self.ids.frame(
                        FrameType::Ping,
                        Flags::NONE,
                        RequestId::NIL,
                        sequence,
                        false,
                        Bytes::new(),
                    );
                    link.transport.send_control(ping);
                },
                || link.transport.flush_pending(),
            );
            let backoff = match backoff.as_mut() {
                Some(backoff) if is_recoverable(&reason) => backoff,
                // Reconnection off, or an end a new connection would not fix. Closing first
                // (it shuts the connection down) makes `reason` the one every caller sees.
                _ => return self.close(reason),
            };
            link.transport.shutdown();
            drop(joined);
            let Some(next) = self.reconnect(backoff, reason) else {
                return;
            };
            (joined, link) = next;
        }
    }
}
