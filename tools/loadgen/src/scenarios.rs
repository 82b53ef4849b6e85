//! The scenarios, written once against [`Protocol`] so both back-ends run the same code.
//!
//! Two workloads cover them all:
//! - [`RrLoad`]: requesters keep `outstanding` requests in flight each (1 = strictly
//!   sequential); receivers answer each request with a body of the same size. A request's slot
//!   (its tag) is reused for the next request as soon as its response arrives, so the load is a
//!   closed loop. Round trips go into an HDR histogram (1 ns … 60 s, 3 significant digits).
//! - [`FanoutLoad`]: one sender keeps `window` broadcasts in flight to `peers` peers. With acks
//!   (switchyard) a broadcast is done when the broker's ACK arrives; without (NATS) the harness
//!   counts deliveries and keeps `window × peers` deliveries outstanding.
//!
//! Each measurement runs a warm-up phase, then the measured phase (a count of completions or a
//! duration), with CPU snapshots around the measured phase only; then the load stops and the
//! requests in flight drain. Every scenario opens its own connections (one [`Net`]) and closes
//! them all when it returns.

use hdrhistogram::Histogram;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::net::{clock, Inbound, Net, Out, Protocol, Role};
use crate::report::{Probe, Record, Usage};

/// Everything the scenarios take from the command line.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) addr: SocketAddr,
    pub(crate) label: String,
    pub(crate) body_size: usize,
    pub(crate) requests: u64,
    pub(crate) warmup_requests: u64,
    pub(crate) duration: Duration,
    pub(crate) warmup_duration: Duration,
    pub(crate) requesters: usize,
    pub(crate) outstanding: u32,
    pub(crate) receivers: usize,
    pub(crate) window: u32,
    pub(crate) peers: usize,
    pub(crate) broadcast_window: u32,
    pub(crate) large_size: usize,
    pub(crate) large_requests: u64,
    pub(crate) idle_conns: usize,
    pub(crate) idle_per_channel: usize,
    pub(crate) scale_idle: Vec<usize>,
    pub(crate) scale_receivers: Vec<usize>,
    pub(crate) scale_requests: u64,
    pub(crate) scale_duration: Duration,
    pub(crate) connect_batch: usize,
}

/// When a phase ends.
#[derive(Clone, Copy, Debug)]
enum Until {
    Completed(u64),
    Elapsed(Duration),
}

/// No progress for this long means the broker (or the scenario) is stuck: abort.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait of one loop turn, so phase ends and stalls are noticed without traffic.
const TURN_TIMEOUT: Duration = Duration::from_millis(50);

/// The running context: back-end, settings, probes, and a counter that gives every group of
/// connections (switchyard channel, NATS subject set) its own number.
pub(crate) struct Bench<'a, P> {
    proto: P,
    settings: &'a Settings,
    probe: &'a Probe,
    next_group: u32,
    /// The largest body any scenario sends; bodies are prefixes of it.
    body: Vec<u8>,
}

fn stalled(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no progress for {STALL_TIMEOUT:?}"),
    )
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

impl<'a, P: Protocol + Clone> Bench<'a, P> {
    pub(crate) fn new(proto: P, settings: &'a Settings, probe: &'a Probe) -> Bench<'a, P> {
        let largest = settings.body_size.max(settings.large_size);
        Bench {
            proto,
            settings,
            probe,
            next_group: 0,
            body: vec![b'x'; largest],
        }
    }

    fn group(&mut self) -> u32 {
        self.next_group += 1;
        self.next_group
    }

    fn net(&self) -> io::Result<Net<P>> {
        Net::new(self.proto.clone(), self.settings.addr)
    }

    /// Opens `count` connections, `spec(i)` giving each its group and role, at most
    /// `connect_batch` handshakes at a time, and waits until each has answered its barrier ping.
    fn open_many(
        &self,
        net: &mut Net<P>,
        count: usize,
        mut spec: impl FnMut(usize) -> (u32, Role),
    ) -> io::Result<Vec<usize>> {
        let mut opened = Vec::with_capacity(count);
        let batch = self.settings.connect_batch.max(1) as u64;
        let mut last_progress = clock();
        let mut pending = net.unanswered_pings();
        while opened.len() < count || net.unanswered_pings() > 0 {
            while opened.len() < count && net.unanswered_pings() < batch {
                let (group, role) = spec(opened.len());
                opened.push(net.open(group, role)?);
            }
            net.flush()?;
            let now = net.turn(Some(TURN_TIMEOUT), &mut |_, _, _, _| {})?;
            if net.unanswered_pings() != pending {
                pending = net.unanswered_pings();
                last_progress = now;
            } else if now.duration_since(last_progress) > STALL_TIMEOUT {
                return Err(stalled("connection setup"));
            }
        }
        Ok(opened)
    }

    /// Opens `requesters` requesters and `receivers` receivers in one fresh group.
    fn open_rr(
        &mut self,
        net: &mut Net<P>,
        requesters: usize,
        receivers: usize,
    ) -> io::Result<Vec<usize>> {
        let group = self.group();
        let window = self.settings.window;
        // Receivers first, so the first requests find credit.
        self.open_many(net, receivers, |_| (group, Role::Receiver { window }))?;
        self.open_many(net, requesters, |_| (group, Role::Requester))
    }

    /// Opens `count` idle connections, `idle_per_channel` to a group.
    fn open_idle(&mut self, net: &mut Net<P>, count: usize) -> io::Result<()> {
        let per_group = self.settings.idle_per_channel.max(1);
        let first_group = self.next_group + 1;
        self.next_group += count.div_ceil(per_group) as u32;
        self.open_many(net, count, |i| {
            (first_group + (i / per_group) as u32, Role::Idle)
        })?;
        Ok(())
    }

    /// Runs a request/reply load through warm-up and measurement; returns the load (histogram,
    /// counts of the measured phase) and what the measured phase cost.
    fn measure_rr(
        &self,
        net: &mut Net<P>,
        requesters: &[usize],
        outstanding: u32,
        body_len: usize,
        warmup: Until,
        measure: Until,
    ) -> io::Result<(RrLoad, Usage)> {
        let mut load = RrLoad::new(net.len(), requesters, outstanding, body_len);
        let body = &self.body[..body_len];
        let now = clock();
        for &conn in requesters {
            for tag in 0..outstanding {
                load.start(conn, tag, now);
                net.send(conn, |out| out.request(tag, body));
            }
        }
        net.flush()?;
        self.run_phase(net, &mut load, body, warmup, "warm-up")?;
        load.reset();
        let start = self.probe.snapshot();
        self.run_phase(net, &mut load, body, measure, "measurement")?;
        let end = self.probe.snapshot();
        load.issuing = false;
        // Drain what is in flight, so the broker is quiet for whatever comes next.
        let mut last_progress = clock();
        let mut in_flight = load.in_flight;
        while load.in_flight > 0 {
            let now = net.turn(Some(TURN_TIMEOUT), &mut |now, conn, msg, out| {
                load.on_message(now, conn, msg, out, body)
            })?;
            if load.in_flight != in_flight {
                in_flight = load.in_flight;
                last_progress = now;
            } else if now.duration_since(last_progress) > STALL_TIMEOUT {
                return Err(stalled("draining requests"));
            }
        }
        Ok((load, Usage::between(&start, &end)))
    }

    fn run_phase(
        &self,
        net: &mut Net<P>,
        load: &mut RrLoad,
        body: &[u8],
        until: Until,
        what: &str,
    ) -> io::Result<()> {
        let started = clock();
        let mut last_progress = started;
        let mut completed = load.completed + load.failed;
        loop {
            let now = net.turn(Some(TURN_TIMEOUT), &mut |now, conn, msg, out| {
                load.on_message(now, conn, msg, out, body)
            })?;
            let done = match until {
                Until::Completed(n) => load.completed >= n,
                Until::Elapsed(d) => now.duration_since(started) >= d,
            };
            if done {
                return Ok(());
            }
            if load.completed + load.failed != completed {
                completed = load.completed + load.failed;
                last_progress = now;
            } else if now.duration_since(last_progress) > STALL_TIMEOUT {
                return Err(stalled(what));
            }
        }
    }

    fn latency_record(
        &self,
        scenario: String,
        load: &RrLoad,
        usage: &Usage,
        detail: String,
    ) -> Record {
        let h = &load.histogram;
        Record::new(scenario, &self.settings.label, detail)
            .metric("p50_us", micros(h.value_at_quantile(0.50)))
            .metric("p90_us", micros(h.value_at_quantile(0.90)))
            .metric("p99_us", micros(h.value_at_quantile(0.99)))
            .metric("p999_us", micros(h.value_at_quantile(0.999)))
            .metric("max_us", micros(h.max()))
            .metric("failed", load.failed as f64)
            .cpu(usage, load.completed)
    }

    /// `rr-latency`: 1 requester, 1 receiver, strictly sequential.
    pub(crate) fn rr_latency(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let mut net = self.net()?;
        let requesters = self.open_rr(&mut net, 1, 1)?;
        let (load, usage) = self.measure_rr(
            &mut net,
            &requesters,
            1,
            s.body_size,
            Until::Completed(s.warmup_requests),
            Until::Completed(s.requests),
        )?;
        let detail = format!(
            "1 requester, 1 receiver, sequential, {}-byte bodies, {} requests after {} warm-up",
            s.body_size, load.completed, s.warmup_requests
        );
        let record = self
            .latency_record("rr-latency".into(), &load, &usage, detail)
            .compare_on(
                "p50_us",
                &[
                    "p50_us",
                    "p90_us",
                    "p99_us",
                    "p999_us",
                    "broker_cpu_s_per_1k",
                ],
            );
        Ok(vec![record])
    }

    /// Request/reply under load: `requesters × outstanding` in flight, `receivers` answering.
    fn throughput(
        &mut self,
        scenario: String,
        receivers: usize,
        warmup: Duration,
        duration: Duration,
    ) -> io::Result<Record> {
        let s = self.settings;
        let mut net = self.net()?;
        let requesters = self.open_rr(&mut net, s.requesters, receivers)?;
        let (load, usage) = self.measure_rr(
            &mut net,
            &requesters,
            s.outstanding,
            s.body_size,
            Until::Elapsed(warmup),
            Until::Elapsed(duration),
        )?;
        let h = &load.histogram;
        let detail = format!(
            "{} requesters x {} outstanding, {} receivers, {}-byte bodies, {:.1} s after {:.1} s warm-up",
            s.requesters,
            s.outstanding,
            receivers,
            s.body_size,
            usage.wall_s,
            warmup.as_secs_f64()
        );
        Ok(Record::new(scenario, &s.label, detail)
            .metric("requests_per_s", load.completed as f64 / usage.wall_s)
            .metric("p50_us", micros(h.value_at_quantile(0.50)))
            .metric("p99_us", micros(h.value_at_quantile(0.99)))
            .metric("failed", load.failed as f64)
            .cpu(&usage, load.completed)
            .compare_on(
                "requests_per_s",
                &["requests_per_s", "p50_us", "p99_us", "broker_cpu_s_per_1k"],
            ))
    }

    /// `rr-throughput`.
    pub(crate) fn rr_throughput(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let record = self.throughput(
            "rr-throughput".into(),
            s.receivers,
            s.warmup_duration,
            s.duration,
        )?;
        Ok(vec![record])
    }

    /// `large`: sequential request/reply of `large_size` bodies both ways.
    pub(crate) fn large(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let mut net = self.net()?;
        let requesters = self.open_rr(&mut net, 1, 1)?;
        let warmup = (s.large_requests / 10).max(2);
        let (load, usage) = self.measure_rr(
            &mut net,
            &requesters,
            1,
            s.large_size,
            Until::Completed(warmup),
            Until::Completed(s.large_requests),
        )?;
        let mib = (load.completed * 2 * s.large_size as u64) as f64 / (1u64 << 20) as f64;
        let h = &load.histogram;
        let detail = format!(
            "sequential request/reply, {}-byte bodies both ways, {} requests after {} warm-up",
            s.large_size, load.completed, warmup
        );
        let record = Record::new("large", &s.label, detail)
            .metric("mib_per_s", mib / usage.wall_s)
            .metric("p50_ms", micros(h.value_at_quantile(0.50)) / 1000.0)
            .metric("p99_ms", micros(h.value_at_quantile(0.99)) / 1000.0)
            .metric("failed", load.failed as f64)
            .cpu(&usage, load.completed)
            .compare_on("mib_per_s", &["mib_per_s", "p50_ms", "broker_cpu_s_per_1k"])
            .note("MiB/s counts request and response bodies (both directions)");
        Ok(vec![record])
    }

    /// `fanout`: one sender, `peers` peers, `broadcast_window` broadcasts in flight.
    pub(crate) fn fanout(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let mut net = self.net()?;
        let group = self.group();
        self.open_many(&mut net, s.peers, |_| (group, Role::BroadcastPeer))?;
        let sender = self.open_many(&mut net, 1, |_| (group, Role::BroadcastSender))?[0];
        let body = &self.body[..s.body_size];
        let mut load = FanoutLoad {
            sender,
            peers: s.peers as u64,
            window: s.broadcast_window,
            issuing: true,
            published: 0,
            acked: 0,
            failed: 0,
            delivered: 0,
        };
        if P::ACKS_BROADCASTS {
            for tag in 0..s.broadcast_window {
                net.send(sender, |out| out.broadcast(tag, body));
                load.published += 1;
            }
        }
        let phase = |net: &mut Net<P>, load: &mut FanoutLoad, length: Duration| -> io::Result<()> {
            let started = clock();
            let mut last_progress = started;
            let mut delivered = load.delivered;
            loop {
                if !P::ACKS_BROADCASTS {
                    load.refill_unacked(net, body);
                }
                let now = net.turn(Some(TURN_TIMEOUT), &mut |_, conn, msg, out| {
                    load.on_message(conn, msg, out, body)
                })?;
                if !load.issuing && load.is_drained() {
                    return Ok(());
                }
                if load.issuing && now.duration_since(started) >= length {
                    return Ok(());
                }
                if load.delivered != delivered {
                    delivered = load.delivered;
                    last_progress = now;
                } else if now.duration_since(last_progress) > STALL_TIMEOUT {
                    return Err(stalled("fanout"));
                }
            }
        };
        phase(&mut net, &mut load, s.warmup_duration)?;
        let (delivered_before, acked_before) = (load.delivered, load.acked);
        let start = self.probe.snapshot();
        phase(&mut net, &mut load, s.duration)?;
        let end = self.probe.snapshot();
        let delivered = load.delivered - delivered_before;
        let broadcasts = load.acked - acked_before;
        load.issuing = false;
        phase(&mut net, &mut load, Duration::ZERO)?;
        let usage = Usage::between(&start, &end);
        let detail = format!(
            "1 sender, {} peers, {}-byte messages, {} in flight, {:.1} s after {:.1} s warm-up",
            s.peers,
            s.body_size,
            s.broadcast_window,
            usage.wall_s,
            s.warmup_duration.as_secs_f64()
        );
        let mut record = Record::new("fanout", &s.label, detail)
            .metric("deliveries_per_s", delivered as f64 / usage.wall_s);
        if P::ACKS_BROADCASTS {
            record = record
                .metric("broadcasts_per_s", broadcasts as f64 / usage.wall_s)
                .metric("failed", load.failed as f64);
        }
        let note = if P::ACKS_BROADCASTS {
            "switchyard: every peer ACKs every broadcast, and the broker ACKs the sender"
        } else {
            "NATS: plain publish to subscribers, no acks (the harness windows on counted deliveries)"
        };
        Ok(vec![record
            .cpu(&usage, delivered)
            .compare_on(
                "deliveries_per_s",
                &["deliveries_per_s", "broker_cpu_s_per_1k"],
            )
            .note(note)])
    }

    /// `idle-conns`: the broker's memory per idle connection after the handshake.
    pub(crate) fn idle_conns(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let mut net = self.net()?;
        let rss_before = self.probe.broker_rss_kib();
        let start = self.probe.snapshot();
        self.open_idle(&mut net, s.idle_conns)?;
        let end = self.probe.snapshot();
        let rss_after = self.probe.broker_rss_kib();
        let usage = Usage::between(&start, &end);
        let detail = format!(
            "{} connections after the handshake ({} per channel / one subscription each), \
             opened in {:.2} s",
            s.idle_conns, s.idle_per_channel, usage.wall_s
        );
        let mut record = Record::new("idle-conns", &s.label, detail);
        if let (Some(before), Some(after)) = (rss_before, rss_after) {
            record = record
                .metric("rss_before_kib", before as f64)
                .metric("rss_after_kib", after as f64)
                .metric(
                    "rss_kib_per_conn",
                    after.saturating_sub(before) as f64 / s.idle_conns.max(1) as f64,
                );
        }
        Ok(vec![record
            .cpu(&usage, s.idle_conns as u64)
            .compare_on(
                "rss_kib_per_conn",
                &["rss_kib_per_conn", "broker_cpu_s_per_1k"],
            )
            .note("broker CPU is per 1000 connections set up")])
    }

    /// `scale`: rr-latency beside growing numbers of idle connections, then rr-throughput with
    /// growing numbers of receivers.
    pub(crate) fn scale(&mut self) -> io::Result<Vec<Record>> {
        let s = self.settings;
        let mut records = Vec::new();
        {
            let mut net = self.net()?;
            let requesters = self.open_rr(&mut net, 1, 1)?;
            let mut idle = 0;
            for &target in &s.scale_idle {
                if target > idle {
                    self.open_idle(&mut net, target - idle)?;
                    idle = target;
                }
                let warmup = (s.scale_requests / 10).max(1);
                let (load, usage) = self.measure_rr(
                    &mut net,
                    &requesters,
                    1,
                    s.body_size,
                    Until::Completed(warmup),
                    Until::Completed(s.scale_requests),
                )?;
                let detail = format!(
                    "rr-latency beside {idle} idle connections, {} requests after {warmup} warm-up",
                    load.completed
                );
                records.push(
                    self.latency_record(format!("scale:idle={target}"), &load, &usage, detail)
                        .compare_on("p50_us", &["p50_us", "p99_us"]),
                );
            }
        }
        for &receivers in &s.scale_receivers {
            let warmup = s.scale_duration / 4;
            let record = self.throughput(
                format!("scale:receivers={receivers}"),
                receivers,
                warmup,
                s.scale_duration,
            )?;
            records.push(record.compare_on("requests_per_s", &["requests_per_s", "p99_us"]));
        }
        Ok(records)
    }
}

/// The closed-loop request/reply workload (see the module docs).
struct RrLoad {
    /// Connection index → its first slot, for requesters.
    first_slot: Vec<Option<usize>>,
    outstanding: u32,
    /// Slot → when its request was sent, while in flight.
    sent_at: Vec<Option<Instant>>,
    body_len: usize,
    issuing: bool,
    in_flight: u64,
    completed: u64,
    failed: u64,
    histogram: Histogram<u64>,
}

impl RrLoad {
    fn new(conns: usize, requesters: &[usize], outstanding: u32, body_len: usize) -> RrLoad {
        let mut first_slot = vec![None; conns];
        for (i, &conn) in requesters.iter().enumerate() {
            first_slot[conn] = Some(i * outstanding as usize);
        }
        RrLoad {
            first_slot,
            outstanding,
            sent_at: vec![None; requesters.len() * outstanding as usize],
            body_len,
            issuing: true,
            in_flight: 0,
            completed: 0,
            failed: 0,
            // 1 ns to 60 s at 3 significant digits: ~0.1% value precision.
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn slot(&self, conn: usize, tag: u32) -> Option<usize> {
        let first = self.first_slot.get(conn).copied().flatten()?;
        (tag < self.outstanding).then_some(first + tag as usize)
    }

    fn start(&mut self, conn: usize, tag: u32, now: Instant) {
        if let Some(slot) = self.slot(conn, tag) {
            self.sent_at[slot] = Some(now);
            self.in_flight += 1;
        }
    }

    /// Forgets the counts and latencies of the warm-up.
    fn reset(&mut self) {
        self.completed = 0;
        self.failed = 0;
        self.histogram.reset();
    }

    fn on_message<P: Protocol>(
        &mut self,
        now: Instant,
        conn: usize,
        message: Inbound<'_>,
        out: &mut Out<'_, P>,
        body: &[u8],
    ) {
        match message {
            Inbound::Request { reply_to, body_len } => {
                out.reply(reply_to, &body[..body_len.min(body.len())]);
            }
            Inbound::Response { tag } => self.finish(now, conn, tag, true, out, body),
            Inbound::Failed {
                tag: Some(tag),
                code,
            } => {
                if self.failed == 0 {
                    eprintln!("loadgen: request failed (error code 0x{code:04x}; 0 = cancelled)");
                }
                self.finish(now, conn, tag, false, out, body);
            }
            _ => {}
        }
    }

    fn finish<P: Protocol>(
        &mut self,
        now: Instant,
        conn: usize,
        tag: u32,
        ok: bool,
        out: &mut Out<'_, P>,
        body: &[u8],
    ) {
        let Some(slot) = self.slot(conn, tag) else {
            return;
        };
        let Some(sent_at) = self.sent_at[slot].take() else {
            return; // not in flight: a late error for a finished request
        };
        self.in_flight -= 1;
        if ok {
            let nanos = u64::try_from(now.duration_since(sent_at).as_nanos()).unwrap_or(u64::MAX);
            self.histogram.saturating_record(nanos.max(1));
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        if self.issuing {
            self.sent_at[slot] = Some(now);
            self.in_flight += 1;
            out.request(tag, &body[..self.body_len]);
        }
    }
}

/// The broadcast workload (see the module docs).
struct FanoutLoad {
    sender: usize,
    peers: u64,
    window: u32,
    issuing: bool,
    published: u64,
    acked: u64,
    failed: u64,
    delivered: u64,
}

impl FanoutLoad {
    fn on_message<P: Protocol>(
        &mut self,
        conn: usize,
        message: Inbound<'_>,
        out: &mut Out<'_, P>,
        body: &[u8],
    ) {
        match message {
            Inbound::Broadcast { id } => {
                self.delivered += 1;
                out.ack_broadcast(id);
            }
            Inbound::BroadcastDone { tag } if conn == self.sender => {
                self.acked += 1;
                self.reissue(tag, out, body);
            }
            Inbound::Failed { tag: Some(tag), .. } if conn == self.sender => {
                self.failed += 1;
                self.reissue(tag, out, body);
            }
            _ => {}
        }
    }

    fn reissue<P: Protocol>(&mut self, tag: u32, out: &mut Out<'_, P>, body: &[u8]) {
        if self.issuing {
            out.broadcast(tag, body);
            self.published += 1;
        }
    }

    /// Without acks: publish until `window × peers` deliveries are outstanding.
    fn refill_unacked<P: Protocol>(&mut self, net: &mut Net<P>, body: &[u8]) {
        let limit = u64::from(self.window) * self.peers;
        while self.issuing && self.published * self.peers - self.delivered < limit {
            net.send(self.sender, |out| out.broadcast(0, body));
            self.published += 1;
        }
        // Count a no-ack broadcast as done once every peer could have had it.
        self.acked = self.delivered / self.peers.max(1);
    }

    fn is_drained(&self) -> bool {
        if self.published == 0 {
            return true;
        }
        if self.acked + self.failed >= self.published {
            return true;
        }
        !self.issuing && self.delivered >= self.published * self.peers
    }
}
