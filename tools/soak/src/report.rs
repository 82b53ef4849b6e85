//! The outcome of a run: the verdict of every check, the human-readable summary and the JSON
//! line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use crate::args::Args;
use crate::broker::{Memory, Metrics};
use crate::sampler::{Peaks, RssBound};
use crate::{tls, violations, Round, WARM_UP_CLIENTS};

/// What a run measured, for the verdict and the report.
pub struct Outcome<'a> {
    pub args: &'a Args,
    pub rounds: &'a [Round],
    pub baseline: Memory,
    pub start_memory: Memory,
    pub end_memory: Memory,
    pub peaks: Peaks,
    pub bound: RssBound,
    pub end_metrics: &'a Metrics,
    /// TLS connections the warm-up made (counted by the broker, not in the rounds' counts).
    pub warm_up_tls_connects: u64,
    pub exit: Result<std::process::ExitStatus, String>,
    pub elapsed: Duration,
}

impl Outcome<'_> {
    /// Prints the summary and the JSON line; true when every check passed.
    pub fn report(&self) -> Result<bool, String> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for round in self.rounds {
            for (key, value) in &round.counts {
                *counts.entry(key.clone()).or_default() += value;
            }
        }
        let get = |key: &str| counts.get(key).copied().unwrap_or(0);
        let sum = |prefix: &str| -> u64 {
            counts
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        let total_violations = violations(&counts);
        let mismatches = get("violation.foreign_answer")
            + get("violation.corrupt_answer")
            + get("violation.foreign_request")
            + get("violation.corrupt_request")
            + get("violation.foreign_broadcast")
            + get("violation.corrupt_broadcast");
        let duplicates = get("violation.duplicate_answer")
            + get("violation.assigned_twice")
            + get("violation.broadcast_twice")
            + get("violation.duplicate_cancel");
        let bound = self.bound.total_kib();
        let growth = self
            .end_memory
            .rss_kib
            .saturating_sub(self.baseline.rss_kib);
        let rss_ok = growth <= bound;
        let first_idle = self.rounds.first().map_or(0, |r| r.idle_rss_kib);
        let last_idle = self.rounds.last().map_or(0, |r| r.idle_rss_kib);
        let drift = last_idle.saturating_sub(first_idle);
        let drift_ok = drift <= self.args.drift_mib * 1024;
        let idle_ok = self.rounds.iter().all(|r| r.idle) && self.end_metrics.is_idle();
        let exit_ok = matches!(&self.exit, Ok(status) if status.success());
        let load_ok = get("requests.ok") > 0
            && get("broadcasts.ok") > 0
            && (self.args.child_receivers == 0 || get("faults.sigkill_receiver") > 0);
        let tls = self.tls_figures(get("clients.tls_connects"));
        let tls_ok = tls.ok(self.args.tls);
        let pass =
            total_violations == 0 && rss_ok && drift_ok && idle_ok && exit_ok && load_ok && tls_ok;

        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "\n== soak summary ==");
        let load_time: Duration = self.rounds.iter().map(|r| r.load_time).sum();
        let _ = writeln!(
            w,
            "duration: {:.1} s of load in {} round(s), {:.1} s in all; seed {}",
            load_time.as_secs_f64(),
            self.rounds.len(),
            self.elapsed.as_secs_f64(),
            self.args.seed
        );
        let _ = writeln!(
            w,
            "requests: {} sent ({} streamed in chunks, {} via the client library); {} ok; {} \
             answered late but before the broker's timeout fired",
            get("requests.sent"),
            get("requests.streamed"),
            get("requests.library"),
            get("requests.ok"),
            get("requests.late_answer_ok")
        );
        let _ = writeln!(
            w,
            "  expected non-answers: {} timeouts, {} no-receiver, {} cancelled by the receiver, {} \
             peer gone ({} held by a killed receiver, {} during a kill), {} abandoned by a \
             vanished sender",
            get("requests.timeout_expected"),
            get("requests.no_receiver_expected"),
            get("requests.cancelled_expected"),
            get("requests.peer_gone"),
            get("requests.peer_gone_attributed"),
            get("requests.peer_gone_during_kill"),
            get("requests.abandoned_by_sender")
        );
        let _ = writeln!(
            w,
            "  unexpected: {} timeouts, {} other errors, {} unanswered",
            get("violation.timeout_unexpected"),
            get("violation.error_unexpected"),
            get("violation.unanswered")
        );
        let _ = writeln!(
            w,
            "  receivers: {} responses sent, {} late responses sent after the broker's CANCEL \
             (refused: {}), {} cancels received",
            get("receivers.responses_sent"),
            get("receivers.late_responses_sent"),
            get("receivers.late_response_refused"),
            get("receivers.cancel_received")
        );
        let _ = writeln!(
            w,
            "broadcasts: {} sent, {} acked by all ({} with an exact ack count), {} incomplete \
             because a peer left, {} copies delivered",
            get("broadcasts.sent"),
            get("broadcasts.ok"),
            get("broadcasts.ack_count_exact"),
            get("broadcasts.incomplete_peer_left"),
            get("broadcasts.delivered")
        );
        let _ = writeln!(
            w,
            "faults injected: {} receiver processes SIGKILLed ({} holding requests), {} raw \
             receivers reset ({} holding), {} senders reset mid-body, {} senders FIN mid-body, {} \
             senders reset awaiting answers, {} peers reset mid-broadcast",
            get("faults.sigkill_receiver"),
            get("faults.sigkill_receiver_holding"),
            get("faults.rst_receiver"),
            get("faults.rst_receiver_holding"),
            get("faults.rst_sender_mid_body"),
            get("faults.fin_sender_mid_body"),
            get("faults.rst_sender_awaiting"),
            get("faults.rst_peer_mid_broadcast")
        );
        let _ = writeln!(
            w,
            "clients: {} connects, {} disconnects ({} graceful leaves)",
            get("clients.connects"),
            get("clients.disconnects"),
            sum("clients.graceful_leave")
        );
        if self.args.tls {
            let _ = writeln!(
                w,
                "TLS: on for the client-library clients (raw clients on plain TCP): the broker \
                 opened {} TLS connections for {} made ({} by the load + {} warm-up), {} at \
                 once at the peak; {} handshake failures: {}",
                tls.opened,
                tls.expected,
                tls.expected - self.warm_up_tls_connects,
                self.warm_up_tls_connects,
                self.peaks.tls_connections,
                tls.handshake_failures,
                if tls_ok { "ok" } else { "MISMATCH" }
            );
        } else {
            let _ = writeln!(
                w,
                "TLS: off (every client on plain TCP; the broker opened {} TLS connections: {})",
                tls.opened,
                if tls_ok { "ok" } else { "MISMATCH" }
            );
        }
        let _ = writeln!(
            w,
            "checks: {} mismatches (answered with another request's bytes, or corrupt), {} \
             duplicates (answered twice, delivered twice), {total_violations} violations in all",
            mismatches, duplicates
        );
        for round in self.rounds {
            for sample in &round.samples {
                let _ = writeln!(w, "  ! {sample}");
            }
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(
            w,
            "broker RSS: start-up {:.1} MiB, baseline {:.1} MiB, peak {:.1} MiB (sampled; \
             VmHWM {:.1} MiB), idle after each round [{}] MiB, final {:.1} MiB",
            mib(self.start_memory.rss_kib),
            mib(self.baseline.rss_kib),
            mib(self.peaks.rss_kib),
            mib(self.end_memory.hwm_kib),
            self.rounds
                .iter()
                .map(|r| format!("{:.1}", mib(r.idle_rss_kib)))
                .collect::<Vec<_>>()
                .join(", "),
            mib(self.end_memory.rss_kib)
        );
        let _ = writeln!(
            w,
            "  final - baseline = {:.1} MiB, bound {:.1} MiB = pools {:.1} (2 x min(256, {} peak \
             connections) x 64 KiB) + containers {:.1} + TLS {:.1} ({} peak TLS connections x \
             {} KiB) + allocator slack {:.1}: {}",
            mib(growth),
            mib(bound),
            mib(self.bound.pools_kib),
            self.peaks.connections,
            mib(self.bound.containers_kib),
            mib(self.bound.tls_kib),
            self.peaks.tls_connections,
            tls::ALLOWANCE_PER_CONNECTION_KIB,
            mib(self.bound.slack_kib),
            if rss_ok { "ok" } else { "EXCEEDED" }
        );
        let _ = writeln!(
            w,
            "  idle RSS drift first -> last round {:.1} MiB (at most {} MiB): {}",
            mib(drift),
            self.args.drift_mib,
            if drift_ok { "ok" } else { "EXCEEDED" }
        );
        let _ = writeln!(
            w,
            "broker state at the end: {}",
            self.end_metrics
                .state()
                .iter()
                .map(|(k, v)| format!("{}={v}", k.trim_start_matches("switchyard_")))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (i, round) in self.rounds.iter().enumerate() {
            if !round.idle {
                let _ = writeln!(
                    w,
                    "  ! round {} did not return to idle within {:?}: {:?}",
                    i + 1,
                    round.idle_after,
                    round.state
                );
            }
        }
        let _ = writeln!(
            w,
            "broker exit: {}",
            match &self.exit {
                Ok(status) => status.to_string(),
                Err(e) => e.clone(),
            }
        );
        if !load_ok {
            let _ = writeln!(
                w,
                "  ! the load did too little to judge (no ok request, broadcast or kill)"
            );
        }
        let _ = writeln!(w, "verdict: {}", if pass { "PASS" } else { "FAIL" });
        print!("{out}");

        let json = self.json(&counts, mismatches, duplicates, pass, growth, drift, &tls);
        println!("{json}");
        if let Some(path) = &self.args.json {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(file, "{json}").map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(pass)
    }

    /// The broker's TLS counters at the end, against the TLS connects the soak's clients counted.
    pub fn tls_figures(&self, load_tls_connects: u64) -> TlsFigures {
        TlsFigures {
            opened: self
                .end_metrics
                .value("switchyard_tls_connections_opened_total")
                .unwrap_or(0),
            expected: load_tls_connects + self.warm_up_tls_connects,
            handshake_failures: self
                .end_metrics
                .value("switchyard_tls_handshake_failures_total")
                .unwrap_or(0),
        }
    }

    #[allow(clippy::too_many_arguments)] // the figures `report` computed, passed on as they are
    pub fn json(
        &self,
        counts: &BTreeMap<String, u64>,
        mismatches: u64,
        duplicates: u64,
        pass: bool,
        growth: u64,
        drift: u64,
        tls: &TlsFigures,
    ) -> String {
        let a = self.args;
        let group = |prefix: &str| -> String {
            let fields: Vec<String> = counts
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| format!("\"{k}\":{v}")))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        let state: Vec<String> = self
            .end_metrics
            .state()
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.trim_start_matches("switchyard_")))
            .collect();
        let errors: Vec<String> = self
            .end_metrics
            .errors_sent()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let idle: Vec<String> = self
            .rounds
            .iter()
            .map(|r| r.idle_rss_kib.to_string())
            .collect();
        #[allow(clippy::disallowed_methods)] // the record's wall-clock date
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let load_time: Duration = self.rounds.iter().map(|r| r.load_time).sum();
        format!(
            "{{\"tool\":\"soak\",\"unix_time\":{unix},\"seed\":{},\"duration_s\":{:.1},\
             \"elapsed_s\":{:.1},\"rounds\":{},\"config\":{{\"channels\":{},\"raw_senders\":{},\
             \"raw_receivers\":{},\"child_receivers\":{},\"library_senders\":{},\
             \"library_receivers\":{},\"window\":{},\"in_flight\":{},\"max_body\":{},\
             \"timeout_ms\":{},\"kill_every_ms\":{},\"lifetime_ms\":{}}},\"requests\":{},\
             \"broadcasts\":{},\"receivers\":{},\"faults\":{},\"clients\":{},\"violations\":{},\"sabotage\":{},\
             \"mismatches\":{mismatches},\"duplicates\":{duplicates},\"bytes\":{},\
             \"rss_kib\":{{\"start\":{},\"baseline\":{},\"peak_sampled\":{},\"hwm\":{},\
             \"idle_after_round\":[{}],\"final\":{},\"growth\":{growth},\"bound\":{},\
             \"drift\":{drift},\"drift_max\":{}}},\"peaks\":{{\"connections\":{},\"streams\":{},\
             \"buffered_bytes\":{}}},\"state_at_end\":{{{}}},\"broker_errors_sent\":{{{}}},\
             \"tls\":{{\"on\":{},\"connections_opened\":{},\"connects_made\":{},\
             \"handshake_failures\":{},\"peak_connections\":{},\"rss_allowance_kib\":{}}},\
             \"broker_exit\":\"{}\",\"verdict\":\"{}\",\"note\":\"{}\"}}",
            a.seed,
            load_time.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            a.rounds,
            a.channels,
            a.raw_senders,
            a.raw_receivers,
            a.child_receivers,
            a.library_senders,
            a.library_receivers,
            a.window,
            a.in_flight,
            a.max_body,
            a.timeout_ms,
            a.kill_every_ms,
            a.lifetime_ms,
            group("requests."),
            group("broadcasts."),
            group("receivers."),
            group("faults."),
            group("clients."),
            group("violation."),
            group("sabotage."),
            group("bytes."),
            self.start_memory.rss_kib,
            self.baseline.rss_kib,
            self.peaks.rss_kib,
            self.end_memory.hwm_kib,
            idle.join(","),
            self.end_memory.rss_kib,
            self.bound.total_kib(),
            a.drift_mib * 1024,
            self.peaks.connections,
            self.peaks.streams,
            self.peaks.buffered_bytes,
            state.join(","),
            errors.join(","),
            a.tls,
            tls.opened,
            tls.expected,
            tls.handshake_failures,
            self.peaks.tls_connections,
            self.bound.tls_kib,
            match &self.exit {
                Ok(status) => status.to_string(),
                Err(e) => e.clone(),
            }
            .replace('"', "'"),
            if pass { "pass" } else { "fail" },
            a.note.clone().unwrap_or_default().replace(['"', '\\'], "'"),
        )
    }
}

/// The broker's TLS counters at the end of a run, and the TLS connections the soak made.
pub struct TlsFigures {
    /// `switchyard_tls_connections_opened_total`.
    pub opened: u64,
    /// TLS connects the soak's clients completed (load and warm-up).
    pub expected: u64,
    /// `switchyard_tls_handshake_failures_total`.
    pub handshake_failures: u64,
}

impl TlsFigures {
    /// With `--tls`: every TLS connection the broker opened is one the soak made (no stray or
    /// lost one), at least one beyond the warm-up, and none failed its handshake — the soak's
    /// clients never give up mid-handshake (receiver children are killed only after their
    /// WELCOME), so a failure is the broker's or the client library's. Without: none at all.
    pub fn ok(&self, tls_on: bool) -> bool {
        if tls_on {
            self.handshake_failures == 0
                && self.opened == self.expected
                && self.opened > WARM_UP_CLIENTS
        } else {
            self.opened == 0 && self.handshake_failures == 0
        }
    }
}
