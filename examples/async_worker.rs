//! A pool of async workers serving a channel by name, on the async client (`AsyncClient`).
//!
//! ```text
//! cargo run --release                                   # a broker on 127.0.0.1:7878
//! cargo run --example async_worker -- 127.0.0.1:7878 uppercase
//! ```
//! The broker's address is the first argument, else `SWITCHYARD_URL` (`host:port`), else
//! 127.0.0.1:7878 (the broker's default). The channel name is the second argument (default
//! `uppercase`). Each request's body comes back in upper case; try it with the blocking client
//! or any other client on the same channel name.

use switchyard_client::{AsyncClient, ChannelId, Error};
use tokio::task::JoinSet;

/// Requests served at once: one per worker task, all on one connection.
const WORKERS: u32 = 8;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .or_else(|| std::env::var("SWITCHYARD_URL").ok())
        .unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let name = args.next().unwrap_or_else(|| "uppercase".to_owned());
    let channel = ChannelId::from_name(&name).expect("1 to 255 bytes, no control characters");

    let client = AsyncClient::connect(addr.as_str(), channel).await?;
    client.set_receive_window(WORKERS)?; // the broker assigns up to WORKERS requests at once
    println!("{WORKERS} workers serving channel {name:?} ({channel}) at {addr}");

    let mut workers: JoinSet<Result<(), Error>> = JoinSet::new();
    for _ in 0..WORKERS {
        let client = client.clone(); // a cheap handle to the same connection
        workers.spawn(async move {
            loop {
                let mut request = client.next_request(None).await?; // waits for an assignment
                let body = request.body().await?;
                request.respond(body.to_ascii_uppercase()).await?;
            }
        });
    }
    // A worker only stops on an error that ends the client (reconnects happen underneath).
    workers
        .join_next()
        .await
        .expect("a worker")
        .expect("no panic")
}
