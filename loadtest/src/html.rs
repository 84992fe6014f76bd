//! `--report out.html`: one self-contained page with the run's numbers and
//! a latency percentile plot drawn as inline SVG (no scripts, nothing
//! fetched from the network).
//!
//! The x axis is the percentile on a "nines" scale, `-log10(1 - p/100)`
//! (50 → 0.30, 99 → 2, 99.999 → 5), which spreads the tail the way
//! HdrHistogram plots do; the y axis is latency in µs from 0 to a round
//! bound. Pure: strings in, a string out.

use std::fmt::Write;

use serde_json::Value;

use crate::run::Latency;

/// Points on the plot.
pub const POINTS: usize = 61;

/// The percentiles sampled for the plot: [`P_MIN`] to [`P_MAX`], evenly
/// spaced in nines.
pub fn percentiles() -> [f64; POINTS] {
    std::array::from_fn(|i| percentile_at(i, POINTS))
}

/// Lowest percentile on the plot.
pub const P_MIN: f64 = 50.0;
/// Highest percentile on the plot.
pub const P_MAX: f64 = 99.999;

/// The percentile `i` of `n` evenly spaced points in nines between
/// [`P_MIN`] and [`P_MAX`].
pub fn percentile_at(i: usize, n: usize) -> f64 {
    let (lo, hi) = (nines(P_MIN), nines(P_MAX));
    let x = lo + (hi - lo) * i as f64 / (n.max(2) - 1) as f64;
    100.0 * (1.0 - 10f64.powf(-x))
}

/// `-log10(1 - p/100)`: 90 → 1, 99 → 2, 99.9 → 3.
pub fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-12).log10()
}

/// Maps percentiles and latencies to SVG coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Plot area: left, top, width, height (pixels).
    pub area: (f64, f64, f64, f64),
    /// The y axis' upper bound, µs (a round number).
    pub y_max: f64,
}

impl Scale {
    /// A scale for latencies up to `max_us` in the plot area `area`.
    pub fn new(area: (f64, f64, f64, f64), max_us: f64) -> Self {
        Self { area, y_max: round_up(max_us) }
    }

    /// The x pixel of percentile `p` (clamped to the axis).
    pub fn x(&self, p: f64) -> f64 {
        let (left, _, width, _) = self.area;
        let (lo, hi) = (nines(P_MIN), nines(P_MAX));
        left + width * ((nines(p) - lo) / (hi - lo)).clamp(0.0, 1.0)
    }

    /// The y pixel of `us` microseconds (0 at the bottom).
    pub fn y(&self, us: f64) -> f64 {
        let (_, top, _, height) = self.area;
        top + height * (1.0 - (us / self.y_max).clamp(0.0, 1.0))
    }
}

/// The smallest 1, 2 or 5 × 10^k at least `v` (1 for nothing positive).
pub fn round_up(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mut step = 10f64.powf(v.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0, 10.0] {
            if m * step >= v * (1.0 - 1e-9) {
                return m * step;
            }
        }
        step *= 10.0;
    }
}

/// One line on a plot: a name for the legend (none if empty), its colour
/// and its (percentile, µs) points.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// The legend's label; an empty name gets no legend entry.
    pub name: &'a str,
    /// An SVG colour, e.g. one of [`PALETTE`].
    pub colour: &'a str,
    /// (percentile, µs) points, in percentile order.
    pub curve: &'a [(f64, f64)],
}

/// Distinct line colours (Tableau 10), for series `i % 10`.
pub const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// The SVG percentile plot of one or more latency curves on shared axes
/// (the y axis fits the highest point of any), with a legend of the named
/// series in the top-left corner.
pub fn svg_plot(series: &[Series<'_>]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 380.0;
    let area = (70.0, 20.0, W - 100.0, H - 70.0);
    let max_us = series.iter().flat_map(|l| l.curve).map(|&(_, us)| us).fold(0.0, f64::max);
    let sc = Scale::new(area, max_us);
    let (left, top, width, height) = area;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ =
        write!(s, r##"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fafafa" stroke="#999"/>"##);
    for p in [50.0, 90.0, 99.0, 99.9, 99.99, 99.999] {
        let x = sc.x(p);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{p}</text>"##,
            top + height,
            top + height + 16.0
        );
    }
    for i in 0..=5 {
        let us = sc.y_max * f64::from(i) / 5.0;
        let y = sc.y(us);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + width,
            left - 6.0,
            y + 4.0,
            fmt_num(us)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">latency µs</text>"#,
        left + width / 2.0,
        H - 12.0,
        top + height / 2.0
    );
    for l in series.iter().filter(|l| !l.curve.is_empty()) {
        let _ = write!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2" points=""#, escape(l.colour));
        for &(p, us) in l.curve {
            let _ = write!(s, "{:.1},{:.1} ", sc.x(p), sc.y(us));
        }
        s.push_str(r#""/>"#);
    }
    let named: Vec<_> = series.iter().filter(|l| !l.name.is_empty()).collect();
    if !named.is_empty() {
        // Curves rise to the right, so the top-left corner is the emptiest.
        let longest = named.iter().map(|l| l.name.chars().count()).max().unwrap_or(0) as f64;
        let (x, y) = (left + 10.0, top + 10.0);
        let _ = write!(
            s,
            r##"<rect x="{x}" y="{y}" width="{:.1}" height="{:.1}" fill="#fff" fill-opacity="0.85" stroke="#ccc"/>"##,
            46.0 + 7.0 * longest,
            8.0 + 18.0 * named.len() as f64
        );
        for (i, l) in named.iter().enumerate() {
            let ly = y + 13.0 + 18.0 * i as f64;
            let _ = write!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 8.0,
                x + 32.0,
                x + 38.0,
                ly + 4.0,
                escape(l.name),
                c = escape(l.colour)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The start of a page: the document head (with the shared table style),
/// the opened body and `title` as its heading.
pub(crate) fn page_start(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}td.n{{text-align:right}}</style>\
         </head><body><h1>{t}</h1>\n",
        t = escape(title)
    )
}

/// The whole page of one run: a title, the report's fields as a table, and
/// the plot.
pub fn render(title: &str, report: &Value, latency: Option<&Latency>) -> String {
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let mut s = page_start(title);
    if let Some(l) = latency {
        let _ = write!(
            s,
            "<h2>Latency</h2><p>p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)</p>\n{}\n",
            fmt_num(l.p50),
            fmt_num(l.p90),
            fmt_num(l.p99),
            fmt_num(l.p999),
            fmt_num(l.max),
            l.samples,
            svg_plot(&[Series { name: "", colour: PALETTE[0], curve: &l.curve }])
        );
    }
    s.push_str("<h2>Numbers</h2><table><tr><th>field</th><th>value</th></tr>\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><td>{}</td><td class=\"n\">{}</td></tr>", escape(&k), escape(&v));
    }
    s.push_str("</table></body></html>\n");
    s
}

/// `(dotted key, value)` for every leaf of `v` that is not null.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            // The curves are plotted; a hundred numbers would bury the rest.
            for (k, v) in m.iter().filter(|(k, _)| *k != "curve") {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) if a.is_empty() => {}
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Number(n) => out.push((prefix.to_owned(), n.as_f64().map_or_else(|| n.to_string(), fmt_num))),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Bool(b) => out.push((prefix.to_owned(), b.to_string())),
    }
}

/// A number without a needless fraction.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// `s` safe in HTML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_x_axis_is_linear_in_nines() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        let sc = Scale::new((100.0, 0.0, 500.0, 100.0), 1.0);
        assert_eq!(sc.x(P_MIN), 100.0);
        assert!((sc.x(P_MAX) - 600.0).abs() < 1e-9);
        // Equal steps in nines are equal steps in pixels.
        let (a, b, c) = (sc.x(99.0), sc.x(99.9), sc.x(99.99));
        assert!(((b - a) - (c - b)).abs() < 1e-6, "{a} {b} {c}");
        // Outside the axis: clamped.
        assert_eq!(sc.x(10.0), 100.0);
        assert_eq!(sc.x(100.0), 600.0);
    }

    #[test]
    fn the_y_axis_ends_at_a_round_bound() {
        assert_eq!(round_up(0.0), 1.0);
        assert_eq!(round_up(1.0), 1.0);
        assert_eq!(round_up(1.2), 2.0);
        assert_eq!(round_up(3.0), 5.0);
        assert_eq!(round_up(734.0), 1000.0);
        assert_eq!(round_up(1000.0), 1000.0);
        assert_eq!(round_up(0.03), 0.05);
        let sc = Scale::new((0.0, 10.0, 100.0, 200.0), 734.0);
        assert_eq!(sc.y_max, 1000.0);
        assert_eq!(sc.y(0.0), 210.0);
        assert_eq!(sc.y(1000.0), 10.0);
        assert_eq!(sc.y(500.0), 110.0);
    }

    #[test]
    fn sampled_percentiles_span_the_axis_in_order() {
        let n = POINTS;
        let p = percentiles();
        assert!((p[0] - P_MIN).abs() < 1e-9 && (p[n - 1] - P_MAX).abs() < 1e-9);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let latency = Latency {
            samples: 3,
            p50: 10.0,
            p99: 20.0,
            max: 30.0,
            curve: vec![(50.0, 10.0), (99.0, 20.0), (99.999, 30.0)],
            ..Latency::default()
        };
        let report = serde_json::json!({
            "target": "<x>", "counts": {"lost": 0}, "skipped_null": null,
            "latency_us": {"p50": 10.0, "curve": [[50.0, 10.0]]},
        });
        let page = render("a & b", &report, Some(&latency));
        assert!(page.contains("<title>a &amp; b</title>"));
        assert!(page.contains("<td>counts.lost</td><td class=\"n\">0</td>"));
        assert!(page.contains("&lt;x&gt;") && !page.contains("skipped_null"));
        assert!(page.contains("<svg") && page.contains("<polyline"));
        assert!(!page.contains("<script"));
        // The curve is plotted, not listed; one run's plot has no legend.
        assert!(page.contains("<td>latency_us.p50</td>") && !page.contains("curve"));
        assert!(!page.contains(r#"stroke-width="3""#));
    }

    #[test]
    fn several_series_share_the_axes_and_each_name_has_a_legend_entry() {
        let (a, b) = ([(50.0, 10.0), (99.0, 20.0)], [(50.0, 30.0), (99.0, 734.0)]);
        let svg = svg_plot(&[
            Series { name: "sb", colour: PALETTE[0], curve: &a },
            Series { name: "n<1>", colour: PALETTE[1], curve: &b },
            Series { name: "no samples", colour: PALETTE[2], curve: &[] },
        ]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches(r#"stroke-width="3""#).count(), 3);
        assert!(svg.contains(">sb</text>") && svg.contains(">n&lt;1&gt;</text>") && svg.contains(">no samples</text>"));
        for c in &PALETTE[..2] {
            assert!(svg.contains(&format!(r#"<polyline fill="none" stroke="{c}""#)), "{c}");
        }
        // The y axis fits the highest curve: 734 µs → 1000.
        assert!(svg.contains(">1000</text>") && !svg.contains(">2000</text>"));
    }
}
