//! `loadgen clients`: the Rust client libraries, blocking and async, on the same broker and the
//! same two scenarios, so PERF.md can put them side by side.
//!
//! Unlike the other scenarios, which speak the wire protocol from one mio loop to measure the
//! broker, this one measures what an application pays for the libraries: their threads, locks,
//! channels and (async) the driver task.
//! - **sequential**: one sender, one echo receiver, one request at a time: p50/p90/p99 round
//!   trip in µs.
//! - **pipelined**: `--in-flight` requests outstanding at any time on ONE sender connection,
//!   one echo receiver with a window of as many: requests/s, p50/p99.
//!
//! The blocking client runs one thread per request in flight (its model: share the `Client`
//! between threads); the async client runs as many tasks on a current-thread runtime (one core,
//! like the load generator's own loop). The receivers run the same way as their senders.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use switchyard_client::{AsyncClient, ChannelId, Client, Error};

use crate::net::clock;

/// Flags of `loadgen clients`.
#[derive(Args, Debug)]
pub(crate) struct ClientsArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Body size of requests and responses in bytes.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// sequential: measured requests (a tenth more warm up first).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// pipelined: requests in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: u32,
    /// pipelined: measured seconds (a quarter more warm up first).
    #[arg(long, default_value_t = 3.0)]
    duration_secs: f64,
}

/// Every request's timeout: far above any round trip, only reached if the broker hangs.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One measured figure set.
struct Figures {
    client: &'static str,
    scenario: &'static str,
    requests: u64,
    seconds: f64,
    histogram: Histogram<u64>,
}

impl Figures {
    fn print(&self) {
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1_000.0;
        println!(
            "{:<9} {:<10} {:>10.0} {:>9.1} {:>9.1} {:>9.1}",
            self.client,
            self.scenario,
            self.requests as f64 / self.seconds,
            us(0.50),
            us(0.90),
            us(0.99),
        );
        println!(
            "{{\"tool\":\"loadgen\",\"scenario\":\"clients-{}\",\"client\":\"{}\",\"requests_per_s\":{:.0},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1}}}",
            self.scenario,
            self.client,
            self.requests as f64 / self.seconds,
            us(0.50),
            us(0.90),
            us(0.99)
        );
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant digits: nanoseconds, so sub-µs differences stay visible.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn record(histogram: &mut Histogram<u64>, took: Duration) {
    // Saturate: a value above the top bound is a hang, already visible as the maximum.
    let _ = histogram.record(took.as_nanos().min(60_000_000_000) as u64);
}

/// Runs both clients through both scenarios and prints the table (and one JSON line each).
pub(crate) fn run(args: &ClientsArgs) -> Result<(), Error> {
    println!(
        "{:<9} {:<10} {:>10} {:>9} {:>9} {:>9}",
        "client", "scenario", "req/s", "p50_us", "p90_us", "p99_us"
    );
    blocking_sequential(args)?.print();
    async_sequential(args)?.print();
    blocking_pipelined(args)?.print();
    async_pipelined(args)?.print();
    Ok(())
}

/// An echo receiver on its own thread with a window of `window`, one thread per request it
/// may hold; it stops when `stop` is set and its client is closed.
fn blocking_echo(
    addr: SocketAddr,
    channel: ChannelId,
    window: u32,
    stop: Arc<AtomicBool>,
) -> Result<Arc<Client>, Error> {
    let receiver = Arc::new(Client::connect(addr, channel)?);
    receiver.set_receive_window(window)?;
    receiver.ping(TIMEOUT)?; // the window is in force before the first request
    for _ in 0..window {
        let client = Arc::clone(&receiver);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match client.next_request(Some(Duration::from_millis(100))) {
                    Ok(mut request) => {
                        let Ok(body) = request.read_body() else {
                            continue;
                        };
                        let _ = request.respond(&body);
                    }
                    Err(Error::WaitElapsed) => {}
                    Err(_) => return,
                }
            }
        });
    }
    Ok(receiver)
}

fn blocking_sequential(args: &ClientsArgs) -> Result<Figures, Error> {
    let channel = ChannelId::random();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = blocking_echo(args.addr, channel, 1, Arc::clone(&stop))?;
    let sender = Client::connect(args.addr, channel)?;
    let body = vec![7u8; args.body_size];
    let mut histogram = histogram();
    for _ in 0..args.requests / 10 {
        sender.request(&body, TIMEOUT)?;
    }
    let started = clock();
    for _ in 0..args.requests {
        let sent = clock();
        sender.request(&body, TIMEOUT)?;
        record(&mut histogram, sent.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop((sender, receiver));
    Ok(Figures {
        client: "blocking",
        scenario: "sequential",
        requests: args.requests,
        seconds,
        histogram,
    })
}

fn blocking_pipelined(args: &ClientsArgs) -> Result<Figures, Error> {
    let channel = ChannelId::random();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = blocking_echo(args.addr, channel, args.in_flight, Arc::clone(&stop))?;
    let sender = Client::connect(args.addr, channel)?;
    let warmup = Duration::from_secs_f64(args.duration_secs / 4.0);
    let measure = Duration::from_secs_f64(args.duration_secs);
    let begin = clock();
    let (from, to) = (begin + warmup, begin + warmup + measure);
    let results = thread::scope(|s| {
        let workers: Vec<_> = (0..args.in_flight)
            .map(|_| {
                let sender = &sender;
                s.spawn(move || -> Result<(u64, Histogram<u64>), Error> {
                    let body = vec![7u8; args.body_size];
                    let mut histogram = histogram();
                    let mut done = 0;
                    loop {
                        let sent = clock();
                        if sent >= to {
                            return Ok((done, histogram));
                        }
                        sender.request(&body, TIMEOUT)?;
                        if sent >= from {
                            done += 1;
                            record(&mut histogram, sent.elapsed());
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("no panic"))
            .collect::<Vec<_>>()
    });
    stop.store(true, Ordering::Relaxed);
    drop((sender, receiver));
    let mut total = histogram();
    let mut requests = 0;
    for result in results {
        let (done, h) = result?;
        requests += done;
        total.add(h).expect("same bounds");
    }
    Ok(Figures {
        client: "blocking",
        scenario: "pipelined",
        requests,
        seconds: measure.as_secs_f64(),
        histogram: total,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Async echo workers: `window` tasks on one connection.
async fn async_echo(
    addr: SocketAddr,
    channel: ChannelId,
    window: u32,
) -> Result<AsyncClient, Error> {
    let receiver = AsyncClient::connect(addr, channel).await?;
    receiver.set_receive_window(window)?;
    receiver.ping(TIMEOUT).await?;
    for _ in 0..window {
        let client = receiver.clone();
        tokio::spawn(async move {
            while let Ok(mut request) = client.next_request(None).await {
                let Ok(body) = request.body().await else {
                    continue;
                };
                if request.respond(body).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(receiver)
}

fn async_sequential(args: &ClientsArgs) -> Result<Figures, Error> {
    runtime().block_on(async {
        let channel = ChannelId::random();
        let receiver = async_echo(args.addr, channel, 1).await?;
        let sender = AsyncClient::connect(args.addr, channel).await?;
        let body = bytes::Bytes::from(vec![7u8; args.body_size]);
        let mut histogram = histogram();
        for _ in 0..args.requests / 10 {
            sender.request(body.clone(), TIMEOUT).await?;
        }
        let started = clock();
        for _ in 0..args.requests {
            let sent = clock();
            sender.request(body.clone(), TIMEOUT).await?;
            record(&mut histogram, sent.elapsed());
        }
        let seconds = started.elapsed().as_secs_f64();
        sender.close();
        receiver.close();
        Ok(Figures {
            client: "async",
            scenario: "sequential",
            requests: args.requests,
            seconds,
            histogram,
        })
    })
}

fn async_pipelined(args: &ClientsArgs) -> Result<Figures, Error> {
    runtime().block_on(async {
        let channel = ChannelId::random();
        let receiver = async_echo(args.addr, channel, args.in_flight).await?;
        let sender = AsyncClient::connect(args.addr, channel).await?;
        let warmup = Duration::from_secs_f64(args.duration_secs / 4.0);
        let measure = Duration::from_secs_f64(args.duration_secs);
        let begin = clock();
        let (from, to) = (begin + warmup, begin + warmup + measure);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.in_flight {
            let sender = sender.clone();
            let body = bytes::Bytes::from(vec![7u8; args.body_size]);
            tasks.spawn(async move {
                let mut histogram = histogram();
                let mut done = 0u64;
                loop {
                    let sent = clock();
                    if sent >= to {
                        return Ok::<_, Error>((done, histogram));
                    }
                    sender.request(body.clone(), TIMEOUT).await?;
                    if sent >= from {
                        done += 1;
                        record(&mut histogram, sent.elapsed());
                    }
                }
            });
        }
        let mut total = histogram();
        let mut requests = 0;
        while let Some(result) = tasks.join_next().await {
            let (done, h) = result.expect("no panic")?;
            requests += done;
            total.add(h).expect("same bounds");
        }
        sender.close();
        receiver.close();
        Ok(Figures {
            client: "async",
            scenario: "pipelined",
            requests,
            seconds: measure.as_secs_f64(),
            histogram: total,
        })
    })
}
