//! `loadtest report`: one page from many runs. It reads the JSON lines that
//! `bench/compare.sh` collects (each run's `--json` report, with `target`
//! and `workload` set to the labels of the server and the workload) and
//! renders the comparison: tables of medians across runs (with ranges) per
//! workload and server, [`BASELINE`]'s ratio to every other server, and per
//! workload one percentile plot with every server's median curve, drawn by
//! [`html::svg_plot`].
//!
//! Rendering is pure (runs in, strings out); only [`run_report`] reads and
//! writes files. It measures nothing and talks to no server.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::html::{self, PALETTE, Series, escape};
use crate::run::Latency;

/// The server the ratio table divides by every other one.
pub const BASELINE: &str = "switchboard";

/// Flags of `loadtest report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The runs: one `--json` report per line, each with `target` and
    /// `workload` labels (bench/compare.sh's results.jsonl).
    #[arg(value_name = "RESULTS_JSONL")]
    pub results: PathBuf,
    /// Write the HTML page (tables, one latency plot per workload, links to
    /// the runs' own reports) to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write the markdown tables to this file (default: standard output).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// The runs' own HTML reports, relative to the page's directory: the
    /// page links every *.html file in it.
    #[arg(long, value_name = "DIR", default_value = "reports")]
    pub runs_dir: PathBuf,
}

/// Runs `loadtest report`.
pub fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let path = &args.results;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let runs = parse(&text).with_context(|| path.display().to_string())?;
    let summary = markdown(&runs);
    match &args.markdown {
        Some(p) => std::fs::write(p, summary).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{summary}"),
    }
    if let Some(p) = &args.html {
        let dir = p.parent().unwrap_or(Path::new(""));
        let reports = run_reports(&dir.join(&args.runs_dir))?;
        let page = page(&runs, &args.runs_dir.to_string_lossy(), &reports);
        std::fs::write(p, page).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// One run, as the report reads it.
#[derive(Debug, Clone)]
pub struct Run {
    /// The server's label (`nats-ws`).
    pub target: String,
    /// The workload's label (`rate-20000`).
    pub workload: String,
    /// What it measured.
    pub measured: Measured,
}

/// What a run measured, told apart by the fields of its report.
#[derive(Debug, Clone)]
pub enum Measured {
    /// Messages: `pairs` and `mesh` (`delivered_per_s`), `fanout`
    /// (`deliveries_per_s`); the failures are the messages lost.
    Flow(Throughput),
    /// Handshakes: `connect` (`connects_per_s`); the failures are the
    /// failed handshakes.
    Connect(Throughput),
    /// Server memory per idle connection: `idle` (`bytes_per_connection`).
    Idle(Idle),
    /// Anything else (e.g. `sink`): in no table.
    Other,
}

/// A rate with its latency: messages or handshakes.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Messages delivered (or handshakes completed) per second.
    pub per_s: f64,
    /// Their latency.
    pub latency: Latency,
    /// Messages lost (or handshakes failed).
    pub failed: u64,
    /// The server's CPU use, percent of one core, if it was sampled.
    pub cpu_server_pct: Option<f64>,
    /// The generator may have been the limit (`generator_limited`).
    pub generator_limited: bool,
}

/// An `idle` run.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Server RSS growth per open connection, bytes.
    pub bytes_per_connection: f64,
    /// Connections open after the settle time.
    pub open: u64,
    /// Connections asked for.
    pub connections: u64,
}

impl Measured {
    /// The rate and latency of a flow or connect run.
    pub fn throughput(&self) -> Option<&Throughput> {
        match self {
            Self::Flow(t) | Self::Connect(t) => Some(t),
            Self::Idle(_) | Self::Other => None,
        }
    }
}

/// Reads JSON lines into runs, skipping blank lines. An error names the
/// line (counted from 1).
pub fn parse(text: &str) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let run = serde_json::from_str::<Line>(line)
            .map_err(anyhow::Error::from)
            .and_then(Run::try_from)
            .with_context(|| format!("line {}", i + 1))?;
        runs.push(run);
    }
    Ok(runs)
}

/// The fields of a JSON line that the report reads (any others are
/// ignored).
#[derive(Deserialize)]
struct Line {
    target: String,
    workload: String,
    delivered_per_s: Option<f64>,
    deliveries_per_s: Option<f64>,
    latency_us: Option<Latency>,
    lost: Option<u64>,
    connects_per_s: Option<f64>,
    handshake_latency_us: Option<Latency>,
    failures: Option<u64>,
    cpu_server_pct: Option<f64>,
    /// Absent from runs older than the flag.
    #[serde(default)]
    generator_limited: bool,
    bytes_per_connection: Option<f64>,
    open: Option<u64>,
    connections: Option<u64>,
}

impl TryFrom<Line> for Run {
    type Error = anyhow::Error;

    fn try_from(l: Line) -> anyhow::Result<Self> {
        let (cpu_server_pct, generator_limited) = (l.cpu_server_pct, l.generator_limited);
        // A rate needs its latency and its failures; the keys name them in errors.
        let throughput = |per_s, latency: Option<Latency>, failed: Option<u64>, keys: [&str; 2]| {
            anyhow::Ok(Throughput {
                per_s,
                latency: latency.with_context(|| format!("{} missing", keys[0]))?,
                failed: failed.with_context(|| format!("{} missing", keys[1]))?,
                cpu_server_pct,
                generator_limited,
            })
        };
        let measured = if let Some(per_s) = l.delivered_per_s.or(l.deliveries_per_s) {
            Measured::Flow(throughput(per_s, l.latency_us, l.lost, ["latency_us", "lost"])?)
        } else if let Some(per_s) = l.connects_per_s {
            Measured::Connect(throughput(
                per_s,
                l.handshake_latency_us,
                l.failures,
                ["handshake_latency_us", "failures"],
            )?)
        } else if let Some(bytes_per_connection) = l.bytes_per_connection {
            Measured::Idle(Idle {
                bytes_per_connection,
                open: l.open.context("open missing")?,
                connections: l.connections.context("connections missing")?,
            })
        } else {
            Measured::Other
        };
        Ok(Self { target: l.target, workload: l.workload, measured })
    }
}

/// The runs of one workload on one server.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// The workload's label.
    pub workload: &'a str,
    /// The server's label.
    pub target: &'a str,
    /// Its runs, in file order.
    pub runs: Vec<&'a Run>,
}

/// The runs grouped by workload, then server, each in order of first
/// appearance: the servers of one workload stand together.
pub fn groups(runs: &[Run]) -> Vec<Group<'_>> {
    let targets = first_seen(runs.iter().map(|r| r.target.as_str()));
    let mut groups = Vec::new();
    for workload in first_seen(runs.iter().map(|r| r.workload.as_str())) {
        for &target in &targets {
            let of: Vec<&Run> = runs.iter().filter(|r| r.workload == workload && r.target == target).collect();
            if !of.is_empty() {
                groups.push(Group { workload, target, runs: of });
            }
        }
    }
    groups
}

/// The distinct labels, in order of first appearance.
fn first_seen<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for l in labels {
        if !seen.contains(&l) {
            seen.push(l);
        }
    }
    seen
}

/// The median (the mean of the middle two for an even count), `None` for
/// no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Median, smallest and largest of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, `None` for none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let median = median(values)?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self { median, min, max })
    }

    /// `12,345 (12,001–13,020)`, with `decimals` digits after the point.
    pub fn cell(&self, decimals: usize) -> String {
        format!("{} ({}–{})", grouped(self.median, decimals), grouped(self.min, decimals), grouped(self.max, decimals))
    }
}

/// The medians of one group's flow or connect runs.
#[derive(Debug, Clone, Copy)]
struct Summary {
    connect: bool,
    per_s: Spread,
    p50: f64,
    p99: f64,
    p999: f64,
    failed: u64,
    cpu_server_pct: Option<f64>,
    /// Runs whose generator may have been the limit, of `runs`.
    generator_limited: usize,
    runs: usize,
}

impl Summary {
    /// `None` unless the group has flow or connect runs.
    fn of(g: &Group<'_>) -> Option<Self> {
        let ts: Vec<&Throughput> = g.runs.iter().filter_map(|r| r.measured.throughput()).collect();
        let values = |f: fn(&Throughput) -> f64| ts.iter().map(|t| f(t)).collect::<Vec<_>>();
        let med = |f: fn(&Throughput) -> f64| median(&values(f)).unwrap_or(f64::NAN);
        Some(Self {
            connect: g.runs.iter().any(|r| matches!(r.measured, Measured::Connect(_))),
            per_s: Spread::of(&values(|t| t.per_s))?,
            p50: med(|t| t.latency.p50),
            p99: med(|t| t.latency.p99),
            p999: med(|t| t.latency.p999),
            failed: ts.iter().map(|t| t.failed).sum(),
            cpu_server_pct: median(&ts.iter().filter_map(|t| t.cpu_server_pct).collect::<Vec<_>>()),
            generator_limited: ts.iter().filter(|t| t.generator_limited).count(),
            runs: ts.len(),
        })
    }
}

/// A table of text cells. The first two columns are labels (workload and
/// server), the others numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// What the table shows.
    pub caption: String,
    /// The column headings.
    pub header: Vec<String>,
    /// The rows, as many cells each as the header.
    pub rows: Vec<Vec<String>>,
}

/// The summary tables, those that have rows: flow runs, connect runs, idle
/// runs, and the ratios of [`BASELINE`] to the other servers.
pub fn tables(runs: &[Run]) -> Vec<Table> {
    let groups = groups(runs);
    let summaries: Vec<(&Group<'_>, Summary)> = groups.iter().filter_map(|g| Some((g, Summary::of(g)?))).collect();
    let flow = throughput_table(
        &summaries,
        false,
        "Messages: medians across runs",
        ["delivered/s (median, range)", "p50 µs", "p99 µs", "p99.9 µs", "lost", "server CPU %"],
    );
    let connect = throughput_table(
        &summaries,
        true,
        "Connections: medians across runs",
        [
            "connects/s (median, range)",
            "handshake p50 µs",
            "handshake p99 µs",
            "handshake p99.9 µs",
            "failures",
            "server CPU %",
        ],
    );
    [flow, connect, idle_table(&groups), ratio_table(&summaries)].into_iter().flatten().collect()
}

/// The flow (`connect` false) or connect table.
fn throughput_table(
    summaries: &[(&Group<'_>, Summary)],
    connect: bool,
    caption: &str,
    columns: [&str; 6],
) -> Option<Table> {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .filter(|(_, s)| s.connect == connect)
        .map(|(g, s)| {
            let target = match s.generator_limited {
                0 => g.target.to_owned(),
                n => format!("{} (generator-limited in {n} of {} runs)", g.target, s.runs),
            };
            vec![
                g.workload.to_owned(),
                target,
                s.per_s.cell(0),
                grouped(s.p50, 1),
                grouped(s.p99, 1),
                grouped(s.p999, 1),
                grouped(s.failed as f64, 0),
                s.cpu_server_pct.map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
            ]
        })
        .collect();
    table(caption, columns, rows)
}

/// The idle table.
fn idle_table(groups: &[Group<'_>]) -> Option<Table> {
    let rows = groups
        .iter()
        .filter_map(|g| {
            let idle: Vec<&Idle> = g
                .runs
                .iter()
                .filter_map(|r| match &r.measured {
                    Measured::Idle(i) => Some(i),
                    _ => None,
                })
                .collect();
            let bytes = Spread::of(&idle.iter().map(|i| i.bytes_per_connection).collect::<Vec<_>>())?;
            let open = idle.iter().map(|i| i.open).min()?;
            Some(vec![
                g.workload.to_owned(),
                g.target.to_owned(),
                bytes.cell(0),
                format!("{} of {}", grouped(open as f64, 0), grouped(idle[0].connections as f64, 0)),
            ])
        })
        .collect();
    table(
        "Idle connections: medians across runs",
        ["RSS bytes per idle connection (median, range)", "connections open after settle (fewest)"],
        rows,
    )
}

/// [`BASELINE`]'s medians divided by every other server's, per flow and
/// connect workload: the rate and the p99.
fn ratio_table(summaries: &[(&Group<'_>, Summary)]) -> Option<Table> {
    let targets = first_seen(summaries.iter().map(|(g, _)| g.target));
    let others: Vec<&str> = targets.into_iter().filter(|&t| t != BASELINE).collect();
    if others.is_empty() {
        return None;
    }
    let of = |workload: &str, target: &str| {
        summaries.iter().find(|(g, _)| g.workload == workload && g.target == target).map(|&(_, s)| s)
    };
    let mut rows = Vec::new();
    for (g, base) in summaries.iter().filter(|(g, _)| g.target == BASELINE) {
        let ratios =
            |f: fn(&Summary) -> f64| others.iter().map(move |&o| ratio(f(base), of(g.workload, o).map(|s| f(&s))));
        let rate = if base.connect { "connects/s" } else { "delivered/s" };
        let p99 = if base.connect { "handshake p99 µs" } else { "p99 µs" };
        rows.push([g.workload.to_owned(), rate.to_owned()].into_iter().chain(ratios(|s| s.per_s.median)).collect());
        rows.push([g.workload.to_owned(), p99.to_owned()].into_iter().chain(ratios(|s| s.p99)).collect());
    }
    let mut header = vec!["workload".to_owned(), "median of".to_owned()];
    header.extend(others.iter().map(|o| format!("{BASELINE} / {o}")));
    let caption = format!(
        "{BASELINE} against each server: its median divided by theirs \
         (a rate above 1× or a p99 below 1× is {BASELINE} ahead)"
    );
    (!rows.is_empty()).then_some(Table { caption, header, rows })
}

/// `a / b` as `1.80×`, `-` where there is no `b` (or it is zero).
fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && (a / b).is_finite() => format!("{:.2}×", a / b),
        _ => "-".to_owned(),
    }
}

/// A table with the label columns and `columns` as its header; `None`
/// without rows.
fn table<const N: usize>(caption: &str, columns: [&str; N], rows: Vec<Vec<String>>) -> Option<Table> {
    let header = ["workload", "server"].into_iter().chain(columns).map(str::to_owned).collect();
    (!rows.is_empty()).then(|| Table { caption: caption.to_owned(), header, rows })
}

/// `v` with `decimals` digits after the point and its thousands grouped:
/// `12,345.6`.
pub fn grouped(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let mut out = String::new();
    if v < 0.0 && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        out.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// summary.md: the [`tables`] in markdown, each under its caption.
pub fn markdown(runs: &[Run]) -> String {
    let tables = tables(runs);
    if tables.is_empty() {
        return "No flow, connect or idle runs to summarise.\n".to_owned();
    }
    let mut s = String::new();
    for (i, t) in tables.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "### {}\n", t.caption);
        let cells = |cells: &[String]| cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | ");
        let _ = writeln!(s, "| {} |", cells(&t.header));
        let rule: Vec<&str> = (0..t.header.len()).map(|i| if i < 2 { "---" } else { "---:" }).collect();
        let _ = writeln!(s, "|{}|", rule.join("|"));
        for row in &t.rows {
            let _ = writeln!(s, "| {} |", cells(row));
        }
    }
    s
}

/// index.html: the [`tables`], one latency plot per workload with every
/// server's median curve (the same colour for a server on every plot), and
/// links to the runs' own reports, `reports` (file names) in `runs_dir`.
/// Self-contained: no scripts, nothing fetched.
pub fn page(runs: &[Run], runs_dir: &str, reports: &[String]) -> String {
    let mut s = html::page_start("Switchboard side-by-side");
    let targets = first_seen(runs.iter().map(|r| r.target.as_str()));
    let _ = writeln!(
        s,
        "<p>{} runs of {}. Medians across each server's runs of a workload, ranges in brackets.</p>",
        runs.len(),
        escape(&targets.join(", "))
    );
    for t in tables(runs) {
        let _ = writeln!(s, "<h2>{}</h2><table>", escape(&t.caption));
        let th: String = t.header.iter().map(|h| format!("<th>{}</th>", escape(h))).collect();
        let _ = writeln!(s, "<tr>{th}</tr>");
        for row in &t.rows {
            let td: String = row
                .iter()
                .enumerate()
                .map(|(i, c)| format!("<td{}>{}</td>", if i < 2 { "" } else { " class=\"n\"" }, escape(c)))
                .collect();
            let _ = writeln!(s, "<tr>{td}</tr>");
        }
        s.push_str("</table>\n");
    }
    let groups = groups(runs);
    let mut plotted = Vec::new();
    for workload in first_seen(groups.iter().map(|g| g.workload)) {
        let curves: Vec<(&str, Vec<(f64, f64)>)> = groups
            .iter()
            .filter(|g| g.workload == workload)
            .map(|g| (g.target, median_curve(g.runs.iter().filter_map(|r| r.measured.throughput()))))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if curves.is_empty() {
            continue;
        }
        let series: Vec<Series<'_>> = curves
            .iter()
            .map(|(target, curve)| Series {
                name: target,
                colour: PALETTE[targets.iter().position(|t| t == target).unwrap_or(0) % PALETTE.len()],
                curve,
            })
            .collect();
        let what = match groups.iter().find(|g| g.workload == workload).map(|g| &g.runs[0].measured) {
            Some(Measured::Connect(_)) => "handshake latency",
            _ => "latency",
        };
        plotted.push(format!("<h3>{}: {what}</h3>\n{}\n", escape(workload), html::svg_plot(&series)));
    }
    if !plotted.is_empty() {
        s.push_str("<h2>Latency percentiles (median of each server's runs)</h2>\n");
        s.extend(plotted);
    }
    if !reports.is_empty() {
        s.push_str("<h2>Runs</h2><ul>\n");
        let dir = runs_dir.trim_end_matches('/');
        for name in reports {
            let href = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
            let _ = writeln!(s, "<li><a href=\"{}\">{}</a></li>", escape(&url_path(&href)), escape(name));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body></html>\n");
    s
}

/// Per percentile, the median of the runs' latencies there (runs share
/// [`html::percentiles`]; a point some runs lack is the median of those
/// that have it). Empty if no run has a curve.
pub fn median_curve<'a>(runs: impl IntoIterator<Item = &'a Throughput>) -> Vec<(f64, f64)> {
    // Keyed by the percentile in millionths, the precision of the JSON.
    let mut points: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for t in runs {
        for &(p, us) in &t.latency.curve {
            points.entry((p * 1e6).round() as i64).or_default().push(us);
        }
    }
    points.into_iter().filter_map(|(p, us)| Some((p as f64 / 1e6, median(&us)?))).collect()
}

/// The names of the `*.html` files in `dir`, sorted; none if there is no
/// such directory.
fn run_reports(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        if let Some(name) = name.to_str().filter(|n| n.ends_with(".html"))
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// A relative path as a URL path: bytes other than letters, digits, `-._~/`
/// percent-encoded.
fn url_path(path: &str) -> String {
    let mut s = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow line (`delivered_per_s`) with a two-point curve at 2×p50.
    fn flow(target: &str, workload: &str, per_s: f64, p50: f64, lost: u64, cpu: Option<f64>) -> String {
        serde_json::json!({
            "target": target, "workload": workload, "delivered_per_s": per_s, "lost": lost,
            "cpu_server_pct": cpu,
            "latency_us": {"p50": p50, "p99": 2.0 * p50, "p999": 3.0 * p50, "curve": [[50.0, p50], [99.0, 2.0 * p50]]},
        })
        .to_string()
    }

    fn connect(target: &str, per_s: f64, p50: f64, failures: u64) -> String {
        serde_json::json!({
            "target": target, "workload": "connect-4", "connects_per_s": per_s, "failures": failures,
            "cpu_server_pct": null,
            "handshake_latency_us": {"p50": p50, "p99": 10.0 * p50, "p999": 20.0 * p50, "curve": [[50.0, p50]]},
        })
        .to_string()
    }

    fn idle(target: &str, bytes: f64, open: u64) -> String {
        serde_json::json!({
            "target": target, "workload": "idle-100", "bytes_per_connection": bytes, "open": open, "connections": 100,
        })
        .to_string()
    }

    fn runs(lines: &[String]) -> Vec<Run> {
        parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let s = Spread::of(&[12_001.0, 13_020.4, 12_345.0]).unwrap();
        assert_eq!(s, Spread { median: 12_345.0, min: 12_001.0, max: 13_020.4 });
        assert_eq!(s.cell(0), "12,345 (12,001–13,020)");
        assert_eq!(grouped(1_234_567.891, 1), "1,234,567.9");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(-1234.0, 0), "-1,234");
        assert_eq!(grouped(f64::NAN, 1), "-");
    }

    #[test]
    fn groups_by_workload_then_server_in_order_of_first_appearance() {
        let rs = runs(&[
            flow("switchboard", "max", 1.0, 1.0, 0, None),
            flow("switchboard", "rate", 1.0, 1.0, 0, None),
            flow("nats-ws", "max", 1.0, 1.0, 0, None),
            flow("nats-ws", "rate", 1.0, 1.0, 0, None),
            flow("switchboard", "max", 1.0, 1.0, 0, None),
            flow("nats-ws", "max", 1.0, 1.0, 0, None),
        ]);
        let g: Vec<_> = groups(&rs).iter().map(|g| (g.workload, g.target, g.runs.len())).collect();
        assert_eq!(
            g,
            [("max", "switchboard", 2), ("max", "nats-ws", 2), ("rate", "switchboard", 1), ("rate", "nats-ws", 1)]
        );
    }

    #[test]
    fn the_flow_table_has_medians_ranges_sums_and_a_missing_cpu() {
        let rs = runs(&[
            flow("switchboard", "max", 30_000.0, 10.0, 1, Some(90.0)),
            flow("switchboard", "max", 10_000.0, 30.0, 2, Some(70.0)),
            flow("switchboard", "max", 20_000.0, 20.0, 0, None),
            flow("nats-ws", "max", 5_000.0, 40.0, 0, None),
        ]);
        let t = &tables(&rs)[0];
        assert_eq!(t.header.len(), 8);
        assert_eq!(t.rows[0], ["max", "switchboard", "20,000 (10,000–30,000)", "20.0", "40.0", "60.0", "3", "80"]);
        assert_eq!(t.rows[1][7], "-");
        let md = markdown(&rs);
        assert!(md.contains("| max | switchboard | 20,000 (10,000–30,000) | 20.0 | 40.0 | 60.0 | 3 | 80 |"), "{md}");
        assert!(md.contains("|---|---|---:|---:|---:|---:|---:|---:|"), "{md}");
    }

    #[test]
    fn runs_whose_generator_was_the_limit_are_marked() {
        let mut limited: serde_json::Value =
            serde_json::from_str(&flow("nats-ws", "max", 5_000.0, 40.0, 0, None)).unwrap();
        limited["generator_limited"] = serde_json::Value::Bool(true);
        let rs = runs(&[
            limited.to_string(),
            flow("nats-ws", "max", 6_000.0, 40.0, 0, None),
            flow("switchboard", "max", 7_000.0, 40.0, 0, None),
        ]);
        let t = &tables(&rs)[0];
        assert_eq!(t.rows[0][1], "nats-ws (generator-limited in 1 of 2 runs)");
        assert_eq!(t.rows[1][1], "switchboard");
    }

    #[test]
    fn the_ratio_divides_switchboards_medians_by_each_others() {
        let rs = runs(&[
            flow("switchboard", "max", 36_000.0, 10.0, 0, None),
            flow("nats-ws", "max", 20_000.0, 20.0, 0, None),
            flow("mosquitto-ws", "max", 3_000.0, 5.0, 0, None),
            flow("switchboard", "rate", 1_000.0, 10.0, 0, None),
            connect("switchboard", 900.0, 100.0, 0),
            connect("nats-ws", 300.0, 100.0, 0),
        ]);
        let t = tables(&rs).into_iter().find(|t| t.caption.contains("divided")).unwrap();
        assert_eq!(t.header, ["workload", "median of", "switchboard / nats-ws", "switchboard / mosquitto-ws"]);
        assert_eq!(t.rows[0], ["max", "delivered/s", "1.80×", "12.00×"]);
        assert_eq!(t.rows[1], ["max", "p99 µs", "0.50×", "2.00×"]);
        // A workload the others did not run.
        assert_eq!(t.rows[2], ["rate", "delivered/s", "-", "-"]);
        assert_eq!(t.rows[4], ["connect-4", "connects/s", "3.00×", "-"]);
        assert_eq!(t.rows[5], ["connect-4", "handshake p99 µs", "1.00×", "-"]);
        assert_eq!(t.rows.len(), 6);
        // Without switchboard, or with it alone, there is no ratio.
        let alone = runs(&[flow("switchboard", "max", 1.0, 1.0, 0, None)]);
        assert!(tables(&alone).iter().all(|t| !t.caption.contains("divided")));
        let without = runs(&[flow("nats", "max", 1.0, 1.0, 0, None), flow("mosquitto", "max", 1.0, 1.0, 0, None)]);
        assert!(tables(&without).iter().all(|t| !t.caption.contains("divided")));
    }

    #[test]
    fn connect_and_idle_tables() {
        let rs = runs(&[
            connect("switchboard", 1_500.0, 200.0, 1),
            connect("switchboard", 2_500.0, 400.0, 2),
            idle("switchboard", 3_000.0, 100),
            idle("switchboard", 1_000.0, 98),
            idle("switchboard", 2_000.0, 99),
        ]);
        let ts = tables(&rs);
        assert_eq!(ts.len(), 2, "{ts:?}");
        assert_eq!(ts[0].header[2], "connects/s (median, range)");
        assert_eq!(
            ts[0].rows,
            [["connect-4", "switchboard", "2,000 (1,500–2,500)", "300.0", "3,000.0", "6,000.0", "3", "-"]]
        );
        assert_eq!(ts[1].rows, [["idle-100", "switchboard", "2,000 (1,000–3,000)", "98 of 100"]]);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let text = format!("{}\n\n{}\nnot json\n", flow("a", "max", 1.0, 1.0, 0, None), idle("a", 1.0, 1));
        assert_eq!(parse(&format!("\n{}\n  \n", idle("a", 1.0, 1))).unwrap().len(), 1);
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.starts_with("line 4: "), "{err}");
        let err = format!("{:#}", parse(r#"{"target": "a", "workload": "b", "delivered_per_s": 1}"#).unwrap_err());
        assert!(err.starts_with("line 1: ") && err.contains("latency_us"), "{err}");
        let err = format!("{:#}", parse(r#"{"workload": "b"}"#).unwrap_err());
        assert!(err.contains("target"), "{err}");
    }

    #[test]
    fn the_curve_is_the_median_of_the_runs_at_each_percentile() {
        let rs = runs(&[
            flow("a", "max", 1.0, 10.0, 0, None),
            flow("a", "max", 1.0, 30.0, 0, None),
            flow("a", "max", 1.0, 20.0, 0, None),
        ]);
        let curve = median_curve(rs.iter().filter_map(|r| r.measured.throughput()));
        assert_eq!(curve, [(50.0, 20.0), (99.0, 40.0)]);
        assert!(median_curve(std::iter::empty()).is_empty());
    }

    #[test]
    fn the_page_plots_each_workload_once_with_a_line_per_server() {
        let rs = runs(&[
            flow("switchboard", "max", 2.0, 10.0, 0, None),
            flow("nats-ws", "max", 1.0, 20.0, 0, None),
            flow("<m>", "max", 1.0, 30.0, 0, None),
            connect("nats-ws", 1.0, 5.0, 0),
            idle("nats-ws", 1.0, 1),
        ]);
        let reports = ["001-a b.html".to_owned(), "002-c.html".to_owned()];
        let page = page(&rs, "reports/", &reports);
        assert_eq!(page.matches("<svg").count(), 2, "max and connect-4; idle has no curve");
        assert_eq!(page.matches("<polyline").count(), 4);
        assert!(page.contains("<h3>max: latency</h3>") && page.contains("<h3>connect-4: handshake latency</h3>"));
        // One colour per server on every plot: nats-ws is the second.
        assert_eq!(page.matches(&format!("stroke=\"{}\" stroke-width=\"2\"", PALETTE[1])).count(), 2);
        assert!(page.contains(">&lt;m&gt;</text>") && !page.contains("<m>"));
        assert!(page.contains(r#"<a href="reports/001-a%20b.html">001-a b.html</a>"#), "{page}");
        assert!(page.contains("<th>p99 µs</th>") && page.contains("<td class=\"n\">"));
        assert!(!page.contains("<script") && !page.contains(" src=") && !page.contains("<link"));
    }
}
