//! The NATS back-end: the NATS client text protocol, spoken directly over TCP.
//!
//! - Setup: `CONNECT {"verbose":false,"pedantic":false}` (sent at once; the server's INFO is
//!   read and ignored), then per role one `SUB`, then `PING`: its `PONG` is the barrier.
//!   Subjects carry the run nonce and the scenario group, so runs never see each other.
//!   - receiver: `SUB rr.<nonce>.<group> workers 1` — every receiver in one queue group, so each
//!     request goes to one of them (NATS's load balancing);
//!   - requester: `SUB _INBOX.<nonce>.<conn>.* 2` — one wildcard inbox per connection; each
//!     request's reply subject is `_INBOX.<nonce>.<conn>.<tag>`, unique among those in flight;
//!   - broadcast peer: `SUB fan.<nonce>.<group> 3` (plain subscription: every peer gets every
//!     message);
//!   - idle: `SUB idle.<nonce>.<conn> 4`, the counterpart of joining a switchyard channel.
//! - Request: `PUB rr.<nonce>.<group> _INBOX.<nonce>.<conn>.<tag> <n>`; the receiver answers
//!   `PUB <reply-to> <n>`; the response is the `MSG` on sid 2, its tag the subject's last token.
//! - Broadcast: `PUB fan.<nonce>.<group> <n>`, with no ack: NATS core has none
//!   ([`Protocol::ACKS_BROADCASTS`] is false; the fanout scenario windows on deliveries instead).
//! - The server's `PING` is answered with `PONG`; `-ERR` aborts the scenario (it is followed by
//!   the server closing the connection).

use crate::net::{Inbound, Protocol, Role, WireError};

/// Subscription ids, one per role; an incoming `MSG` is classified by its sid.
const SID_REQUESTS: &[u8] = b"1";
const SID_INBOX: &[u8] = b"2";
const SID_BROADCASTS: &[u8] = b"3";
const SID_IDLE: &[u8] = b"4";

/// The NATS text protocol; `nonce` keeps this run's subjects apart from any other run's.
#[derive(Clone)]
pub(crate) struct Nats {
    nonce: u64,
}

impl Nats {
    pub(crate) fn new(nonce: u64) -> Nats {
        Nats { nonce }
    }
}

/// Per-connection subjects, formatted once at setup.
pub(crate) struct Session {
    requests: Vec<u8>,
    broadcasts: Vec<u8>,
    /// `_INBOX.<nonce>.<conn>.`: a reply subject is this plus the tag.
    inbox_prefix: Vec<u8>,
    idle: Vec<u8>,
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn subject(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn put_sub(out: &mut Vec<u8>, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    if let Some(queue) = queue {
        out.push(b' ');
        out.extend_from_slice(queue);
    }
    out.push(b' ');
    out.extend_from_slice(sid);
    out.extend_from_slice(b"\r\n");
}

/// `PUB <subject> [<reply-to prefix><tag>] <n>\r\n<body>\r\n`.
fn put_pub(out: &mut Vec<u8>, subject: &[u8], reply: Option<(&[u8], Option<u32>)>, body: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    if let Some((reply_to, tag)) = reply {
        out.push(b' ');
        out.extend_from_slice(reply_to);
        if let Some(tag) = tag {
            push_decimal(out, u64::from(tag));
        }
    }
    out.push(b' ');
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Longest control line we wait for before calling the stream garbage (NATS's own limit is
/// 4 KiB; INFO lines can be longer, so allow more).
const MAX_CONTROL_LINE: usize = 64 * 1024;

impl Protocol for Nats {
    type Session = Session;
    const ACKS_BROADCASTS: bool = false;

    fn new_session(&self, conn: usize, group: u32) -> Session {
        let nonce = format!("{:016x}", self.nonce);
        let nonce = nonce.as_bytes();
        let group = group.to_string();
        let conn = conn.to_string();
        Session {
            requests: subject(&[b"rr.", nonce, b".", group.as_bytes()]),
            broadcasts: subject(&[b"fan.", nonce, b".", group.as_bytes()]),
            inbox_prefix: subject(&[b"_INBOX.", nonce, b".", conn.as_bytes(), b"."]),
            idle: subject(&[b"idle.", nonce, b".", conn.as_bytes()]),
        }
    }

    fn write_setup(&self, session: &mut Session, role: Role, out: &mut Vec<u8>) {
        out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
        match role {
            Role::Requester => {
                let mut inbox = session.inbox_prefix.clone();
                inbox.push(b'*');
                put_sub(out, &inbox, None, SID_INBOX);
            }
            Role::Receiver { .. } => {
                put_sub(out, &session.requests, Some(b"workers"), SID_REQUESTS)
            }
            Role::BroadcastPeer => put_sub(out, &session.broadcasts, None, SID_BROADCASTS),
            Role::Idle => put_sub(out, &session.idle, None, SID_IDLE),
            Role::BroadcastSender => {}
        }
    }

    fn write_ping(&self, _session: &mut Session, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PING\r\n");
    }

    fn write_pong(&self, _session: &mut Session, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PONG\r\n");
    }

    fn write_request(&self, session: &mut Session, tag: u32, body: &[u8], out: &mut Vec<u8>) {
        put_pub(
            out,
            &session.requests,
            Some((&session.inbox_prefix, Some(tag))),
            body,
        );
    }

    fn write_reply(&self, _session: &mut Session, reply_to: &[u8], body: &[u8], out: &mut Vec<u8>) {
        put_pub(out, reply_to, None, body);
    }

    fn write_broadcast(&self, session: &mut Session, _tag: u32, body: &[u8], out: &mut Vec<u8>) {
        put_pub(out, &session.broadcasts, None, body);
    }

    fn write_broadcast_ack(&self, _session: &mut Session, _id: &[u8], _out: &mut Vec<u8>) {}

    fn parse<'a>(
        &self,
        _session: &mut Session,
        buf: &'a [u8],
    ) -> Result<Option<(Inbound<'a>, usize)>, WireError> {
        let Some(line_len) = find_crlf(buf) else {
            if buf.len() > MAX_CONTROL_LINE {
                return Err(WireError("NATS control line too long".into()));
            }
            return Ok(None);
        };
        let line = &buf[..line_len];
        let after_line = line_len + 2;
        let mut args = line.split(|&b| b == b' ').filter(|a| !a.is_empty());
        let op = args.next().unwrap_or_default();
        let message = match op {
            b"MSG" => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let mut fields: [&[u8]; 4] = [&[]; 4];
                let mut count = 0;
                for arg in args {
                    if count == fields.len() {
                        return Err(WireError("MSG with too many arguments".into()));
                    }
                    fields[count] = arg;
                    count += 1;
                }
                let (subject, sid, reply_to, size) = match count {
                    3 => (fields[0], fields[1], None, fields[2]),
                    4 => (fields[0], fields[1], Some(fields[2]), fields[3]),
                    _ => return Err(WireError("malformed MSG line".into())),
                };
                let body_len = parse_decimal(size)
                    .ok_or_else(|| WireError("malformed MSG size".into()))?
                    as usize;
                let total = after_line + body_len + 2;
                if buf.len() < total {
                    return Ok(None);
                }
                let message = match sid {
                    SID_REQUESTS => match reply_to {
                        Some(reply_to) => Inbound::Request { reply_to, body_len },
                        None => Inbound::Ignored,
                    },
                    SID_INBOX => {
                        let tag = subject.rsplit(|&b| b == b'.').next().unwrap_or_default();
                        match parse_decimal(tag).and_then(|t| u32::try_from(t).ok()) {
                            Some(tag) => Inbound::Response { tag },
                            None => Inbound::Ignored,
                        }
                    }
                    SID_BROADCASTS => Inbound::Broadcast { id: &[] },
                    _ => Inbound::Ignored,
                };
                return Ok(Some((message, total)));
            }
            b"PING" => Inbound::ServerPing,
            b"PONG" => Inbound::Pong,
            b"+OK" | b"INFO" => Inbound::Ignored,
            b"-ERR" => {
                let text = String::from_utf8_lossy(line);
                return Err(WireError(format!("NATS server error: {text}")));
            }
            other => {
                let text = String::from_utf8_lossy(other);
                return Err(WireError(format!("unexpected NATS operation {text:?}")));
            }
        };
        Ok(Some((message, after_line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_and_a_request() {
        let nats = Nats::new(1);
        let mut session = nats.new_session(0, 0);
        let buf = b"MSG _INBOX.x.0.17 2 4\r\npong\r\nMSG rr.x.0 1 _INBOX.x.0.3 2\r\nhi\r\n";
        let (first, used) = nats.parse(&mut session, buf).unwrap().unwrap();
        assert!(matches!(first, Inbound::Response { tag: 17 }));
        let (second, used2) = nats.parse(&mut session, &buf[used..]).unwrap().unwrap();
        match second {
            Inbound::Request { reply_to, body_len } => {
                assert_eq!(reply_to, b"_INBOX.x.0.3");
                assert_eq!(body_len, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(used + used2, buf.len());
        assert!(nats
            .parse(&mut session, &buf[..used - 1])
            .unwrap()
            .is_none());
    }

    #[test]
    fn writes_a_request() {
        let nats = Nats::new(0xab);
        let mut session = nats.new_session(7, 2);
        let mut out = Vec::new();
        nats.write_request(&mut session, 31, b"abc", &mut out);
        assert_eq!(
            out,
            b"PUB rr.00000000000000ab.2 _INBOX.00000000000000ab.7.31 3\r\nabc\r\n"
        );
    }
}
