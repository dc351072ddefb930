//! Printing: the machine, per-section tables and the closing summary.

use std::path::Path;
use std::time::Duration;

use crate::Opts;

/// One line of the closing summary.
struct Row {
    section: &'static str,
    metric: String,
    measured: String,
    baseline: String,
    ratio: f64,
    target: Target,
}

/// How a ratio is judged.
#[derive(Clone, Copy)]
pub enum Target {
    /// The ratio must be at least this.
    AtLeast(f64),
    /// The ratio must be at most this.
    AtMost(f64),
    /// Reported for context only.
    Info,
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
            Target::Info => "-".into(),
        }
    }

    fn verdict(self, ratio: f64) -> &'static str {
        match self {
            Target::AtLeast(t) if ratio >= t => "met",
            Target::AtMost(t) if ratio <= t => "met",
            Target::Info => "info",
            _ => "MISSED",
        }
    }
}

/// Every ratio of the run.
#[derive(Default)]
pub struct Summary {
    rows: Vec<Row>,
}

impl Summary {
    /// Records `measured / baseline` (already divided into `ratio`).
    pub fn add(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        measured: impl Into<String>,
        baseline: impl Into<String>,
        ratio: f64,
        target: Target,
    ) {
        let row = Row {
            section,
            metric: metric.into(),
            measured: measured.into(),
            baseline: baseline.into(),
            ratio,
            target,
        };
        println!(
            "  => {}: {} vs {} = {:.3} (target {}: {})",
            row.metric,
            row.measured,
            row.baseline,
            row.ratio,
            row.target.describe(),
            row.target.verdict(row.ratio)
        );
        self.rows.push(row);
    }

    /// The closing table, in Markdown.
    pub fn print(&self) {
        println!("\n== summary ==\n");
        println!(
            "Throughput ratios are the median of per-round ratios (variants interleaved round \
             by round); latency ratios compare pooled p50s. CPU/req is the whole machine's busy \
             CPU time per request (client, servers, and anything else running).\n"
        );
        println!("| section | metric | measured | baseline | ratio | target | verdict |");
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {:.3} | {} | {} |",
                r.section,
                r.metric,
                r.measured,
                r.baseline,
                r.ratio,
                r.target.describe(),
                r.target.verdict(r.ratio)
            );
        }
    }
}

/// A section heading.
pub fn heading(section: &str) {
    println!("\n== {section} ==  (load average {})", loadavg());
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The machine and the knobs, once at the start.
pub fn machine(binary: &Path, opts: &Opts) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or_else(
            || "?".into(),
            |age| format!("{:.0} min ago", age.as_secs_f64() / 60.0),
        );
    println!("== tenant plane benchmark ==");
    println!("cpu:        {cores} × {model}");
    println!("memory:     {memory}");
    println!(
        "load avg:   {} (client, servers and anything else share these cores)",
        loadavg()
    );
    println!("server:     {} (built {built})", binary.display());
    println!(
        "knobs:      vectors={} queries={} concurrency={} window={:?} rounds={} spread={} decay={}",
        opts.vectors,
        opts.queries,
        opts.concurrency,
        opts.window,
        opts.rounds,
        opts.spread,
        opts.decay
    );
}

/// The `p`-quantile (0–1) of sorted microsecond samples.
pub fn quantile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_micros(u64::from(sorted[rank.min(sorted.len() - 1)]))
}

/// A duration in milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}
