//! The README's example: a receiver and a sender on one channel (start the broker first:
//! `cargo run --release`, then `cargo run --example hello`).

use std::time::Duration;
use switchyard::client::{Client, Error};
use switchyard::ids::ChannelId;

fn main() -> Result<(), Error> {
    let channel = ChannelId::from_name("greetings").expect("a valid name"); // or a UUID
    let receiver = Client::connect("127.0.0.1:7878", channel)?;
    receiver.set_receive_window(4)?; // ready to hold up to 4 requests at once
    let serving = std::thread::spawn(move || -> Result<(), Error> {
        let mut request = receiver.next_request(None)?; // blocks until one is assigned
        let name = request.read_body()?;
        request.respond(&[b"hello, ".as_slice(), &name].concat())
    });

    let sender = Client::connect("127.0.0.1:7878", channel)?;
    let reply = sender.request(b"world", Duration::from_secs(5))?;
    println!("{}", String::from_utf8_lossy(&reply)); // hello, world
    serving.join().expect("receiver thread")?;
    Ok(())
}
