//! Embedding the broker in a program's own mio event loop.
//!
//! The host owns the `Poll`. It registers the broker's sockets under a token range of its
//! choosing, keeps its own sources (here: an admin listener that answers every connection with the
//! broker's state counts as one line of text) on other tokens, and sleeps no longer than the
//! broker's next deadline.
//!
//! ```sh
//! cargo run --example embed                 # broker on 127.0.0.1:7878, admin on 127.0.0.1:7880
//! nc 127.0.0.1 7880                          # prints the broker's stats
//! ```

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::io::Write;
use std::time::Instant;

use switchyard::server::{Server, ServerConfig};

/// The host's own token.
const ADMIN: Token = Token(0);
/// The broker gets every token from here on (`Server::TOKEN_SPAN` of them).
const BROKER_BASE: Token = Token(1_000);

fn main() -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);

    let mut broker = Server::bind(ServerConfig::default())?;
    broker.register(poll.registry(), BROKER_BASE)?;

    let mut admin = TcpListener::bind("127.0.0.1:7880".parse().expect("valid address"))?;
    poll.registry()
        .register(&mut admin, ADMIN, Interest::READABLE)?;
    println!("broker on {}, admin on 127.0.0.1:7880", broker.local_addr());

    loop {
        // Sleep no longer than the broker's next deadline (it may be "now" if work is pending).
        #[allow(clippy::disallowed_methods)] // the host reads the clock, once per wakeup
        let timeout = broker
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()));
        poll.poll(&mut events, timeout)?;
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        for event in events.iter() {
            if broker.owns(event.token()) {
                broker.handle_event(event, now);
            } else if event.token() == ADMIN {
                while let Ok((mut stream, _)) = admin.accept() {
                    // A best-effort one-line answer; a slow admin client just misses it.
                    let _ = writeln!(stream, "{:?}", broker.stats());
                }
            }
        }
        // After every batch: the broker's timers, re-queued reads, flushes and closes.
        broker.handle_timeout(now);
    }
}
