//! Issue 10, item 5, over real sockets: senders stream requests into channels with no receiver
//! (a 1 h timeout), get paused by their held-bytes allowance with more of their stream unread,
//! and exit — half with a plain close (a FIN, which their kernel can only send after the bytes
//! the broker is not reading: invisible), half with an RST. Every departure is seen and its held
//! bytes are freed promptly, not at the requests' timeout: the RST at once, the FIN through the
//! heartbeat's probe of a paused connection (the probe reaches a closed socket and draws an RST).

use std::io::Write;

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{Flags, FrameType, Header};
use switchyard_testkit::{
    broker::{config, start_with},
    gauges::{wait_for, wait_idle},
    raw::RawPeer,
    sockets,
};

const SENDERS: usize = 8;
const FRAME: usize = 64 << 10;
/// At most 64 MiB per sender: far more than the broker holds (256 KiB) plus what the kernel's
/// socket buffers take, so the stream stops on a write timeout.
const MAX_FRAMES: u32 = 1024;

#[test]
fn held_bytes_of_departed_senders_are_freed_when_their_departure_is_seen() {
    let mut config = config();
    config.router.max_payload = FRAME as u32;
    config.router.max_held_bytes = 256 << 10;
    // The probe of a paused connection goes out every interval.
    config.router.heartbeat_interval = std::time::Duration::from_millis(200);
    let handle = start_with(config);
    let addr = handle.local_addr();
    // One channel each: nothing is sent to a sender but its WELCOME, so a plain close is a FIN.
    let mut peers: Vec<RawPeer> = (0..SENDERS)
        .map(|_| {
            let mut peer = RawPeer::named(addr, "sender");
            peer.hello(ChannelId::random(), ClientId::random());
            peer
        })
        .collect();
    // Each sender streams one request until the broker stops reading it and the kernel's
    // buffers are full (a write times out), then exits at once.
    let threads: Vec<_> = peers
        .drain(..)
        .enumerate()
        .map(|(n, peer)| {
            std::thread::spawn(move || {
                let mut stream = peer.try_clone_stream();
                stream
                    .set_write_timeout(Some(std::time::Duration::from_millis(300)))
                    .unwrap();
                let id = RequestId::random();
                let body = vec![9u8; FRAME];
                for seq in 0..MAX_FRAMES {
                    let kind = if seq == 0 {
                        FrameType::Start
                    } else {
                        FrameType::Chunk
                    };
                    let header = Header {
                        flags: Flags::REQUEST,
                        request_id: id,
                        sequence: seq,
                        timeout_ms: if seq == 0 { 3_600_000 } else { 0 },
                        payload_len: FRAME as u32,
                        ..peer.header(kind)
                    };
                    if stream.write_all(&header.encode()).is_err()
                        || stream.write_all(&body).is_err()
                    {
                        break;
                    }
                }
                if n % 2 == 1 {
                    sockets::reset_on_close(peer.stream());
                }
                // The process exits: every descriptor of the socket closes.
                drop(stream);
                drop(peer);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    wait_for(&handle, "every sender gone and its held bytes freed", |s| {
        s.sockets == 0 && s.router.pending_requests == 0 && s.router.buffered_bytes == 0
    });
    wait_idle(&handle);
}
