//! Presence: joining (the handshake), leaving, client-id takeover, the grace period, and the
//! on-demand peer list.
//!
//! ```text
//!  HELLO(client X) ─┬─ X is a ghost (left < grace ago) ──▶ member again, silently: no PEER_JOINED
//!  (X present — a member or a ghost — and the HELLO's request id field is not X's resume
//!   secret: ERROR CLIENT_ID_IN_USE, close; the member and its channel are undisturbed)
//!                   ├─ X is a member (another connection) ▶ takeover: the old connection gets
//!                   │     ERROR REPLACED and is closed (its requests end as for any departure);
//!                   │     the new one takes its place silently: neither PEER_LEFT nor PEER_JOINED
//!                   └─ otherwise ──────────────────────────▶ member; PEER_JOINED to the others
//!  member leaves ───┬─ grace > 0 ──▶ ghost; PEER_LEFT only when the grace timer fires
//!                   └─ grace = 0 ──▶ PEER_LEFT at once
//! ```
//! Access tokens, checked first (after the nil channel id): a HELLO whose payload is not the
//! channel's token (or the broker-wide one) gets ERROR UNAUTHORIZED and is closed, with a text
//! that says nothing about the channel, before any limit or presence state is looked at.
//! Limits, checked before anything changes: a HELLO that would create a channel beyond
//! `max_channels`, or add a peer (member or ghost) to a channel beyond `max_peers_per_channel`,
//! gets ERROR LIMIT_EXCEEDED with a nil request id and is closed; a takeover or a ghost's return
//! adds no peer and is always let in. A connection that has not completed its handshake
//! `handshake_timeout` after its accept gets ERROR HANDSHAKE_REQUIRED and is closed: one timer per
//! connection awaiting its hello, removed at the handshake or the close.
//!
//! Resume secrets: each present client id has one (16 random bytes, or the secret the client
//! presented when its id was free), kept across takeovers and ghost returns and sent in the
//! request id field of every WELCOME. A HELLO naming a present id must carry it in its own
//! request id field, or it is refused with CLIENT_ID_IN_USE before anything changes — a member
//! that learnt another's id from a WELCOME or PEERS list cannot evict or impersonate it.
//!
//! So a peer that reconnects within the grace period — however often, whatever the interleaving
//! of the old connection's close and the new one's hello — is seen by the others as never having
//! left. A ghost is visible in WELCOME and PEERS lists (it is still present for the others) but
//! takes part in nothing: it holds no request and gets no broadcast. A channel lives while it has
//! members or ghosts.

use bytes::Bytes;
use std::time::Instant;

use super::channel::{duration_ms, Ghost, Member};
use super::{insert_timer, Router, TimerTarget};
use crate::auth::ResumeSecret;
use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::protocol::{encode_peers, ErrorCode, Frame, FrameType, Header, WelcomeBody};

impl Router {
    /// HELLO on a connection awaiting it: join the channel, welcome, announce.
    pub(super) fn recv_hello(&mut self, conn: ConnId, frame: &Frame) {
        let channel_id = frame.header.channel_id;
        if channel_id.is_nil() {
            self.counters.handshake_failures += 1;
            return self.fail_connection(
                conn,
                ErrorCode::ChannelMismatch,
                "hello needs a non-nil channel id",
            );
        }
        // Before anything that depends on the channel's state (limits, peers): a client without
        // the right token learns nothing about the channel, not even whether it exists.
        if !self.config.tokens.admits(channel_id, &frame.payload) {
            self.counters.handshake_failures += 1;
            return self.fail_connection(
                conn,
                ErrorCode::Unauthorized,
                "access token missing or wrong",
            );
        }
        if self.shutting_down {
            self.counters.handshake_failures += 1;
            return self.fail_connection(conn, ErrorCode::GoingAway, "the broker is shutting down");
        }
        let client = if frame.header.client_id.is_nil() {
            ClientId::random()
        } else {
            frame.header.client_id
        };
        // Before anything changes: a present id is taken over only with its resume secret.
        let presented = ResumeSecret::presented(*frame.header.request_id.as_bytes());
        let secret = match self.present_secret(channel_id, client) {
            Some(held) if presented.is_some_and(|p| held.matches(&p)) => held,
            Some(_) => {
                self.counters.handshake_failures += 1;
                return self.fail_connection(
                    conn,
                    ErrorCode::ClientIdInUse,
                    &format!(
                        "client {client} is present on channel {channel_id}: taking it over \
                         needs the resume secret of its welcome"
                    ),
                );
            }
            // A free id: the client's own secret if it presents one (so a client keeps one
            // secret for life), else a fresh one.
            None => presented.unwrap_or_else(ResumeSecret::random),
        };
        if !self.channels.contains_key(&channel_id)
            && self.channels.len() >= self.config.max_channels
        {
            // Ghosts do not block new channels: a channel kept only by departed peers makes room.
            self.evict_ghost_channel();
        }
        if let Some(text) = self.hello_limit_reached(channel_id, client) {
            self.counters.handshake_failures += 1;
            return self.fail_connection(conn, ErrorCode::LimitExceeded, &text);
        }
        let channel = self.channels.entry(channel_id).or_default();
        let returning_ghost = match channel.ghosts.iter().position(|g| g.client == client) {
            Some(pos) => {
                let ghost = channel.ghosts.swap_remove(pos);
                self.wheel.remove(ghost.timer);
                true
            }
            None => false,
        };
        let previous = channel
            .members
            .iter()
            .find(|m| m.client == client)
            .map(|m| m.conn);
        if let Some(old) = previous {
            self.counters.takeovers += 1;
            log::debug!("{conn}: takes over client {client} on channel {channel_id} from {old}");
            if let Some(Err(e)) = self.conns.get_mut(old).map(|c| c.replace()) {
                log::debug!("{old}: {e}");
                debug_assert!(false, "{old}: {e}");
            }
            self.fail_connection(
                old,
                ErrorCode::Replaced,
                &format!("client {client} connected again on channel {channel_id}"),
            );
        }
        // Entered again: a takeover of the channel's only member has just emptied and dropped it.
        let channel = self.channels.entry(channel_id).or_default();
        let peers = channel.visible_peers_except(conn);
        channel.members.push(Member {
            conn,
            client,
            secret,
        });
        match self.conns.get_mut(conn).map(|c| c.open(channel_id, client)) {
            Some(Ok(Some(timer))) => {
                self.wheel.remove(timer);
                self.left_awaiting_hello();
            }
            Some(Ok(None)) => self.left_awaiting_hello(),
            None => {}
            Some(Err(e)) => {
                log::debug!("{conn}: {e}");
                debug_assert!(false, "{conn}: {e}");
            }
        }
        if let Some(c) = self.conns.get(conn) {
            log::debug!("{}: handshake done ({} peers)", c.describe(), peers.len());
        }
        let welcome = WelcomeBody {
            max_payload: self.config.max_payload,
            default_timeout_ms: duration_ms(self.config.default_timeout),
            max_timeout_ms: duration_ms(self.config.max_timeout),
            heartbeat_ms: duration_ms(self.config.heartbeat_interval),
            peers,
        };
        // Every frame the broker originates is complete in itself: FINAL (PROTOCOL §13.3).
        let header = Header {
            client_id: client,
            channel_id,
            request_id: RequestId::from_bytes(secret.to_bytes()),
            is_final: true,
            ..Header::new(FrameType::Welcome)
        };
        self.send(conn, &header, &welcome.encode(), None);
        if !returning_ghost && previous.is_none() {
            self.announce(conn, channel_id, FrameType::PeerJoined, client);
        }
    }

    /// The resume secret of `client` on `channel_id` while it is present (a member or a ghost).
    fn present_secret(&self, channel_id: ChannelId, client: ClientId) -> Option<ResumeSecret> {
        let channel = self.channels.get(&channel_id)?;
        let member = channel.members.iter().find(|m| m.client == client);
        let ghost = || channel.ghosts.iter().find(|g| g.client == client);
        member
            .map(|m| m.secret)
            .or_else(|| ghost().map(|g| g.secret))
    }

    /// When a HELLO of `client` for `channel_id` would go over `max_channels` or
    /// `max_peers_per_channel`, the text of the `LimitExceeded` refusing it.
    fn hello_limit_reached(&self, channel_id: ChannelId, client: ClientId) -> Option<String> {
        let Some(channel) = self.channels.get(&channel_id) else {
            let max = self.config.max_channels;
            return (self.channels.len() >= max)
                .then(|| format!("the broker already has {max} channels"));
        };
        // A takeover or a returning ghost takes an existing peer's place.
        let known = channel.members.iter().any(|m| m.client == client)
            || channel.ghosts.iter().any(|g| g.client == client);
        let max = self.config.max_peers_per_channel;
        let peers = channel.members.len() + channel.ghosts.len();
        (!known && peers >= max).then(|| format!("channel {channel_id} already has {max} peers"))
    }

    /// Arms the handshake deadline of a new connection (awaiting its hello).
    pub(super) fn arm_handshake_timeout(&mut self, conn: ConnId, now: Instant) {
        let timeout = self.config.handshake_timeout;
        if timeout.is_zero() {
            return;
        }
        let deadline = self.deadline_tick(now, timeout);
        let timer = insert_timer(&mut self.wheel, deadline, TimerTarget::Handshake(conn));
        if let Some(Err(e)) = self
            .conns
            .get_mut(conn)
            .map(|c| c.arm_handshake_deadline(timer))
        {
            // A new connection awaits its hello: cannot happen; the timer must not leak.
            log::debug!("{conn}: {e}");
            debug_assert!(false, "{conn}: {e}");
            self.wheel.remove(timer);
        }
    }

    /// A connection's handshake deadline passed: close it if it is still awaiting its hello.
    pub(super) fn expire_handshake(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.handshake_deadline_passed() {
            return;
        }
        let timeout_ms = duration_ms(self.config.handshake_timeout);
        self.counters.handshake_failures += 1;
        self.fail_connection(
            conn,
            ErrorCode::HandshakeRequired,
            &format!("no hello within {timeout_ms} ms of connecting"),
        );
    }

    /// PEERS: the current peer list of the caller's channel.
    pub(super) fn recv_peers(&mut self, conn: ConnId, channel_id: ChannelId) {
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        let peers = channel.visible_peers_except(conn);
        let header = Header {
            channel_id,
            is_final: true,
            ..Header::new(FrameType::Peers)
        };
        self.send(conn, &header, &encode_peers(&peers), None);
    }

    /// Sends PEER_JOINED / PEER_LEFT about `client` to every member but `conn`.
    fn announce(&mut self, conn: ConnId, channel_id: ChannelId, kind: FrameType, client: ClientId) {
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        let others: Vec<ConnId> = channel.peers_except(conn).map(|m| m.conn).collect();
        let header = Header {
            client_id: client,
            channel_id,
            is_final: true,
            ..Header::new(kind)
        };
        for other in others {
            // Presence obeys the watermark (see `overflow.rs`).
            if !self.presence_overflows(other) {
                self.send(other, &header, &Bytes::new(), None);
            }
        }
    }

    /// Removes a member: silently when it was replaced, as a ghost during the grace period, or
    /// with PEER_LEFT at once.
    pub(super) fn leave_channel(&mut self, conn: ConnId, channel_id: ChannelId, client: ClientId) {
        let replaced = self.conns.get(conn).is_some_and(|c| c.is_replaced());
        if let Some(c) = self.conns.get_mut(conn) {
            c.leave_ready_queue();
        }
        let grace = self.config.presence_grace;
        let deadline = self.deadline_tick(self.now, grace);
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let secret = match channel.members.iter().position(|m| m.conn == conn) {
            Some(pos) => channel.members.remove(pos).secret,
            None => ResumeSecret::random(),
        };
        channel.ready.retain(|c| *c != conn);
        if replaced {
            // Its successor is already (or about to be) a member under the same id.
        } else if !grace.is_zero() && !self.shutting_down {
            let target = TimerTarget::Ghost(channel_id, client);
            let timer = insert_timer(&mut self.wheel, deadline, target);
            channel.ghosts.push(Ghost {
                client,
                timer,
                secret,
            });
            if channel.members.is_empty() {
                self.note_ghost_only(channel_id);
            }
        } else {
            self.announce(conn, channel_id, FrameType::PeerLeft, client);
        }
        self.drop_channel_if_unused(channel_id);
    }

    /// A ghost's grace period ran out: the peer really left.
    pub(super) fn expire_ghost(&mut self, channel_id: ChannelId, client: ClientId) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let Some(pos) = channel.ghosts.iter().position(|g| g.client == client) else {
            return;
        };
        channel.ghosts.swap_remove(pos);
        // Nobody is excluded: the ghost has no connection of its own.
        let nobody = ConnId {
            slot: u32::MAX,
            generation: 0,
        };
        self.announce(nobody, channel_id, FrameType::PeerLeft, client);
        self.drop_channel_if_unused(channel_id);
    }

    fn drop_channel_if_unused(&mut self, channel_id: ChannelId) {
        if self
            .channels
            .get(&channel_id)
            .is_some_and(|c| c.is_unused())
        {
            // INVARIANT: waiting requests belong to members, and a leaving member's requests
            // were ended before it left.
            debug_assert!(self
                .channels
                .get(&channel_id)
                .is_some_and(|c| c.live_waiting == 0));
            self.channels.remove(&channel_id);
        }
    }

    /// Keys of the ghosts' timers, for the invariant check.
    pub(super) fn ghost_timers(&self) -> usize {
        self.channels.values().map(|c| c.ghosts.len()).sum()
    }
}
