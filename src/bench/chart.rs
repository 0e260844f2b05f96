//! The SVG line charts the benchmarks draw with `--svg`: one or more curves of measured
//! points on linear or logarithmic axes, hand-written like the project's other pictures
//! (lines, circles and text, which `format!` says as plainly as any SVG builder would).
//!
//! Invariants:
//! - Every input renders to a well-formed SVG document, without a panic: a point that an
//!   axis cannot place (a non-finite value, a value beyond ±[`MAX_MAGNITUDE`], and on a log
//!   axis a value at or below [`MIN_LOG`]) is left out of the curve and of the axes' ranges;
//!   an empty range gets a default one, and a flat range (one point, equal values) is padded,
//!   so that no position is ever a division by zero.
//! - Both axes' ranges hold every point drawn, and the y axis of a linear chart starts at 0
//!   when no value drawn is negative.
//! - Every text that goes into the SVG (title, axis names, labels, tick labels, hover text)
//!   goes through [`crate::svg::escape`].
//! - The same chart always gives the same bytes: nothing depends on time, hashing or the
//!   environment.

use std::fmt::Write as _;
use std::path::Path;

use crate::svg::escape as esc;

/// One curve: a label for the legend and its points (x, y), in x order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend's text for this curve.
    pub label: String,
    /// The measured points, (x, y), in x order.
    pub points: Vec<(f64, f64)>,
}

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Equal steps for equal differences.
    Linear,
    /// Equal steps for equal ratios; only positive values can be placed.
    Log,
}

/// A chart: title, axis names, scales and curves.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis, turned upright.
    pub y_label: String,
    /// The x axis' scale.
    pub x_scale: Scale,
    /// The y axis' scale.
    pub y_scale: Scale,
    /// The curves, drawn in order, each in the next colour of [`COLORS`].
    pub series: Vec<Series>,
}

/// The canvas' width.
const WIDTH: f64 = 720.0;
/// The canvas' height with up to [`LEGEND_COLUMNS`] × 4 curves; more legend rows add to it.
const MIN_HEIGHT: f64 = 420.0;
/// Left of the plot: room for the y tick labels and the y axis' name.
const LEFT: f64 = 64.0;
/// Above the plot: room for the title.
const TOP: f64 = 36.0;
/// The plot's width (20 px are left on the right for the last x tick label).
const PLOT_W: f64 = WIDTH - LEFT - 20.0;
/// The plot's height.
const PLOT_H: f64 = 246.0;
/// The baseline of the legend's first row, under the x axis' name.
const LEGEND_TOP: f64 = TOP + PLOT_H + 60.0;
/// The legend's entries side by side in a row.
const LEGEND_COLUMNS: usize = 2;
/// The height of one legend row.
const LEGEND_ROW: f64 = 16.0;
/// The room under the legend's last row.
const BOTTOM: f64 = 14.0;
/// Readable, distinct colours (Tableau 10's first eight); a ninth curve takes the first again.
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// The grid lines' colour: light enough to stay behind the curves.
const GRID: &str = "#e2e2e2";
/// The frame's and the tick labels' colour.
const INK: &str = "#444";
/// The largest magnitude an axis places: a range's padding and its nice ends stay finite.
const MAX_MAGNITUDE: f64 = 1e300;
/// The smallest value a log axis places: its padded range stays a normal, positive number.
const MIN_LOG: f64 = 1e-300;
/// Most ticks on an axis, whatever its range.
const MAX_TICKS: usize = 32;

/// Whether an axis of `scale` can place `v`.
fn placeable(scale: Scale, v: f64) -> bool {
    v.is_finite()
        && v.abs() <= MAX_MAGNITUDE
        && match scale {
            Scale::Linear => true,
            Scale::Log => v >= MIN_LOG,
        }
}

/// One axis: its scale, the range it shows and where its ticks are.
#[derive(Debug)]
struct Axis {
    /// How values map to positions.
    scale: Scale,
    /// The value at the axis' start; positive on a log axis.
    low: f64,
    /// The value at the axis' end; always above `low`.
    high: f64,
    /// The values that get a tick, a label and a grid line, in increasing order.
    ticks: Vec<f64>,
}

impl Axis {
    /// The axis that shows all of `values` (each placeable on `scale`); a linear axis starts
    /// at 0 when `from_zero` and no value is negative.
    fn fit(scale: Scale, values: &[f64], from_zero: bool) -> Self {
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let axis = match scale {
            Scale::Linear if values.is_empty() => Self::linear(0.0, 1.0, from_zero),
            Scale::Linear => Self::linear(min, max, from_zero),
            Scale::Log if values.is_empty() => Self::log(1.0, 10.0),
            Scale::Log => Self::log(min, max),
        };
        let sane = axis.low.is_finite()
            && axis.high.is_finite()
            && axis.low < axis.high
            && (scale == Scale::Linear || axis.low > 0.0);
        match (sane, scale) {
            (true, _) => axis,
            // Not reached for placeable values; a fallback rather than a picture of NaNs.
            (false, Scale::Linear) => Self::linear(0.0, 1.0, false),
            (false, Scale::Log) => Self::log(1.0, 10.0),
        }
    }

    /// A linear axis from `min` to `max`, padded when flat, its ends on a nice step.
    fn linear(mut min: f64, mut max: f64, from_zero: bool) -> Self {
        let start_at_zero = from_zero && min >= 0.0;
        if start_at_zero {
            min = 0.0;
        }
        if max <= min {
            let pad = if min == 0.0 { 1.0 } else { min.abs() / 2.0 };
            min -= pad;
            max += pad;
            if start_at_zero {
                min = 0.0;
            }
        }
        let step = nice_step((max - min) / 5.0);
        let (first, last) = ((min / step).floor(), (max / step).ceil());
        let ticks = (0..MAX_TICKS)
            .map(|i| (first + i as f64) * step)
            .take_while(|&t| t <= last * step)
            .collect();
        Axis {
            scale: Scale::Linear,
            low: first * step,
            high: last * step,
            ticks,
        }
    }

    /// A log axis from `min` to `max` (both positive), padded by a twentieth of its decades
    /// (at most half a decade), or by half a decade each way when flat.
    fn log(min: f64, max: f64) -> Self {
        let (mut lo, mut hi) = (min.log10(), max.log10());
        let pad = if hi - lo <= 0.0 {
            0.5
        } else {
            ((hi - lo) / 20.0).min(0.5)
        };
        lo -= pad;
        hi += pad;
        let (low, high) = (10f64.powf(lo), 10f64.powf(hi));
        let span = hi - lo;
        // Within about two decades (padding included) the powers of ten alone are too few; over
        // ten, every one of them is too many.
        let multiples: &[f64] = if span < 2.5 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let every = (span / 8.0).ceil().max(1.0) as i32;
        let inside = |t: f64| t >= low * (1.0 - 1e-9) && t <= high * (1.0 + 1e-9);
        let mut ticks: Vec<f64> = Vec::new();
        for exponent in (lo.floor() as i32)..=(hi.ceil() as i32) {
            if exponent.rem_euclid(every) != 0 {
                continue;
            }
            for &m in multiples {
                let t = times_power_of_ten(m, exponent);
                if inside(t) && ticks.len() < MAX_TICKS {
                    ticks.push(t);
                }
            }
        }
        if ticks.len() < 2 {
            // Well under a decade: nice linear steps read better than one lonely tick.
            let step = nice_step((high - low) / 4.0);
            let first = (low / step).ceil();
            ticks = (0..MAX_TICKS)
                .map(|i| (first + i as f64) * step)
                .take_while(|&t| t <= high)
                .filter(|&t| t > 0.0)
                .collect();
        }
        Axis {
            scale: Scale::Log,
            low,
            high,
            ticks,
        }
    }

    /// Where `v` lies between the axis' ends, from 0 (`low`) to 1 (`high`).
    fn fraction(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.low) / (self.high - self.low),
            Scale::Log => (v.log10() - self.low.log10()) / (self.high.log10() - self.low.log10()),
        }
    }
}

/// `m` × 10^`exponent`, dividing for negative exponents so that 0.1, 0.01, ... come out as
/// close as a float gets.
fn times_power_of_ten(m: f64, exponent: i32) -> f64 {
    if exponent >= 0 {
        m * 10f64.powi(exponent)
    } else {
        m / 10f64.powi(exponent.saturating_neg())
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `rough` (1 for a `rough`
/// that is not a positive number).
fn nice_step(rough: f64) -> f64 {
    if !rough.is_finite() || rough <= 0.0 {
        return 1.0;
    }
    let decade = times_power_of_ten(1.0, rough.log10().floor() as i32);
    [1.0, 2.0, 5.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * decade)
}

/// `v` rounded to `digits` significant digits (`v` itself where that is not a finite number).
fn round_significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    // Scaled by an exact power of ten (a division where the power is negative), so that
    // 999.7 becomes 1000 and not 999.9999999999999.
    let exponent = digits - 1 - v.abs().log10().floor() as i32;
    let rounded = if exponent >= 0 {
        let scale = times_power_of_ten(1.0, exponent);
        (v * scale).round() / scale
    } else {
        let scale = times_power_of_ten(1.0, exponent.saturating_neg());
        (v / scale).round() * scale
    };
    if rounded.is_finite() { rounded } else { v }
}

/// `v` in decimals with at most 3 significant digits and no trailing zeros: `0.5`, `12`,
/// `250`, `2.5`.
fn decimal(v: f64) -> String {
    let v = round_significant(v, 3);
    if v == 0.0 {
        return "0".into();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A tick's text, short and decimal: `1M`, `2.5M`, `1k`, `16k`, `2.5k`, `250`, `0.5`.
fn tick_label(v: f64) -> String {
    let v = round_significant(v, 3);
    let magnitude = v.abs();
    if magnitude >= 1e6 {
        format!("{}M", decimal(v / 1e6))
    } else if magnitude >= 1e3 {
        format!("{}k", decimal(v / 1e3))
    } else {
        decimal(v)
    }
}

/// A point's value for its hover text, closer to the measurement than a tick's: `56234.7`,
/// `16`, `0.00125`.
fn value_text(v: f64) -> String {
    let magnitude = v.abs();
    if v.fract() == 0.0 && magnitude < 1e15 {
        format!("{v:.0}")
    } else if !(1e-4..1e15).contains(&magnitude) {
        format!("{v:.3e}")
    } else if magnitude >= 1.0 {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        decimal(v)
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let curves: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| placeable(self.x_scale, x) && placeable(self.y_scale, y))
                    .collect()
            })
            .collect();
        let xs: Vec<f64> = curves.iter().flatten().map(|p| p.0).collect();
        let ys: Vec<f64> = curves.iter().flatten().map(|p| p.1).collect();
        let x = Axis::fit(self.x_scale, &xs, false);
        let y = Axis::fit(self.y_scale, &ys, true);
        let px = |v: f64| LEFT + x.fraction(v) * PLOT_W;
        let py = |v: f64| TOP + (1.0 - y.fraction(v)) * PLOT_H;
        let (bottom, right) = (TOP + PLOT_H, LEFT + PLOT_W);
        let rows = self.series.len().div_ceil(LEGEND_COLUMNS);
        let height = (LEGEND_TOP + LEGEND_ROW * rows as f64 + BOTTOM).max(MIN_HEIGHT);

        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
            WIDTH / 2.0,
            esc(&self.title)
        );

        // The grid, behind everything else.
        let _ = writeln!(svg, r#"<g stroke="{GRID}">"#);
        for &t in &x.ticks {
            let _ = writeln!(
                svg,
                r#"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{bottom}"/>"#,
                px(t)
            );
        }
        for &t in &y.ticks {
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{0:.1}" x2="{right}" y2="{0:.1}"/>"#,
                py(t)
            );
        }
        svg.push_str("</g>\n");

        // The frame, the ticks, their labels and the axes' names.
        let _ = writeln!(svg, r#"<g fill="{INK}" stroke="{INK}">"#);
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none"/>"#
        );
        for &t in &x.ticks {
            let _ = writeln!(
                svg,
                r#"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}"/><text x="{0:.1}" y="{2}" stroke="none" text-anchor="middle">{3}</text>"#,
                px(t),
                bottom + 4.0,
                bottom + 17.0,
                esc(&tick_label(t))
            );
        }
        for &t in &y.ticks {
            let _ = writeln!(
                svg,
                r#"<line x1="{0}" y1="{1:.1}" x2="{LEFT}" y2="{1:.1}"/><text x="{2}" y="{3:.1}" stroke="none" text-anchor="end">{4}</text>"#,
                LEFT - 4.0,
                py(t),
                LEFT - 7.0,
                py(t) + 4.0,
                esc(&tick_label(t))
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" stroke="none" fill="black" text-anchor="middle">{}</text>"#,
            LEFT + PLOT_W / 2.0,
            bottom + 36.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(16 {}) rotate(-90)" stroke="none" fill="black" text-anchor="middle">{}</text>"#,
            TOP + PLOT_H / 2.0,
            esc(&self.y_label)
        );
        svg.push_str("</g>\n");

        // The curves, each with its legend entry.
        let column_width = PLOT_W / LEGEND_COLUMNS as f64;
        for (i, (series, points)) in self.series.iter().zip(&curves).enumerate() {
            let color = COLORS[i % COLORS.len()];
            let label = esc(&series.label);
            let _ = writeln!(svg, r#"<g stroke="{color}" fill="{color}">"#);
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|&(a, b)| format!("{:.1},{:.1}", px(a), py(b)))
                    .collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke-width="2" points="{}"/>"#,
                    path.join(" ")
                );
            }
            for &(a, b) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3"><title>{label}: {}, {}</title></circle>"#,
                    px(a),
                    py(b),
                    esc(&value_text(a)),
                    esc(&value_text(b))
                );
            }
            let legend_x = LEFT + column_width * (i % LEGEND_COLUMNS) as f64;
            let legend_y = LEGEND_TOP + LEGEND_ROW * (i / LEGEND_COLUMNS) as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{legend_x}" y1="{0}" x2="{1}" y2="{0}" stroke-width="2"/><text x="{2}" y="{legend_y}" stroke="none" fill="black">{label}</text>"#,
                legend_y - 4.0,
                legend_x + 24.0,
                legend_x + 30.0,
            );
            svg.push_str("</g>\n");
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Curves from labelled points: one per label, in order of first appearance, each sorted
/// by x.
pub fn curves(points: impl IntoIterator<Item = (String, (f64, f64))>) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for (label, point) in points {
        match series.iter_mut().find(|s| s.label == label) {
            Some(curve) => curve.points.push(point),
            None => series.push(Series {
                label,
                points: vec![point],
            }),
        }
    }
    for curve in &mut series {
        curve.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

/// Writes `chart` to `path` as SVG (creating or replacing the file).
pub fn write(chart: &Chart, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, chart.to_svg())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chart of one curve, "a", with `points`.
    fn chart(points: Vec<(f64, f64)>, x_scale: Scale, y_scale: Scale) -> Chart {
        Chart {
            title: "title".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_scale,
            y_scale,
            series: vec![Series {
                label: "a".into(),
                points,
            }],
        }
    }

    /// Panics unless every tag of `svg` is closed in order, the root is one `<svg>`, the
    /// document ends with a newline, and no number came out as NaN or infinite.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        let mut open: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').map(|e| start + e);
            let Some(end) = end else {
                panic!("unclosed tag in {svg}")
            };
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "misnested </{name}> in {svg}");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("");
                if open.is_empty() {
                    roots += 1;
                }
                open.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "left open: {open:?}");
        assert_eq!(roots, 1);
        for bad in ["NaN", "inf"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
    }

    /// The x axis' tick labels of `svg`, in order (they are the centred texts of the frame).
    fn x_tick_labels(svg: &str) -> Vec<String> {
        svg.lines()
            .filter(|l| l.starts_with("<line") && l.contains(r#"text-anchor="middle">"#))
            .filter_map(|l| l.split('>').nth(2)?.split('<').next().map(String::from))
            .collect()
    }

    #[test]
    fn charts_of_every_kind_are_well_formed() {
        let scales = [Scale::Linear, Scale::Log];
        for x_scale in scales {
            for y_scale in scales {
                let mut c = chart(vec![(1.0, 3.0), (10.0, 30.0)], x_scale, y_scale);
                c.series.push(Series {
                    label: "b".into(),
                    points: vec![(2.0, 5.0), (4.0, 2.0), (8.0, 1.0)],
                });
                let svg = c.to_svg();
                assert_well_formed(&svg);
                assert_eq!(svg.matches("<circle").count(), 5);
                assert_eq!(svg.matches("<polyline").count(), 2);
                assert_eq!(svg.matches("<g").count(), 4);
            }
        }
    }

    #[test]
    fn every_text_is_escaped() {
        let mut c = chart(vec![(1.0, 1.0)], Scale::Linear, Scale::Linear);
        c.title = "T <1> & 'q'".into();
        c.x_label = "x<&".into();
        c.y_label = "y\"&".into();
        c.series[0].label = "a <b> & c".into();
        let svg = c.to_svg();
        assert_well_formed(&svg);
        assert!(svg.contains(">T &lt;1&gt; &amp; &#39;q&#39;</text>"));
        assert!(svg.contains(">x&lt;&amp;</text>"));
        assert!(svg.contains(">y&quot;&amp;</text>"));
        assert!(svg.contains("<title>a &lt;b&gt; &amp; c: 1, 1</title>"));
        assert!(svg.contains(">a &lt;b&gt; &amp; c</text>"));
        assert!(!svg.contains("<b>") && !svg.contains("& "));
    }

    #[test]
    fn a_point_says_its_values_on_hover() {
        let c = chart(vec![(16.0, 56234.7)], Scale::Log, Scale::Linear);
        assert!(c.to_svg().contains("<title>a: 16, 56234.7</title>"));
    }

    #[test]
    fn a_log_axis_from_1_to_1024_has_a_tick_at_each_power_of_ten() {
        let axis = Axis::fit(Scale::Log, &[1.0, 2.0, 1024.0], false);
        assert_eq!(axis.ticks, [1.0, 10.0, 100.0, 1000.0]);
        assert!(axis.low <= 1.0 && axis.high >= 1024.0);
        let svg = chart(vec![(1.0, 5.0), (1024.0, 7.0)], Scale::Log, Scale::Linear).to_svg();
        assert_well_formed(&svg);
        assert_eq!(x_tick_labels(&svg), ["1", "10", "100", "1k"]);
    }

    #[test]
    fn a_log_axis_under_two_decades_also_has_ticks_at_2_and_5() {
        let axis = Axis::fit(Scale::Log, &[1.0, 50.0], false);
        assert_eq!(axis.ticks, [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        let small = Axis::fit(Scale::Log, &[0.01, 0.3], false);
        assert_eq!(small.ticks, [0.01, 0.02, 0.05, 0.1, 0.2]);
    }

    #[test]
    fn a_log_axis_well_under_a_decade_gets_linear_ticks() {
        let axis = Axis::fit(Scale::Log, &[300.0, 400.0], false);
        assert!(axis.ticks.len() >= 2, "{axis:?}");
        assert!(axis.ticks.iter().all(|&t| t >= axis.low && t <= axis.high));
    }

    #[test]
    fn a_log_axis_over_many_decades_keeps_few_ticks() {
        let axis = Axis::fit(Scale::Log, &[1e-200, 1e200], false);
        assert!((2..=10).contains(&axis.ticks.len()), "{axis:?}");
    }

    #[test]
    fn a_linear_y_axis_of_non_negative_values_starts_at_0() {
        let y = Axis::fit(Scale::Linear, &[5.0, 9.0], true);
        assert_eq!(y.ticks, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let x = Axis::fit(Scale::Linear, &[5.0, 9.0], false);
        assert_eq!((x.low, x.high), (5.0, 9.0));
        let negative = Axis::fit(Scale::Linear, &[-3.0, 7.0], true);
        assert_eq!((negative.low, negative.high), (-4.0, 8.0));
    }

    #[test]
    fn points_an_axis_cannot_place_are_left_out() {
        let points = vec![
            (0.0, 1.0),
            (-3.0, 2.0),
            (f64::NAN, 3.0),
            (10.0, f64::INFINITY),
            (10.0, -1.0),
            (100.0, 4.0),
            (1000.0, 5.0),
        ];
        let svg = chart(points, Scale::Log, Scale::Log).to_svg();
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("<title>a: 100, 4</title>"));
    }

    #[test]
    fn an_empty_chart_renders_with_default_ranges() {
        let mut c = chart(vec![], Scale::Log, Scale::Linear);
        let svg = c.to_svg();
        assert_well_formed(&svg);
        assert_eq!(x_tick_labels(&svg), ["1", "2", "5", "10"]);
        assert!(!svg.contains("<circle") && !svg.contains("<polyline"));
        c.series.clear();
        assert_well_formed(&c.to_svg());
        let y = Axis::fit(Scale::Linear, &[], true);
        assert_eq!((y.low, y.high), (0.0, 1.0));
    }

    #[test]
    fn flat_ranges_are_padded() {
        for points in [vec![(3.0, 3.0)], vec![(2.0, 0.0), (2.0, 0.0)]] {
            for scale in [Scale::Linear, Scale::Log] {
                let svg = chart(points.clone(), scale, scale).to_svg();
                assert_well_formed(&svg);
            }
        }
        for (scale, v) in [
            (Scale::Linear, 3.0),
            (Scale::Linear, 0.0),
            (Scale::Log, 3.0),
        ] {
            let axis = Axis::fit(scale, &[v, v], false);
            assert!(axis.low < v && v < axis.high, "{axis:?}");
            assert!(axis.ticks.len() >= 2, "{axis:?}");
        }
    }

    #[test]
    fn extreme_values_render_without_overflow() {
        let points = vec![
            (-1e300, 1e-300),
            (1e300, 1e300),
            (f64::MAX, f64::MIN_POSITIVE),
            (5e-324, 1.0),
        ];
        for scale in [Scale::Linear, Scale::Log] {
            let svg = chart(points.clone(), scale, scale).to_svg();
            assert_well_formed(&svg);
            assert!(svg.matches("<line").count() < 4 * MAX_TICKS + 20);
        }
    }

    #[test]
    fn curves_get_distinct_colours_and_the_legend_room_it_needs() {
        let series: Vec<Series> = (0..12)
            .map(|i| Series {
                label: format!("curve {i}"),
                points: vec![(1.0, i as f64), (2.0, i as f64 + 1.0)],
            })
            .collect();
        let c = Chart {
            series,
            ..chart(vec![], Scale::Linear, Scale::Linear)
        };
        let svg = c.to_svg();
        assert_well_formed(&svg);
        for color in COLORS {
            assert!(svg.contains(&format!(r#"<g stroke="{color}""#)), "{color}");
        }
        let distinct: std::collections::BTreeSet<&str> = COLORS.into_iter().collect();
        assert_eq!(distinct.len(), COLORS.len());
        assert!(svg.contains(r#"height="452""#), "six legend rows: {svg}");
        assert!(
            chart(vec![], Scale::Log, Scale::Log)
                .to_svg()
                .contains(r#"height="420""#)
        );
    }

    #[test]
    fn tick_labels_are_short_and_decimal() {
        let cases = [
            (1000.0, "1k"),
            (2500.0, "2.5k"),
            (16000.0, "16k"),
            (16384.0, "16.4k"),
            (1_000_000.0, "1M"),
            (2_500_000.0, "2.5M"),
            (10_000_000.0, "10M"),
            (999_700.0, "1M"),
            (999.7, "1k"),
            (250.0, "250"),
            (12.0, "12"),
            (12.34, "12.3"),
            (0.5, "0.5"),
            (0.1 + 0.2, "0.3"),
            (0.00125, "0.00125"),
            (0.0, "0"),
            (-2000.0, "-2k"),
        ];
        for (v, text) in cases {
            assert_eq!(tick_label(v), text, "{v}");
        }
    }

    #[test]
    fn the_same_chart_gives_the_same_bytes() {
        let c = chart(vec![(1.0, 2.0), (8.0, 3.5)], Scale::Log, Scale::Linear);
        let first = c.to_svg();
        assert_eq!(first, c.clone().to_svg());
        assert!(first.contains("<title>a: 8, 3.5</title>"));
    }

    #[test]
    fn write_creates_and_replaces_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory for the test");
        let path = dir.path().join("chart.svg");
        std::fs::write(&path, "old contents, longer than nothing").expect("a file to replace");
        let c = chart(vec![(1.0, 2.0)], Scale::Linear, Scale::Linear);
        write(&c, &path).expect("the chart is written");
        let written = std::fs::read_to_string(&path).expect("the chart is read back");
        assert_eq!(written, c.to_svg());
        assert!(write(&c, &dir.path().join("missing/chart.svg")).is_err());
    }
}
