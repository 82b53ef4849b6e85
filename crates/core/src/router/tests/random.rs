//! Seeded random scenarios: many peers on two channels doing everything at once, with the
//! invariants checked after every step (by the harness), routing checked against a model, and
//! every count back to zero once everyone has left.

use hashbrown::HashMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::harness::*;
use crate::ids::{ChannelId, ConnId, RequestId};
use crate::protocol::{Flags, Frame, FrameType};

#[derive(Default)]
struct Model {
    /// Channel of each live connection.
    channel: HashMap<ConnId, ChannelId>,
    /// Requests a connection sent: id -> (next sequence, finished).
    outgoing: HashMap<ConnId, Vec<(RequestId, u32, bool)>>,
    /// Requests a connection received: id -> next response sequence.
    incoming: HashMap<ConnId, Vec<(RequestId, u32)>>,
    /// Broadcasts whose final frame a connection received and must ack.
    to_ack: HashMap<ConnId, Vec<RequestId>>,
    /// Who received the start of each request (at most once, never twice).
    assigned_to: HashMap<RequestId, ConnId>,
    /// Who sent each request.
    sender_of: HashMap<RequestId, ConnId>,
}

fn check_delivery(model: &mut Model, to: ConnId, frame: &Frame) {
    let header = &frame.header;
    if header.frame_type != FrameType::Welcome && header.frame_type != FrameType::Pong {
        assert_eq!(
            Some(&header.channel_id),
            model.channel.get(&to),
            "frame crossed channels"
        );
    }
    let id = header.request_id;
    let is_stream = header.frame_type.is_stream();
    if is_stream && header.flags == Flags::REQUEST {
        if header.frame_type == FrameType::Start {
            assert!(
                model.assigned_to.insert(id, to).is_none(),
                "request {id} delivered twice"
            );
            model.incoming.entry(to).or_default().push((id, 0));
        } else {
            assert_eq!(
                model.assigned_to.get(&id),
                Some(&to),
                "frame of {id} to a non-assignee"
            );
        }
    }
    if is_stream && header.flags == Flags::RESPONSE {
        assert_eq!(
            model.sender_of.get(&id),
            Some(&to),
            "response of {id} to a non-sender"
        );
    }
    if is_stream && header.flags.contains(Flags::BROADCAST) && header.is_final {
        model.to_ack.entry(to).or_default().push(id);
    }
    let ends_incoming = header.frame_type == FrameType::Cancel && header.flags == Flags::REQUEST;
    if ends_incoming {
        if let Some(list) = model.incoming.get_mut(&to) {
            list.retain(|(r, _)| *r != id);
        }
    }
    let ends_outgoing = header.frame_type == FrameType::Error
        || (header.frame_type == FrameType::Cancel && header.flags == Flags::RESPONSE)
        || (header.flags == Flags::RESPONSE && header.is_final);
    if ends_outgoing {
        if let Some(list) = model.outgoing.get_mut(&to) {
            list.retain(|(r, _, _)| *r != id);
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Heartbeats on and short, so silent peers are pinged and closed in the middle of everything.
    let mut h = Harness::with_config(crate::router::RouterConfig {
        heartbeat_interval: std::time::Duration::from_millis(300),
        heartbeat_misses: 2,
        ..quiet()
    });
    let mut model = Model::default();
    let mut conns: Vec<ConnId> = Vec::new();
    let mut next_req: u32 = 1;
    let mut fresh_id = |rng: &mut StdRng| {
        next_req += 1;
        let mut bytes = rng.gen::<[u8; 16]>();
        bytes[..4].copy_from_slice(&next_req.to_be_bytes());
        RequestId::from_bytes(bytes)
    };
    for _ in 0..steps {
        let action = rng.gen_range(0..100);
        let pick = |rng: &mut StdRng, conns: &[ConnId]| conns[rng.gen_range(0..conns.len())];
        match action {
            0..=9 => {
                let ch = channel(rng.gen_range(1..=2));
                let conn = h.connect();
                model.channel.insert(conn, ch);
                h.send(
                    conn,
                    crate::protocol::Header {
                        channel_id: ch,
                        ..crate::protocol::Header::new(FrameType::Hello)
                    },
                    b"",
                );
                // The harness needs to know the channel for its frame builders.
                let _ = h.take(conn);
                h.set_channel(conn, ch);
                conns.push(conn);
            }
            10..=14 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                h.disconnect(conn);
                conns.retain(|c| *c != conn);
                model.channel.remove(&conn);
                model.outgoing.remove(&conn);
                model.incoming.remove(&conn);
                model.to_ack.remove(&conn);
            }
            15..=22 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                h.receive(conn, rng.gen_range(0..4));
            }
            23..=40 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                let id = fresh_id(&mut rng);
                let broadcast = rng.gen_bool(0.15);
                let is_final = rng.gen_bool(0.5);
                let flags = if broadcast {
                    Flags::REQUEST | Flags::BROADCAST
                } else {
                    Flags::REQUEST
                };
                let header = crate::protocol::Header {
                    flags,
                    channel_id: model.channel[&conn],
                    request_id: id,
                    timeout_ms: rng.gen_range(0..400),
                    is_final,
                    ..crate::protocol::Header::new(FrameType::Start)
                };
                model.sender_of.insert(id, conn);
                if !broadcast {
                    model
                        .outgoing
                        .entry(conn)
                        .or_default()
                        .push((id, 1, is_final));
                }
                h.send(conn, header, &vec![7; rng.gen_range(0..100)]);
            }
            41..=55 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                let Some(list) = model.outgoing.get_mut(&conn) else {
                    continue;
                };
                let Some(entry) = list.iter_mut().find(|(_, _, done)| !done) else {
                    continue;
                };
                let end = rng.gen_bool(0.5);
                let (id, seq) = (entry.0, entry.1);
                entry.1 += 1;
                entry.2 = end;
                let kind = if end {
                    FrameType::End
                } else {
                    FrameType::Chunk
                };
                h.stream(conn, kind, Flags::REQUEST, id, seq, end, b"chunk");
            }
            56..=75 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                let Some(list) = model.incoming.get_mut(&conn) else {
                    continue;
                };
                if list.is_empty() {
                    continue;
                }
                let i = rng.gen_range(0..list.len());
                let (id, seq) = list[i];
                let end = rng.gen_bool(0.6);
                let kind = match (seq, end) {
                    (0, _) => FrameType::Start,
                    (_, true) => FrameType::End,
                    (_, false) => FrameType::Chunk,
                };
                if end {
                    list.remove(i);
                } else {
                    list[i].1 += 1;
                }
                h.stream(conn, kind, Flags::RESPONSE, id, seq, end, b"answer");
            }
            76..=83 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                if let Some(id) = model.to_ack.get_mut(&conn).and_then(|l| l.pop()) {
                    h.control(conn, FrameType::Ack, Flags::BROADCAST, id);
                }
            }
            84..=87 if !conns.is_empty() => {
                let conn = pick(&mut rng, &conns);
                let cancel_outgoing = rng.gen_bool(0.5);
                if cancel_outgoing {
                    if let Some(list) = model.outgoing.get_mut(&conn) {
                        if let Some((id, _, _)) = list.pop() {
                            h.control(conn, FrameType::Cancel, Flags::REQUEST, id);
                        }
                    }
                } else if let Some(list) = model.incoming.get_mut(&conn) {
                    if let Some((id, _)) = list.pop() {
                        h.control(conn, FrameType::Cancel, Flags::RESPONSE, id);
                    }
                }
            }
            88..=90 if !conns.is_empty() => {
                // Noise: a frame for a request nobody has.
                let conn = pick(&mut rng, &conns);
                let id = fresh_id(&mut rng);
                h.stream(conn, FrameType::Chunk, Flags::REQUEST, id, 1, false, b"?");
            }
            _ => h.advance(rng.gen_range(0..150)),
        }
        for conn in &conns {
            for frame in h.take(*conn) {
                check_delivery(&mut model, *conn, &frame);
            }
        }
    }
    for conn in conns {
        h.disconnect(conn);
    }
    h.advance(10_000);
    h.assert_empty();
}

#[test]
fn random_scenarios_keep_invariants_and_leave_nothing_behind() {
    for seed in 0..40 {
        run(seed, 1_500);
    }
}
