//! Latency distributions as an SVG: one panel per comparison, each the
//! empirical CDF of every series (x: latency in ms on a log axis, y: the
//! fraction of samples at or below x), ours in solid colours, baselines
//! dashed grey, with a legend giving each series' p50 and p99.
//!
//! Hand-written SVG text; pure (no I/O), so the bin `plot` only reads the
//! results and writes the string.

use std::fmt::Write as _;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// One latency series: its samples in milliseconds, in any order.
pub struct Series {
    pub name: String,
    pub samples_ms: Vec<f64>,
    /// Drawn dashed and grey, listed after ours in the legend's colours.
    pub baseline: bool,
}

/// One comparison: ours and the baseline(s) on the same axes.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// The percentile of `sorted` by nearest rank (index `round((n-1)·p)`), as the
/// benchmarks compute it, so the legend matches their JSON; NaN if empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The empirical CDF: for each distinct sample value `x`, ascending, the
/// fraction of samples `<= x`. The last point is always at 1.
pub fn ecdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (i, &x) in sorted.iter().enumerate() {
        let f = (i + 1) as f64 / n;
        match points.last_mut() {
            Some(last) if last.0 == x => last.1 = f,
            _ => points.push((x, f)),
        }
    }
    points
}

/// The n-th value of the 1-2-5 sequence: ..., 0.5, 1, 2, 5, 10, 20, ...
/// (`step(0) == 1`).
fn step(i: i32) -> f64 {
    [1.0, 2.0, 5.0][i.rem_euclid(3) as usize] * 10f64.powi(i.div_euclid(3))
}

/// A log10 axis between two values of the 1-2-5 sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogAxis {
    lo: i32,
    hi: i32,
}

impl LogAxis {
    /// The narrowest 1-2-5 range holding `min..=max` (both > 0), never empty.
    pub fn covering(min: f64, max: f64) -> LogAxis {
        let slack = 1.0 + 1e-9;
        let mut lo = 3 * min.log10().floor() as i32;
        while step(lo + 1) <= min * slack {
            lo += 1;
        }
        while step(lo) > min * slack {
            lo -= 1;
        }
        let mut hi = lo + 1;
        while step(hi) * slack < max {
            hi += 1;
        }
        LogAxis { lo, hi }
    }

    pub fn min(&self) -> f64 {
        step(self.lo)
    }

    pub fn max(&self) -> f64 {
        step(self.hi)
    }

    /// Where `v` falls between the ends: 0 at the low end, 1 at the high end.
    pub fn fraction(&self, v: f64) -> f64 {
        let (a, b) = (self.min().log10(), self.max().log10());
        (v.log10() - a) / (b - a)
    }

    /// Tick values with whether each is labelled: every 1-2-5 step, all
    /// labelled over up to three decades, beyond that only the powers of ten.
    pub fn ticks(&self) -> Vec<(f64, bool)> {
        let all = self.hi - self.lo <= 9;
        (self.lo..=self.hi).map(|i| (step(i), all || i.rem_euclid(3) == 0)).collect()
    }
}

/// A tick label without float noise: "0.05", "0.5", "1", "200".
fn tick_label(v: f64) -> String {
    let decimals = (-(v.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Milliseconds as the README prints them: "3.48", "15.9", "105.6".
pub fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The samples of series `key` in a benchmark's JSON (`samples_ms`), checked
/// against the `p50_ms` recorded beside them when there is one. `rerun` is
/// the command that records them, for the error.
pub fn series_samples(doc: &Value, key: &str, file: &str, rerun: &str) -> Result<Vec<f64>> {
    let series = doc.get(key).with_context(|| format!("{file}: no series `{key}`; re-run `{rerun}`"))?;
    let Some(raw) = series.get("samples_ms").and_then(Value::as_array) else {
        bail!("{file}: series `{key}` has no samples_ms (written by an older bench); re-run `{rerun}`");
    };
    ensure!(!raw.is_empty(), "{file}: series `{key}` has an empty samples_ms; re-run `{rerun}`");
    let samples = raw
        .iter()
        .map(|v| v.as_f64().with_context(|| format!("{file}: `{key}`.samples_ms holds {v}, not a number")))
        .collect::<Result<Vec<f64>>>()?;
    if let Some(p50) = series.get("p50_ms").and_then(Value::as_f64) {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let ours = percentile(&sorted, 0.5);
        ensure!(
            (ours - p50).abs() < 0.01,
            "{file}: `{key}`: the samples' p50 is {ours} ms, the recorded p50_ms {p50}; re-run `{rerun}`"
        );
    }
    Ok(samples)
}

const OURS: [&str; 3] = ["#1f6fb4", "#d9480f", "#2b8a3e"];
const BASELINE: [&str; 2] = ["#555555", "#999999"];
const PANEL_W: f64 = 500.0;
const PLOT_LEFT: f64 = 60.0;
const PLOT_RIGHT: f64 = 36.0;
const PLOT_TOP: f64 = 44.0;
const PLOT_H: f64 = 230.0;
/// Tick labels and the x-axis title under the plot area.
const AXIS_H: f64 = 46.0;
const LEGEND_ROW: f64 = 18.0;
const FIGURE_TITLE_H: f64 = 36.0;

/// The whole figure: `title` on top, panels two to a row, a last one alone
/// on its row as wide as the row.
pub fn svg(title: &str, panels: &[Panel]) -> Result<String> {
    ensure!(!panels.is_empty(), "nothing to plot");
    for p in panels {
        ensure!(!p.series.is_empty(), "panel `{}` has no series", p.title);
        for s in &p.series {
            ensure!(!s.samples_ms.is_empty(), "`{}` / `{}` has no samples", p.title, s.name);
            if let Some(bad) = s.samples_ms.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                bail!("`{}` / `{}`: sample {bad} cannot go on a log axis", p.title, s.name);
            }
        }
    }
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(2);
    let legend_rows = panels.iter().map(|p| p.series.len()).max().unwrap_or(0);
    let panel_h = PLOT_TOP + PLOT_H + AXIS_H + 8.0 + legend_rows as f64 * LEGEND_ROW + 10.0;
    let (width, height) = (cols as f64 * PANEL_W, FIGURE_TITLE_H + rows as f64 * panel_h);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let x = (i % 2) as f64 * PANEL_W;
        let y = FIGURE_TITLE_H + (i / 2) as f64 * panel_h;
        let alone = i + 1 == panels.len() && i % 2 == 0;
        panel(&mut out, p, x, y, if alone { width } else { PANEL_W });
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// One panel `width` wide with its top-left corner at (`x0`, `y0`).
fn panel(out: &mut String, p: &Panel, x0: f64, y0: f64, width: f64) {
    let (left, top) = (x0 + PLOT_LEFT, y0 + PLOT_TOP);
    let (w, bottom) = (width - PLOT_LEFT - PLOT_RIGHT, y0 + PLOT_TOP + PLOT_H);
    let all = p.series.iter().flat_map(|s| s.samples_ms.iter().copied());
    let (min, max) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let axis = LogAxis::covering(min, max);
    let px = |v: f64| left + axis.fraction(v) * w;
    let py = |f: f64| bottom - f * PLOT_H;
    let _ = writeln!(out, r#"<g class="panel">"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + w / 2.0,
        y0 + 24.0,
        esc(&p.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{w:.1}" height="{PLOT_H:.1}" fill="none" stroke="#888"/>"##
    );
    for (v, labelled) in axis.ticks() {
        let x = px(v);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e4e4e4"/><line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/>"##,
            bottom + 4.0
        );
        if labelled {
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                bottom + 17.0,
                tick_label(v)
            );
        }
    }
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = py(f);
        let _ = writeln!(
            out,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{f}</text>"##,
            left + w,
            left - 6.0,
            y + 4.0
        );
    }
    for (f, label) in [(0.5, "p50"), (0.99, "p99")] {
        let y = py(f);
        let _ = writeln!(
            out,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#aaa" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#666">{label}</text>"##,
            left + w,
            left + w + 4.0,
            y + 3.5
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (ms, log scale)</text>"#,
        left + w / 2.0,
        bottom + 36.0
    );
    let (ly_x, ly_y) = (x0 + 16.0, top + PLOT_H / 2.0);
    let _ = writeln!(
        out,
        r#"<text x="{ly_x:.1}" y="{ly_y:.1}" text-anchor="middle" transform="rotate(-90 {ly_x:.1} {ly_y:.1})">fraction at or below x</text>"#
    );
    let (mut n_ours, mut n_base) = (0, 0);
    for (k, s) in p.series.iter().enumerate() {
        let (colour, dash) = if s.baseline {
            n_base += 1;
            (BASELINE[(n_base - 1) % BASELINE.len()], r#" stroke-dasharray="7 4""#)
        } else {
            n_ours += 1;
            (OURS[(n_ours - 1) % OURS.len()], "")
        };
        let points = ecdf(&s.samples_ms);
        let mut d = format!("M{:.1},{:.1}", px(points[0].0), py(0.0));
        for (x, f) in &points {
            let _ = write!(d, " H{:.1} V{:.1}", px(*x), py(*f));
        }
        let _ = writeln!(
            out,
            r#"<path class="cdf" d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#
        );
        let mut sorted = s.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let ly = bottom + AXIS_H + 8.0 + k as f64 * LEGEND_ROW + LEGEND_ROW / 2.0;
        let _ = writeln!(
            out,
            r#"<line x1="{left:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">p50 {} ms · p99 {} ms</text>"#,
            left + 26.0,
            left + 32.0,
            ly + 4.0,
            esc(&s.name),
            left + w,
            ly + 4.0,
            fmt_ms(percentile(&sorted, 0.5)),
            fmt_ms(percentile(&sorted, 0.99))
        );
    }
    let _ = writeln!(out, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn series(name: &str, samples: &[f64], baseline: bool) -> Series {
        Series { name: name.into(), samples_ms: samples.to_vec(), baseline }
    }

    /// Every element opened is closed, in order; attribute values and text
    /// hold no raw `<` or stray `&`.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            assert!(!text.contains('>'), "stray > in {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"].iter().any(|e| entity.starts_with(e)),
                    "raw & in {text:?}"
                );
            }
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside a tag: {tag:?}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop().as_deref(), Some(name), "closing {name}");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap_or_default().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
        assert!(open.is_empty(), "left open: {open:?}");
    }

    #[test]
    fn ecdf_of_a_known_sample() {
        assert_eq!(ecdf(&[3.0, 1.0, 2.0, 2.0]), vec![(1.0, 0.25), (2.0, 0.75), (3.0, 1.0)]);
        assert_eq!(ecdf(&[5.0]), vec![(5.0, 1.0)]);
        assert!(ecdf(&[]).is_empty());
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 51.0); // round(99 * 0.5) = 50 -> the 51st
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn log_axis_ends_and_mapping() {
        let a = LogAxis::covering(1.3, 180.0);
        assert_eq!((a.min(), a.max()), (1.0, 200.0));
        let b = LogAxis::covering(1.0, 100.0);
        assert_eq!((b.min(), b.max()), (1.0, 100.0));
        assert!((b.fraction(10.0) - 0.5).abs() < 1e-12);
        assert!(b.fraction(1.0).abs() < 1e-12);
        assert!((b.fraction(100.0) - 1.0).abs() < 1e-12);
        let c = LogAxis::covering(0.7, 45.0);
        assert_eq!((c.min(), c.max()), (0.5, 50.0));
        // One value: still a range, the value at its low end.
        let d = LogAxis::covering(1.0, 1.0);
        assert_eq!((d.min(), d.max()), (1.0, 2.0));
    }

    #[test]
    fn log_axis_ticks() {
        let a = LogAxis::covering(1.0, 200.0);
        let values: Vec<f64> = a.ticks().iter().map(|t| t.0).collect();
        assert_eq!(values, [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]);
        assert!(a.ticks().iter().all(|t| t.1));
        let labels: Vec<String> =
            LogAxis::covering(0.05, 0.2).ticks().iter().map(|t| tick_label(t.0)).collect();
        assert_eq!(labels, ["0.05", "0.1", "0.2"]);
        // Over five decades only powers of ten are labelled.
        let wide = LogAxis::covering(0.01, 1000.0);
        let labelled: Vec<f64> = wide.ticks().iter().filter(|t| t.1).map(|t| t.0).collect();
        assert_eq!(labelled.len(), 6);
        assert!(labelled
            .iter()
            .zip([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
            .all(|(a, b)| (a - b).abs() < 1e-12));
    }

    fn figure() -> String {
        let panels = vec![
            Panel {
                title: "CNI ADD".into(),
                series: vec![
                    series("k8s-ovs ADD", &[1.0, 2.0, 3.0, 4.0], false),
                    series("bridge & host-local <ref>", &[2.0, 4.0, 8.0, 160.0], true),
                ],
            },
            Panel {
                title: "actions".into(),
                series: vec![
                    series("one at a time", &[3.0, 3.5], false),
                    series("bursts", &[5.0, 30.0], false),
                    series("bare put", &[1.0, 7.9], true),
                ],
            },
        ];
        svg("Latency", &panels).expect("renders")
    }

    #[test]
    fn one_path_per_series_and_the_legend() {
        let out = figure();
        assert_eq!(out.matches(r#"<path class="cdf""#).count(), 5);
        assert_eq!(out.matches(r#"<g class="panel">"#).count(), 2);
        // Two panels side by side, each plot area 500 - 60 - 36 px wide.
        assert_eq!(out.matches(r#"width="404.0" height="230.0""#).count(), 2);
        assert!(out.contains(">k8s-ovs ADD<"));
        // Escaped, and its p50 (index round(1.5) = 2 -> 8) and p99 (160).
        assert!(out.contains(">bridge &amp; host-local &lt;ref&gt;<"));
        assert!(out.contains(">p50 8.00 ms · p99 160.0 ms<"));
        assert!(out.contains(">p50 3.50 ms · p99 3.50 ms<"));
        // Baselines dashed: one per panel.
        assert_eq!(out.matches(r#"stroke-width="2" stroke-dasharray="7 4"/>"#).count(), 2 * 2);
        // Log axis from 1 to 200 on the first panel, labelled.
        assert!(out.contains(">200</text>"));
        assert_well_formed(&out);
    }

    #[test]
    fn the_cdf_path_steps_through_the_samples() {
        let out = svg("t", &[Panel { title: "p".into(), series: vec![series("s", &[1.0, 10.0], false)] }])
            .expect("renders");
        // Axis 1..10 over the plot width (500 - 60 - 36 = 404 px from x=60);
        // y from 36 + 44 + 230 = 310 (0) up to 80 (1).
        assert!(out.contains(r#"d="M60.0,310.0 H60.0 V195.0 H464.0 V80.0""#), "{out}");
    }

    #[test]
    fn a_last_panel_alone_takes_the_whole_row() {
        let p = |t: &str| Panel { title: t.into(), series: vec![series("s", &[1.0, 2.0], false)] };
        let out = svg("t", &[p("a"), p("b"), p("c")]).expect("renders");
        assert_eq!(out.matches(r#"width="404.0" height="230.0""#).count(), 2);
        assert_eq!(out.matches(r#"width="904.0" height="230.0""#).count(), 1);
        assert!(out.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" width="1000""#));
        assert_well_formed(&out);
    }

    #[test]
    fn checker_catches_unbalanced_output() {
        let broken = std::panic::catch_unwind(|| assert_well_formed("<svg><g></svg>"));
        assert!(broken.is_err());
        assert_well_formed("<svg><g><line/></g></svg>\n");
    }

    #[test]
    fn refuses_what_it_cannot_draw() {
        let zero = Panel { title: "p".into(), series: vec![series("s", &[0.0, 1.0], false)] };
        assert!(svg("t", &[zero]).is_err());
        let empty = Panel { title: "p".into(), series: vec![series("s", &[], false)] };
        let err = svg("t", &[empty]).expect_err("no samples").to_string();
        assert!(err.contains("`p` / `s`"), "{err}");
        assert!(svg("t", &[]).is_err());
    }

    #[test]
    fn samples_from_results_json() {
        let doc = json!({"ADD": {"p50_ms": 2.0, "samples_ms": [3.0, 1.0, 2.0]}, "old": {"p50_ms": 2.0}});
        assert_eq!(series_samples(&doc, "ADD", "cni.json", "rerun cni").expect("ok"), [3.0, 1.0, 2.0]);
        let old = series_samples(&doc, "old", "cni.json", "rerun cni").expect_err("no samples").to_string();
        assert!(old.contains("no samples_ms") && old.contains("rerun cni"), "{old}");
        let missing =
            series_samples(&doc, "DEL", "cni.json", "rerun cni").expect_err("no series").to_string();
        assert!(missing.contains("no series `DEL`"), "{missing}");
        let stale = json!({"ADD": {"p50_ms": 9.0, "samples_ms": [3.0, 1.0, 2.0]}});
        assert!(series_samples(&stale, "ADD", "cni.json", "rerun cni").is_err());
        let text = json!({"ADD": {"samples_ms": [1.0, "x"]}});
        assert!(series_samples(&text, "ADD", "cni.json", "rerun cni").is_err());
    }
}
