//! Request/reply through a real broker with the blocking client (issue behaviours 2–5), the
//! paths of a request: streaming both ways, exactly one receiver per request, FIFO per channel,
//! round robin across receivers, receive windows, the three timeouts (explicit, broker default,
//! NO_WAIT) and response timeouts.
//!
//! Every test ends by closing its clients and asserting the broker is idle (behaviour 9).

use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    body::{check_stream, GatedReader, PatternReader},
    broker::{small_frames, start, start_router},
    client::{connect, echo, receiver, request_options as options, set_window, Responder},
    gauges::wait_idle,
    now, DEADLINE, QUIET,
};

use switchyard::client::{Client, Error, RequestOptions};
use switchyard::ids::ChannelId;
use switchyard::router::RouterConfig;

#[test]
fn request_and_response_stream_both_ways() {
    let handle = start_router(small_frames());
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, 1);
    let sender = connect(&handle, channel);
    assert_eq!(sender.limits().max_payload, 1024);

    let request_len = 10 * 1024 + 17; // 11 frames
    let response_len = 7 * 1024 + 3; // 8 frames
    let frames_before = handle.stats().unwrap().frames_in;
    thread::scope(|s| {
        let serving = s.spawn(|| {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("the request");
            assert_eq!(incoming.sender(), sender.client_id());
            assert!(incoming.timeout() > Duration::ZERO && incoming.timeout() <= DEADLINE);
            assert_eq!(
                check_stream(&mut incoming, 1).expect("request body"),
                request_len
            );
            incoming
                .respond_with(&mut PatternReader::new(2, response_len))
                .expect("respond");
        });
        let mut response = sender
            .request_with(&mut PatternReader::new(1, request_len), options(DEADLINE))
            .expect("request");
        assert_eq!(response.responder(), receiver.client_id());
        assert_eq!(
            check_stream(&mut response, 2).expect("response body"),
            response_len
        );
        serving.join().unwrap();
    });
    // Every frame of both streams went through the broker, split at max_payload.
    let frames = handle.stats().unwrap().frames_in - frames_before;
    assert_eq!(
        frames,
        11 + 8,
        "request and response frames seen by the broker"
    );

    // A small exchange: one frame each way, through the plain API.
    thread::scope(|s| {
        s.spawn(|| {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("the request");
            assert_eq!(incoming.read_body().unwrap(), b"ping");
            incoming.respond(b"pong").unwrap();
        });
        assert_eq!(sender.request(b"ping", DEADLINE).unwrap(), b"pong");
    });

    drop(sender);
    drop(receiver);
    wait_idle(&handle);
}

#[test]
fn a_request_goes_to_exactly_one_receiver_with_credit() {
    let handle = start();
    let channel = ChannelId::random();
    // Three receivers ready in this order; one more client with no credit.
    let receivers: Vec<Client> = (0..3).map(|_| receiver(&handle, channel, 1)).collect();
    let idle = connect(&handle, channel);
    let sender = connect(&handle, channel);

    thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"only one", DEADLINE));
        handle
            .wait_until(|st| st.router.assignments == 1, DEADLINE)
            .expect("the request is assigned");
        // The receiver waiting longest gets it (the FIFO of ready receivers).
        let mut incoming = receivers[0]
            .next_request(Some(DEADLINE))
            .expect("delivered");
        assert_eq!(incoming.read_body().unwrap(), b"only one");
        for other in &receivers[1..] {
            assert_err!(other.next_request(Some(QUIET)), Error::WaitElapsed);
        }
        assert_err!(idle.next_request(Some(Duration::ZERO)), Error::WaitElapsed);
        incoming.respond(b"answered").unwrap();
        assert_eq!(asking.join().unwrap().unwrap(), b"answered");
    });
    // Nobody else got a copy after the request completed either.
    for other in &receivers {
        assert_err!(other.next_request(Some(Duration::ZERO)), Error::WaitElapsed);
    }

    drop((receivers, idle, sender));
    wait_idle(&handle);
}

#[test]
fn requests_are_received_in_the_order_they_were_sent() {
    const N: u32 = 20;
    let handle = start();
    let channel = ChannelId::random();
    let receiver = connect(&handle, channel); // no credit yet: every request queues
    let sender = connect(&handle, channel);

    thread::scope(|s| {
        let mut asking = Vec::new();
        for i in 0..N {
            let sender = &sender;
            asking.push(s.spawn(move || sender.request(&i.to_be_bytes(), DEADLINE)));
            // The next request starts only once this one is queued: the send order is 0..N.
            let queued = i as usize + 1;
            handle
                .wait_until(move |st| st.router.pending_requests == queued, DEADLINE)
                .expect("request queued");
        }
        // One slot: the requests come one by one, in the channel's FIFO order.
        set_window(&receiver, 1);
        for i in 0..N {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("next request");
            let body = incoming.read_body().unwrap();
            assert_eq!(body, i.to_be_bytes(), "request {i} out of order");
            incoming.respond(&body).unwrap();
        }
        for (i, asking) in asking.into_iter().enumerate() {
            let reply = asking.join().unwrap().expect("response");
            assert_eq!(reply, (i as u32).to_be_bytes());
        }
    });

    drop((receiver, sender));
    wait_idle(&handle);
}

#[test]
fn idle_receivers_share_requests_round_robin() {
    const RECEIVERS: usize = 4;
    const REQUESTS: usize = 41;
    let handle = start();
    let channel = ChannelId::random();
    let responders: Vec<Responder> = (0..RECEIVERS)
        .map(|_| Responder::spawn(connect(&handle, channel), 1, echo))
        .collect();
    let sender = connect(&handle, channel);
    let mut served_by = Vec::new();
    for i in 0..REQUESTS {
        let body = format!("request {i}");
        let mut response = sender
            .request_with(&mut body.as_bytes(), options(DEADLINE))
            .expect("request");
        served_by.push(response.responder());
        let mut reply = Vec::new();
        std::io::Read::read_to_end(&mut response, &mut reply).unwrap();
        assert_eq!(reply, body.as_bytes());
    }
    let ids: Vec<_> = responders.iter().map(|r| r.client().client_id()).collect();
    // Each request went to the receiver idle the longest: a strict rotation.
    for (i, by) in served_by.iter().enumerate() {
        assert_eq!(*by, ids[i % RECEIVERS], "request {i} broke the rotation");
    }
    let counts: Vec<usize> = responders.into_iter().map(|r| r.stop().answered).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "unbalanced: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), REQUESTS);

    drop(sender);
    wait_idle(&handle);
}

#[test]
fn a_receiver_with_window_n_holds_n_requests_at_once() {
    const WINDOW: u32 = 3;
    let handle = start();
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, WINDOW);
    let sender = connect(&handle, channel);

    thread::scope(|s| {
        let asking: Vec<_> = (0..=WINDOW)
            .map(|i| {
                let sender = &sender;
                s.spawn(move || sender.request(&i.to_be_bytes(), DEADLINE))
            })
            .collect();
        let stats = handle
            .wait_until(
                |st| st.router.assignments == WINDOW as usize && st.router.pending_requests == 1,
                DEADLINE,
            )
            .expect("N assigned, one waiting");
        assert_eq!(stats.router.assignments, WINDOW as usize);

        let mut held: Vec<_> = (0..WINDOW)
            .map(|_| {
                receiver
                    .next_request(Some(DEADLINE))
                    .expect("a held request")
            })
            .collect();
        // The N+1th waits for a free slot.
        assert_err!(receiver.next_request(Some(QUIET)), Error::WaitElapsed);
        let first = held.remove(0);
        first.respond(b"done").unwrap();
        held.push(
            receiver
                .next_request(Some(DEADLINE))
                .expect("the N+1th after a slot freed"),
        );
        for incoming in held {
            incoming.respond(b"done").unwrap();
        }
        for asking in asking {
            assert_eq!(asking.join().unwrap().expect("response"), b"done");
        }
    });

    drop((receiver, sender));
    wait_idle(&handle);
}

#[test]
fn no_receiver_within_the_timeout() {
    let handle = start();
    let channel = ChannelId::random();
    let no_credit = connect(&handle, channel);
    let sender = connect(&handle, channel);
    let timeout = Duration::from_millis(250);

    let started = now();
    assert_err!(sender.request(b"anyone?", timeout), Error::NoReceiver);
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "NoReceiver after {took:?}, before the timeout"
    );
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    assert_eq!(handle.stats().unwrap().router.timeouts, 1);
    // The client stays usable after a per-request error.
    sender.ping(DEADLINE).expect("still connected");

    drop((no_credit, sender));
    wait_idle(&handle);
}

#[test]
fn no_timeout_means_the_broker_default() {
    let default_timeout = Duration::from_millis(300);
    let handle = start_router(RouterConfig {
        default_timeout,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);
    assert_eq!(sender.limits().default_timeout, default_timeout);

    // Waiting for a receiver: NO_RECEIVER after the default.
    let started = now();
    assert_err!(sender.request(b"x", None), Error::NoReceiver);
    let took = started.elapsed();
    assert!(took >= default_timeout, "NoReceiver after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: not the default"
    );

    // Held but never answered: TIMEOUT after the default.
    let receiver = receiver(&handle, channel, 1);
    thread::scope(|s| {
        let asking = s.spawn(|| {
            let started = now();
            let result = sender.request(b"y", None);
            (result, started.elapsed())
        });
        let incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
        assert!(incoming.timeout() <= default_timeout);
        let (result, took) = asking.join().unwrap();
        assert_err!(result, Error::Timeout);
        assert!(took >= default_timeout && took < Duration::from_secs(2));
        drop(incoming);
    });

    drop((sender, receiver));
    wait_idle(&handle);
}

#[test]
fn no_wait_fails_at_once_without_a_free_receiver() {
    let handle = start(); // default timeout 30 s: any wait would show
    let channel = ChannelId::random();
    let no_credit = connect(&handle, channel);
    let sender = connect(&handle, channel);
    let no_wait = RequestOptions {
        timeout: Some(DEADLINE),
        no_wait: true,
    };

    let started = now();
    assert_err!(
        sender.request_with(&mut &b"now"[..], no_wait),
        Error::NoReceiver
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A receiver whose only slot is taken is no free receiver either.
    let busy = receiver(&handle, channel, 1);
    thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"first", DEADLINE));
        let held = busy.next_request(Some(DEADLINE)).expect("assigned");
        let started = now();
        assert_err!(
            sender.request_with(&mut &b"now"[..], no_wait),
            Error::NoReceiver
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        held.respond(b"ok").unwrap();
        assert_eq!(asking.join().unwrap().unwrap(), b"ok");
    });
    set_window(&busy, 0); // its slot is free again: withdraw it

    // With a free slot, NO_WAIT is an ordinary request.
    let responder = Responder::spawn(no_credit, 1, echo);
    let mut response = sender
        .request_with(&mut &b"now"[..], no_wait)
        .expect("assigned at once");
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut response, &mut reply).unwrap();
    assert_eq!(reply, b"now");
    drop(response);

    assert_eq!(responder.stop().answered, 1);
    drop((sender, busy));
    wait_idle(&handle);
}

#[test]
fn an_unanswered_request_times_out_and_cancels_the_receiver() {
    let handle = start_router(small_frames());
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, 1);
    let sender = connect(&handle, channel);
    let timeout = Duration::from_millis(300);

    // (a) Held, never answered: the sender gets TIMEOUT, the receiver's response fails.
    thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"slow", timeout));
        let incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
        assert_err!(asking.join().unwrap(), Error::Timeout);
        // The broker sent the CANCEL with the sender's ERROR; a PING round trip on the
        // receiver proves the client has processed it.
        receiver.ping(DEADLINE).unwrap();
        assert_err!(incoming.respond(b"too late"), Error::Cancelled);
    });

    // (b) The request body itself still incomplete at the deadline: the receiver's body read
    // fails with Cancelled, the sender gets TIMEOUT once its body reader returns.
    thread::scope(|s| {
        let (mut half, gate) = GatedReader::new(5, 2 * 1024);
        let sender = &sender;
        let asking = s.spawn(move || sender.request_with(&mut half, options(timeout)).map(|_| ()));
        let mut incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
        assert_err!(incoming.read_body(), Error::Cancelled);
        drop(gate);
        assert_err!(asking.join().unwrap(), Error::Timeout);
    });

    drop((sender, receiver));
    wait_idle(&handle);
}

/// A response that started but did not complete in time, its last frame held back by the
/// receiver's body reader. Returns the sender's error and the receiver's `respond_with` result,
/// the latter once the receiver has processed the CANCEL and the last frame was released.
fn stall_a_response_past_its_timeout() -> (Result<Vec<u8>, Error>, Result<(), Error>) {
    let handle = start_router(small_frames());
    let channel = ChannelId::random();
    let receiver = receiver(&handle, channel, 1);
    let sender = connect(&handle, channel);
    let outcome = thread::scope(|s| {
        let (mut stalled, gate) = GatedReader::new(7, 2 * 1024);
        let receiver = &receiver;
        let responding = s.spawn(move || {
            let mut incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
            incoming.read_body().unwrap();
            // Sends START, then blocks in the body reader until the gate opens.
            incoming.respond_with(&mut stalled)
        });
        let response = sender
            .request_with(&mut &b"stream me"[..], options(Duration::from_millis(300)))
            .expect("the response started");
        let read = response.read_to_vec();
        // PING barrier from here while the responder is blocked in its body reader: the CANCEL
        // (sent by the broker with the sender's ERROR) has reached the receiver before the
        // response's last frame is released.
        receiver.ping(DEADLINE).unwrap();
        drop(gate);
        (read, responding.join().unwrap())
    });
    drop((sender, receiver));
    wait_idle(&handle);
    outcome
}

#[test]
fn a_response_stalled_past_the_timeout_times_out_at_the_sender() {
    let (read, _) = stall_a_response_past_its_timeout();
    assert_err!(read, Error::Timeout);
}

#[test]
fn a_response_stalled_past_the_timeout_fails_with_cancelled_at_the_receiver() {
    // send_body checks for the counterpart's CANCEL between frames but not before the FINAL
    // frame that follows the body reader's last read, so the END goes out for a stream the
    // client already knows is cancelled (the broker answers UNKNOWN_REQUEST) and respond_with
    // reports success.
    let (read, responded) = stall_a_response_past_its_timeout();
    assert_err!(read, Error::Timeout);
    assert_err!(responded, Error::Cancelled);
}
