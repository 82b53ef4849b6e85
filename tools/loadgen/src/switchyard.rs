//! The switchyard back-end: PROTOCOL.md frames, built with the crate's own [`Header`].
//!
//! - Setup: HELLO on the scenario's channel (client id nil: the broker assigns one); a receiver
//!   then sends RECEIVE(window). Every role ends with PING; its PONG is the readiness barrier.
//! - Request: START with REQUEST and FINAL (one frame), timeout 0 (the broker's default). The
//!   request id is `run nonce (8 bytes) | connection (4) | tag (4)`: unique among the streams in
//!   flight because a tag is a slot that is reused only after its request completed.
//! - Response: START with RESPONSE and FINAL, echoing the request id.
//! - Broadcast: START with REQUEST|BROADCAST and FINAL; each peer answers ACK (BROADCAST, same
//!   id); the sender's request completes with the broker's ACK (or an ERROR).
//!
//! Parsing uses [`Header::parse`] on a slice of the connection's read buffer rather than the
//! crate's `Decoder`, which works on `BytesMut` and hands out `Bytes`; the shared machinery
//! reads both protocols into the same plain buffer, and a borrowed slice is all a load generator
//! needs. Bodies are one frame each, so a body must fit the broker's max payload (1 MiB default).

use switchyard::ids::{ChannelId, RequestId};
use switchyard::protocol::{encode_u32, Flags, FrameType, Header, HEADER_LEN};

use crate::net::{Inbound, Protocol, Role, WireError};

/// The switchyard wire protocol; `nonce` keeps this run's channels and request ids apart from
/// any other run's on the same broker.
#[derive(Clone)]
pub(crate) struct Switchyard {
    nonce: [u8; 8],
}

impl Switchyard {
    pub(crate) fn new(nonce: u64) -> Switchyard {
        Switchyard {
            nonce: nonce.to_be_bytes(),
        }
    }

    fn request_id(&self, session: &Session, tag: u32) -> RequestId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.nonce);
        id[8..12].copy_from_slice(&session.conn.to_be_bytes());
        id[12..].copy_from_slice(&tag.to_be_bytes());
        RequestId::from_bytes(id)
    }
}

/// Per-connection state: the channel every frame must carry, and our number for request ids.
pub(crate) struct Session {
    channel: ChannelId,
    conn: u32,
}

/// The tag of one of our request ids (its last four bytes).
fn tag_of(id: &[u8; 16]) -> u32 {
    u32::from_be_bytes([id[12], id[13], id[14], id[15]])
}

fn put_frame(out: &mut Vec<u8>, header: Header, payload: &[u8]) {
    let header = Header {
        payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        ..header
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

impl Protocol for Switchyard {
    type Session = Session;
    const ACKS_BROADCASTS: bool = true;

    fn new_session(&self, conn: usize, group: u32) -> Session {
        let mut channel = [0u8; 16];
        channel[..8].copy_from_slice(&self.nonce);
        channel[12..].copy_from_slice(&group.to_be_bytes());
        // A channel id must not be nil; the nonce is random, but make sure.
        channel[11] = 1;
        Session {
            channel: ChannelId::from_bytes(channel),
            conn: u32::try_from(conn).unwrap_or(u32::MAX),
        }
    }

    fn write_setup(&self, session: &mut Session, role: Role, out: &mut Vec<u8>) {
        let hello = Header {
            channel_id: session.channel,
            ..Header::new(FrameType::Hello)
        };
        put_frame(out, hello, &[]);
        if let Role::Receiver { window } = role {
            let receive = Header {
                channel_id: session.channel,
                ..Header::new(FrameType::Receive)
            };
            put_frame(out, receive, &encode_u32(window));
        }
    }

    fn write_ping(&self, session: &mut Session, out: &mut Vec<u8>) {
        let ping = Header {
            channel_id: session.channel,
            ..Header::new(FrameType::Ping)
        };
        put_frame(out, ping, &[]);
    }

    fn write_pong(&self, session: &mut Session, out: &mut Vec<u8>) {
        let pong = Header {
            channel_id: session.channel,
            ..Header::new(FrameType::Pong)
        };
        put_frame(out, pong, &[]);
    }

    fn write_request(&self, session: &mut Session, tag: u32, body: &[u8], out: &mut Vec<u8>) {
        let start = Header {
            flags: Flags::REQUEST,
            channel_id: session.channel,
            request_id: self.request_id(session, tag),
            is_final: true,
            ..Header::new(FrameType::Start)
        };
        put_frame(out, start, body);
    }

    fn write_reply(&self, session: &mut Session, reply_to: &[u8], body: &[u8], out: &mut Vec<u8>) {
        let Ok(id) = <[u8; 16]>::try_from(reply_to) else {
            return;
        };
        let start = Header {
            flags: Flags::RESPONSE,
            channel_id: session.channel,
            request_id: RequestId::from_bytes(id),
            is_final: true,
            ..Header::new(FrameType::Start)
        };
        put_frame(out, start, body);
    }

    fn write_broadcast(&self, session: &mut Session, tag: u32, body: &[u8], out: &mut Vec<u8>) {
        let start = Header {
            flags: Flags::REQUEST | Flags::BROADCAST,
            channel_id: session.channel,
            request_id: self.request_id(session, tag),
            is_final: true,
            ..Header::new(FrameType::Start)
        };
        put_frame(out, start, body);
    }

    fn write_broadcast_ack(&self, session: &mut Session, id: &[u8], out: &mut Vec<u8>) {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return;
        };
        let ack = Header {
            flags: Flags::BROADCAST,
            channel_id: session.channel,
            request_id: RequestId::from_bytes(id),
            ..Header::new(FrameType::Ack)
        };
        put_frame(out, ack, &[]);
    }

    fn parse<'a>(
        &self,
        _session: &mut Session,
        buf: &'a [u8],
    ) -> Result<Option<(Inbound<'a>, usize)>, WireError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header =
            Header::parse(head).map_err(|e| WireError(format!("bad frame from broker: {e}")))?;
        let total = HEADER_LEN + header.payload_len as usize;
        let Some(frame) = buf.get(..total) else {
            return Ok(None);
        };
        let payload = &frame[HEADER_LEN..];
        let id_bytes = &frame[36..52];
        let flags = header.flags;
        let message = match header.frame_type {
            FrameType::Pong => Inbound::Pong,
            FrameType::Ping => Inbound::ServerPing,
            FrameType::Start if !header.is_final => {
                return Err(WireError(
                    "multi-frame stream: the load generator sends one-frame bodies only".into(),
                ))
            }
            FrameType::Start if flags.contains(Flags::BROADCAST) => {
                Inbound::Broadcast { id: id_bytes }
            }
            FrameType::Start if flags.contains(Flags::REQUEST) => Inbound::Request {
                reply_to: id_bytes,
                body_len: payload.len(),
            },
            FrameType::Start => Inbound::Response {
                tag: tag_of(header.request_id.as_bytes()),
            },
            FrameType::Ack => Inbound::BroadcastDone {
                tag: tag_of(header.request_id.as_bytes()),
            },
            FrameType::Error => {
                let code = payload
                    .first_chunk::<2>()
                    .map_or(0, |c| u16::from_be_bytes(*c));
                let tag =
                    (!header.request_id.is_nil()).then(|| tag_of(header.request_id.as_bytes()));
                Inbound::Failed { tag, code }
            }
            // Toward a sender (RESPONSE): the receiver gave up on our request. Toward a
            // receiver or peer: the request or broadcast ended; nothing more to send for it.
            FrameType::Cancel if flags.contains(Flags::RESPONSE) => Inbound::Failed {
                tag: Some(tag_of(header.request_id.as_bytes())),
                code: 0,
            },
            FrameType::Cancel => Inbound::Ignored,
            FrameType::Welcome
            | FrameType::PeerJoined
            | FrameType::PeerLeft
            | FrameType::Chunk
            | FrameType::End
            | FrameType::Hello
            | FrameType::Receive
            | FrameType::Peers => Inbound::Ignored,
        };
        Ok(Some((message, total)))
    }
}
