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

/// The SVG plot of a latency curve of (percentile, µs) points.
pub fn svg_plot(curve: &[(f64, f64)]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 380.0;
    let area = (70.0, 20.0, W - 100.0, H - 70.0);
    let max_us = curve.iter().map(|&(_, us)| us).fold(0.0, f64::max);
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
    if !curve.is_empty() {
        s.push_str(r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points=""##);
        for &(p, us) in curve {
            let _ = write!(s, "{:.1},{:.1} ", sc.x(p), sc.y(us));
        }
        s.push_str(r#""/>"#);
    }
    s.push_str("</svg>");
    s
}

/// The whole page: a title, the report's fields as a table, and the plot.
pub fn render(title: &str, report: &Value, latency: Option<&Latency>) -> String {
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}td.n{{text-align:right}}</style>\
         </head><body><h1>{t}</h1>\n",
        t = escape(title)
    );
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
            svg_plot(&l.curve)
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
            for (k, v) in m {
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

fn escape(s: &str) -> String {
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
        let report = serde_json::json!({"target": "<x>", "counts": {"lost": 0}, "skipped_null": null});
        let page = render("a & b", &report, Some(&latency));
        assert!(page.contains("<title>a &amp; b</title>"));
        assert!(page.contains("<td>counts.lost</td><td class=\"n\">0</td>"));
        assert!(page.contains("&lt;x&gt;") && !page.contains("skipped_null"));
        assert!(page.contains("<svg") && page.contains("<polyline"));
        assert!(!page.contains("<script"));
    }
}
