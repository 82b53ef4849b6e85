//! Measurement and reporting: CPU and memory probes, one [`Record`] per measured figure set, the
//! human table, the JSON line, and the `compare` summary over many runs.
//!
//! # CPU accounting
//! - Broker: `utime + stime` of `/proc/<pid>/stat` (every thread of the process, so NATS's
//!   threads count too) has a resolution of one clock tick (`USER_HZ` = 100 per second, fixed by
//!   the Linux ABI): 10 ms, too coarse for short phases. So the CPU time is the sum of the
//!   per-thread nanosecond counters of `/proc/<pid>/task/*/schedstat`, unless the tick count grew
//!   by more than two ticks beyond it (a thread exited during the phase and took its counter
//!   along): then the tick figure is used.
//! - Load generator: the same, for `self`. Above [`SATURATED_PCT`] of one core the harness, not
//!   the broker, may be the bottleneck: the record says so (`harness_saturated`) and the
//!   comparison marks the figure with `*`.
//!
//! # JSON lines
//! One flat object per record: `scenario`, `backend`, `headline` (the metric that decides which
//! NATS variant is "the better NATS"), `table` (metrics shown in the comparison, comma
//! separated), then every metric as a number. `compare` reads these back with a tiny parser that
//! accepts exactly such flat objects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::time::Instant;

use crate::net::clock;

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on every Linux architecture's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Harness CPU (percent of one core) above which a figure may measure the harness, not the broker.
pub(crate) const SATURATED_PCT: f64 = 90.0;

/// Reads the broker's and our own CPU and the broker's memory.
pub(crate) struct Probe {
    broker_pid: Option<u32>,
}

/// CPU counters at one instant.
pub(crate) struct Snapshot {
    at: Instant,
    broker: CpuCounters,
    own: CpuCounters,
}

/// One process's CPU time, two ways (see the module docs).
#[derive(Clone, Copy)]
struct CpuCounters {
    ticks: Option<u64>,
    thread_nanos: Option<u64>,
}

impl CpuCounters {
    fn read(pid: &str) -> CpuCounters {
        CpuCounters {
            ticks: fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| cpu_ticks(&s)),
            thread_nanos: thread_nanos(pid),
        }
    }

    const NONE: CpuCounters = CpuCounters {
        ticks: None,
        thread_nanos: None,
    };

    /// CPU seconds from `self` to `later`.
    fn seconds_until(&self, later: &CpuCounters) -> Option<f64> {
        let by_ticks = Some(later.ticks?.saturating_sub(self.ticks?) as f64 / TICKS_PER_SECOND);
        let by_nanos =
            (|| Some(later.thread_nanos?.saturating_sub(self.thread_nanos?) as f64 / 1e9))();
        match (by_ticks, by_nanos) {
            (Some(t), Some(n)) if t > n + 2.0 / TICKS_PER_SECOND => Some(t),
            (_, Some(n)) => Some(n),
            (t, None) => t,
        }
    }
}

/// Sum of the on-CPU nanoseconds (first field of `schedstat`) of every thread of `pid`.
fn thread_nanos(pid: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut found = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(nanos) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            total += nanos;
            found = true;
        }
    }
    found.then_some(total)
}

/// What a measured phase cost.
pub(crate) struct Usage {
    pub(crate) wall_s: f64,
    pub(crate) broker_cpu_s: Option<f64>,
    pub(crate) own_cpu_s: Option<f64>,
}

/// `utime + stime` in ticks from the text of a `/proc/<pid>/stat` file. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

impl Probe {
    pub(crate) fn new(broker_pid: Option<u32>) -> Probe {
        Probe { broker_pid }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: clock(),
            broker: self
                .broker_pid
                .map_or(CpuCounters::NONE, |pid| CpuCounters::read(&pid.to_string())),
            own: CpuCounters::read("self"),
        }
    }

    /// The broker's resident set size (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub(crate) fn broker_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.broker_pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Usage {
    pub(crate) fn between(start: &Snapshot, end: &Snapshot) -> Usage {
        Usage {
            wall_s: end.at.duration_since(start.at).as_secs_f64(),
            broker_cpu_s: start.broker.seconds_until(&end.broker),
            own_cpu_s: start.own.seconds_until(&end.own),
        }
    }
}

/// One measured figure set: a scenario (or one step of `scale`) against one back-end.
pub(crate) struct Record {
    pub(crate) scenario: String,
    pub(crate) backend: String,
    /// What was measured, for humans ("20000 requests after 2000 warm-up").
    pub(crate) detail: String,
    /// Metric names end in their unit; see [`lower_is_better`].
    pub(crate) metrics: Vec<(&'static str, f64)>,
    /// The metric that ranks NATS variants, then the metrics shown in the comparison.
    pub(crate) headline: &'static str,
    pub(crate) table: Vec<&'static str>,
    pub(crate) note: Option<&'static str>,
}

impl Record {
    pub(crate) fn new(scenario: impl Into<String>, backend: &str, detail: String) -> Record {
        Record {
            scenario: scenario.into(),
            backend: backend.to_owned(),
            detail,
            metrics: Vec::new(),
            headline: "",
            table: Vec::new(),
            note: None,
        }
    }

    pub(crate) fn metric(mut self, name: &'static str, value: f64) -> Record {
        self.metrics.push((name, value));
        self
    }

    /// Adds the CPU figures: broker CPU seconds per 1000 `ops`, and the harness's CPU use.
    pub(crate) fn cpu(mut self, usage: &Usage, ops: u64) -> Record {
        if let (Some(cpu), true) = (usage.broker_cpu_s, ops > 0) {
            self.metrics
                .push(("broker_cpu_s_per_1k", cpu * 1000.0 / ops as f64));
        }
        if let (Some(cpu), true) = (usage.own_cpu_s, usage.wall_s > 0.0) {
            self.metrics
                .push(("harness_cpu_pct", 100.0 * cpu / usage.wall_s));
        }
        self
    }

    pub(crate) fn compare_on(mut self, headline: &'static str, table: &[&'static str]) -> Record {
        self.headline = headline;
        self.table = table.to_vec();
        self
    }

    pub(crate) fn note(mut self, note: &'static str) -> Record {
        self.note = Some(note);
        self
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| *n == name).map(|m| m.1)
    }

    fn is_harness_saturated(&self) -> bool {
        self.get("harness_cpu_pct")
            .is_some_and(|pct| pct > SATURATED_PCT)
    }

    /// The human block.
    pub(crate) fn human(&self) -> String {
        let mut text = format!("== {} [{}]: {}\n", self.scenario, self.backend, self.detail);
        for (name, value) in &self.metrics {
            let _ = writeln!(text, "   {name:<22} {}", format_value(*value));
        }
        if self.is_harness_saturated() {
            let _ = writeln!(
                text,
                "   WARNING: the load generator used more than {SATURATED_PCT}% of a core: this \
                 figure may measure the harness"
            );
        }
        if let Some(note) = self.note {
            let _ = writeln!(text, "   note: {note}");
        }
        text
    }

    /// The machine-readable line (see the module docs).
    pub(crate) fn json(&self) -> String {
        let mut line = format!(
            "{{\"scenario\":\"{}\",\"backend\":\"{}\",\"headline\":\"{}\",\"table\":\"{}\"",
            escape(&self.scenario),
            escape(&self.backend),
            self.headline,
            self.table.join(",")
        );
        for (name, value) in &self.metrics {
            if value.is_finite() {
                let _ = write!(line, ",\"{name}\":{value}");
            }
        }
        let _ = write!(
            line,
            ",\"harness_saturated\":{}}}",
            self.is_harness_saturated()
        );
        line
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn format_value(value: f64) -> String {
    if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.4}")
    }
}

/// Direction of a metric, from its unit suffix: rates (`_per_s`) are better higher; times, memory
/// and CPU are better lower.
fn lower_is_better(metric: &str) -> bool {
    !metric.ends_with("_per_s")
}

// ---------------------------------------------------------------------------------------------
// compare: read JSON lines back, aggregate rounds, print the side-by-side table.

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Parses one flat JSON object of strings, numbers and booleans (what [`Record::json`] writes).
fn parse_flat_json(line: &str) -> Option<BTreeMap<String, Value>> {
    let mut rest = line.trim().strip_prefix('{')?.trim_start();
    let mut fields = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('}') {
        return after.trim().is_empty().then_some(fields);
    }
    loop {
        let (key, after_key) = parse_string(rest)?;
        rest = after_key.trim_start().strip_prefix(':')?.trim_start();
        let value;
        if rest.starts_with('"') {
            let (text, after) = parse_string(rest)?;
            value = Value::Text(text);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("true") {
            value = Value::Bool(true);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("false") {
            value = Value::Bool(false);
            rest = after;
        } else {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            value = Value::Number(rest[..end].trim().parse().ok()?);
            rest = &rest[end..];
        }
        fields.insert(key, value);
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start();
        } else {
            let after = rest.strip_prefix('}')?;
            return after.trim().is_empty().then_some(fields);
        }
    }
}

/// A JSON string at the start of `input` (escapes: `\"` and `\\` only, as we write them).
fn parse_string(input: &str) -> Option<(String, &str)> {
    let body = input.strip_prefix('"')?;
    let mut text = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((text, &body[i + 1..])),
            '\\' => text.push(chars.next()?.1),
            c => text.push(c),
        }
    }
    None
}

/// Median, minimum and maximum of a non-empty set of samples.
fn spread(samples: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return None,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some((median, sorted[0], sorted[n - 1]))
}

/// Every round of one scenario on one back-end label.
#[derive(Default)]
struct Runs {
    metrics: BTreeMap<String, Vec<f64>>,
    saturated: bool,
}

impl Runs {
    fn spread(&self, metric: &str) -> Option<(f64, f64, f64)> {
        spread(self.metrics.get(metric)?)
    }
}

struct ScenarioRuns {
    name: String,
    headline: String,
    table: Vec<String>,
    by_backend: BTreeMap<String, Runs>,
}

/// Reads the JSON lines of `paths` and prints one table: per scenario and metric, switchyard's
/// median (min–max over rounds), the better NATS variant's, and their ratio.
///
/// # Errors
/// A file that cannot be read.
pub(crate) fn compare(paths: &[std::path::PathBuf]) -> io::Result<String> {
    let mut scenarios: Vec<ScenarioRuns> = Vec::new();
    for path in paths {
        for line in fs::read_to_string(path)?.lines() {
            let Some(fields) = parse_flat_json(line) else {
                continue;
            };
            let text = |key: &str| match fields.get(key) {
                Some(Value::Text(t)) => t.clone(),
                _ => String::new(),
            };
            let name = text("scenario");
            let index = match scenarios.iter().position(|s| s.name == name) {
                Some(i) => i,
                None => {
                    scenarios.push(ScenarioRuns {
                        name: name.clone(),
                        headline: text("headline"),
                        table: text("table")
                            .split(',')
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        by_backend: BTreeMap::new(),
                    });
                    scenarios.len() - 1
                }
            };
            let runs = scenarios[index]
                .by_backend
                .entry(text("backend"))
                .or_default();
            for (key, value) in &fields {
                match value {
                    Value::Number(n) => runs.metrics.entry(key.clone()).or_default().push(*n),
                    Value::Bool(true) if key == "harness_saturated" => runs.saturated = true,
                    _ => {}
                }
            }
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<20} {:>28} {:>28} {:<17} {:>8}",
        "scenario",
        "metric",
        "switchyard med (min-max)",
        "NATS med (min-max)",
        "NATS variant",
        "sy/NATS"
    );
    let _ = writeln!(out, "{}", "-".repeat(128));
    for scenario in &scenarios {
        let switchyard = scenario.by_backend.get("switchyard");
        let best_nats = best_variant(scenario);
        let mut rows: Vec<&str> = scenario.table.iter().map(String::as_str).collect();
        rows.push("harness_cpu_pct");
        for metric in rows {
            let sy = switchyard.and_then(|r| r.spread(metric));
            let nats = best_nats.and_then(|(_, r)| r.spread(metric));
            if sy.is_none() && nats.is_none() {
                continue;
            }
            let cell = |s: Option<(f64, f64, f64)>, saturated: bool| match s {
                Some((med, min, max)) => format!(
                    "{}{} ({}-{})",
                    if saturated && metric != "harness_cpu_pct" {
                        "*"
                    } else {
                        ""
                    },
                    format_value(med),
                    format_value(min),
                    format_value(max)
                ),
                None => "-".to_owned(),
            };
            let ratio = match (sy, nats, metric) {
                (_, _, "harness_cpu_pct") => String::new(),
                (Some((a, _, _)), Some((b, _, _)), _) if b != 0.0 => format!("{:.2}", a / b),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<22} {:<20} {:>28} {:>28} {:<17} {:>8}",
                scenario.name,
                metric,
                cell(sy, switchyard.is_some_and(|r| r.saturated)),
                cell(nats, best_nats.is_some_and(|(_, r)| r.saturated)),
                best_nats.map_or("-", |(label, _)| label.as_str()),
                ratio
            );
        }
    }
    let _ = writeln!(
        out,
        "\nsy/NATS = switchyard median / NATS median: below 1 is better for switchyard on times, \
         memory and CPU (_us, _ms, _kib, _cpu), above 1 on rates (_per_s).\nNATS variant: the \
         better of the NATS runs (as installed, GOMAXPROCS=1) on the scenario's headline metric.\n\
         * = the load generator used more than {SATURATED_PCT}% of a core in some round: that \
         figure may measure the harness.\nfanout: switchyard broadcasts are acknowledged by every \
         peer (ACK frames, completion to the sender); NATS publishes without acks."
    );
    Ok(out)
}

/// The NATS label whose median headline figure is best for this scenario.
fn best_variant(scenario: &ScenarioRuns) -> Option<(&String, &Runs)> {
    let lower = lower_is_better(&scenario.headline);
    scenario
        .by_backend
        .iter()
        .filter(|(label, _)| label.starts_with("nats"))
        .filter_map(|(label, runs)| Some((label, runs, runs.spread(&scenario.headline)?.0)))
        .min_by(|a, b| {
            let order = a.2.total_cmp(&b.2);
            if lower {
                order
            } else {
                order.reverse()
            }
        })
        .map(|(label, runs, _)| (label, runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let record = Record::new("rr-latency", "nats-gomaxprocs1", String::new())
            .metric("p50_us", 12.5)
            .compare_on("p50_us", &["p50_us"]);
        let fields = parse_flat_json(&record.json()).unwrap();
        assert_eq!(fields["backend"], Value::Text("nats-gomaxprocs1".into()));
        assert_eq!(fields["p50_us"], Value::Number(12.5));
        assert_eq!(fields["harness_saturated"], Value::Bool(false));
    }

    #[test]
    fn median_of_even_and_odd_sets() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
    }
}
