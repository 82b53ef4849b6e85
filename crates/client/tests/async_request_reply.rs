//! The async client's request/reply over real sockets: small and multi-MiB bodies streamed both
//! ways byte-exact, many concurrent requests on one connection, 8 workers × 8 senders,
//! timeouts, and cancellation by drop.
#![cfg(feature = "tokio")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use switchyard_client::{ChannelId, Error, RequestOptions};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_request_gets_its_reply() {
    let broker = broker();
    let channel = ChannelId::random();
    let worker = connect(&broker, channel).await;
    let sender = connect(&broker, channel).await;
    set_window(&worker, 1).await;
    let serving = tokio::spawn(async move {
        let mut request = worker.next_request(WAIT).await.expect("a request");
        let body = request.body().await.expect("its body");
        let reversed: Vec<u8> = body.iter().rev().copied().collect();
        request.respond(reversed).await.expect("respond");
        worker
    });
    let reply = sender.request("hello", WAIT).await.expect("a reply");
    assert_eq!(&reply[..], b"olleh");
    serving.await.expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mib_bodies_stream_both_ways_byte_exact() {
    let broker = broker();
    let channel = ChannelId::random();
    let worker = connect(&broker, channel).await;
    let sender = connect(&broker, channel).await;
    set_window(&worker, 1).await;
    let request_body = pattern(5 << 20 | 12_345, 1);
    let response_body = pattern(7 << 20 | 999, 2);
    let expected_request = request_body.clone();
    let to_send = response_body.clone();
    let serving = tokio::spawn(async move {
        let mut request = worker.next_request(WAIT).await.expect("a request");
        let mut received = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = request.next_chunk().await.expect("a chunk") {
            received.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks > 1, "a 5 MiB body arrives in several frames");
        assert!(received == expected_request, "request body differs");
        request.respond_with(&to_send[..]).await.expect("respond");
    });
    let options = RequestOptions {
        timeout: Some(WAIT),
        no_wait: false,
    };
    let mut response = sender
        .request_with(&request_body[..], options)
        .await
        .expect("the response starts");
    let mut received = Vec::new();
    while let Some(chunk) = response.next_chunk().await.expect("a chunk") {
        received.extend_from_slice(&chunk);
    }
    assert!(received == response_body, "response body differs");
    serving.await.expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_one_connection() {
    let broker = broker();
    let channel = ChannelId::random();
    let worker = connect(&broker, channel).await;
    let sender = connect(&broker, channel).await;
    set_window(&worker, 32).await;
    const REQUESTS: usize = 300;
    let serving = tokio::spawn(async move {
        let mut answers = JoinSet::new();
        for _ in 0..REQUESTS {
            let mut request = worker.next_request(WAIT).await.expect("a request");
            answers.spawn(async move {
                let body = request.body().await.expect("body");
                request.respond(body).await.expect("respond");
            });
        }
        while let Some(done) = answers.join_next().await {
            done.expect("answer task");
        }
    });
    let mut requests = JoinSet::new();
    for i in 0..REQUESTS {
        let sender = sender.clone();
        requests.spawn(async move {
            let body = Bytes::from(format!("request {i}"));
            let reply = sender.request(body.clone(), WAIT).await.expect("reply");
            assert_eq!(reply, body);
        });
    }
    while let Some(done) = requests.join_next().await {
        done.expect("request task");
    }
    serving.await.expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_serve_eight_senders() {
    let broker = broker();
    let channel = ChannelId::random();
    const WORKERS: usize = 8;
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 40;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let worker = connect(&broker, channel).await;
        set_window(&worker, 2).await;
        workers.push(worker);
    }
    let mut served = JoinSet::new();
    for (n, worker) in workers.iter().enumerate() {
        let worker = worker.clone();
        served.spawn(async move {
            let mut count = 0usize;
            // Serves until the senders are done and the client is closed below.
            while let Ok(mut request) = worker.next_request(None).await {
                let body = request.body().await.expect("body");
                let mut reply = body.to_vec();
                reply.extend_from_slice(format!(" by {n}").as_bytes());
                if request.respond(reply).await.is_ok() {
                    count += 1;
                }
            }
            count
        });
    }
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let sender = connect(&broker, channel).await;
        senders.spawn(async move {
            for i in 0..PER_SENDER {
                let body = format!("{s}/{i}");
                let reply = sender.request(body.clone(), WAIT).await.expect("reply");
                let reply = String::from_utf8(reply.to_vec()).expect("utf-8");
                assert!(reply.starts_with(&format!("{body} by ")), "{reply}");
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("sender task");
    }
    for worker in &workers {
        worker.close();
    }
    let mut total = 0;
    while let Some(count) = served.join_next().await {
        total += count.expect("worker task");
    }
    assert_eq!(total, SENDERS * PER_SENDER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_name_what_ran_out() {
    let broker = broker();
    let channel = ChannelId::random();
    let sender = connect(&broker, channel).await;
    // Nobody serves the channel.
    let result = sender.request("anyone?", Duration::from_millis(50)).await;
    assert!(matches!(result, Err(Error::NoReceiver)), "{result:?}");
    let no_wait = RequestOptions {
        timeout: None,
        no_wait: true,
    };
    let result = sender.request_with(&b"now?"[..], no_wait).await;
    assert!(matches!(result, Err(Error::NoReceiver)), "{result:?}");
    // A local wait with nothing to take.
    let result = sender.next_request(Duration::from_millis(20)).await;
    assert!(matches!(result, Err(Error::WaitElapsed)), "{result:?}");

    // A receiver takes the request and never answers: the broker's TIMEOUT for the sender,
    // CANCEL for the receiver.
    let worker = connect(&broker, channel).await;
    set_window(&worker, 1).await;
    let asking = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.request("slow", Duration::from_millis(200)).await })
    };
    let mut held = worker.next_request(WAIT).await.expect("a request");
    let result = asking.await.expect("sender task");
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    // The CANCEL was queued to the worker before the TIMEOUT to the sender; the worker's own
    // PING is answered after it arrived.
    worker.ping(WAIT).await.expect("barrier");
    let body = held
        .body()
        .await
        .expect("the body arrived before the cancel");
    assert_eq!(&body[..], b"slow");
    let result = held.respond("too late").await;
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_future_cancels_at_the_receiver() {
    let broker = broker();
    let channel = ChannelId::random();
    let worker = connect(&broker, channel).await;
    let sender = connect(&broker, channel).await;
    set_window(&worker, 1).await;
    // A body that starts (two whole frames are in the pipe) and then never ends: the sender's
    // future is dropped mid-stream.
    let max = sender.limits().max_payload as usize;
    let (mut pipe_in, pipe_out) = tokio::io::duplex(4 * max);
    pipe_in
        .write_all(&pattern(2 * max + 10, 3))
        .await
        .expect("fill the pipe");
    let asking = {
        let sender = sender.clone();
        tokio::spawn(async move {
            let options = RequestOptions {
                timeout: Some(WAIT),
                no_wait: false,
            };
            sender.request_with(pipe_out, options).await.map(drop)
        })
    };
    let mut held = worker.next_request(WAIT).await.expect("a request");
    let first = held.next_chunk().await.expect("first frame").expect("data");
    assert_eq!(first.len(), max);
    asking.abort();
    assert!(asking.await.expect_err("aborted").is_cancelled());
    // The CANCEL went out before the sender's PING, and reached the worker before its PONG.
    sender.ping(WAIT).await.expect("sender barrier");
    worker.ping(WAIT).await.expect("worker barrier");
    let mut outcome = Ok(None);
    for _ in 0..3 {
        outcome = held.next_chunk().await;
        if outcome.is_err() {
            break;
        }
    }
    assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
    drop(pipe_in);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_response_cancels_at_the_responder() {
    let broker = broker();
    let channel = ChannelId::random();
    let worker = connect(&broker, channel).await;
    let sender = connect(&broker, channel).await;
    set_window(&worker, 1).await;
    let max = worker.limits().max_payload as usize;
    // The response's first frame goes out; the rest waits on a pipe the test holds open.
    let (mut pipe_in, pipe_out) = tokio::io::duplex(4 * max);
    pipe_in
        .write_all(&pattern(2 * max + 10, 4))
        .await
        .expect("fill the pipe");
    let responding = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let request = worker.next_request(WAIT).await.expect("a request");
            request.respond_with(pipe_out).await
        })
    };
    let options = RequestOptions {
        timeout: Some(WAIT),
        no_wait: false,
    };
    let mut response = sender
        .request_with(&b"start"[..], options)
        .await
        .expect("the response starts");
    let first = response.next_chunk().await.expect("first").expect("data");
    assert_eq!(first.len(), max);
    drop(response);
    // The CANCEL went out before the sender's PING and reached the worker before its PONG.
    sender.ping(WAIT).await.expect("sender barrier");
    worker.ping(WAIT).await.expect("worker barrier");
    // Let the worker go on sending: it finds the cancel before its next frame.
    drop(pipe_in);
    let result = responding.await.expect("worker task");
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
}
