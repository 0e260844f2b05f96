//! The timeline picture of one check run, as a self-contained SVG: one lane per worker with
//! its holds, freezes, lease expiries, reads and writes, a lane for faults of the lock
//! service and the storage, a lane for overlapping holders, a time axis and a legend.
//!
//! Invariants: the picture is drawn from the same [`analysis`] helpers as the report, so a
//! lost update ringed here is one the report counts; every piece of text from the record or
//! the caller is escaped; the plot is at least [`MIN_PLOT_WIDTH`] wide and gives each second
//! at least [`MIN_PX_PER_S`], so a 60-120 s run stays readable.
//!
//! Hand-written rather than through a crate: the picture is rectangles, lines, circles and
//! text, which `format!` says as plainly as any SVG builder would.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use super::analysis::{self, FaultSpan, Input, Outcome, Report};
use super::history::{FaultKind, OpKind, Target};

/// The plot's minimum width: fits a laptop screen next to nothing else.
const MIN_PLOT_WIDTH: f64 = 1200.0;
/// At least this much per second, so that a worker's 0-2 s hold is visibly a bar.
const MIN_PX_PER_S: f64 = 12.0;
/// Room for the lane labels.
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
/// Top of the first lane, below the two title lines.
const TOP: f64 = 60.0;
const SERVICE_LANE_H: f64 = 26.0;
const OVERLAP_LANE_H: f64 = 14.0;
const WORKER_LANE_H: f64 = 34.0;
const LANE_GAP: f64 = 6.0;
/// Tick spacings tried in order; the first at least [`MIN_TICK_PX`] apart is used.
const TICK_STEPS_S: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const MIN_TICK_PX: f64 = 50.0;
/// Hold bar colours, alternated from one hold to the next so neighbours differ.
const HOLD_COLOURS: [&str; 4] = ["#9ecae1", "#a1d99b", "#fdd49e", "#bcbddc"];
const ACCEPTED: &str = "#238b45";
const REJECTED: &str = "#d7301f";
const UNKNOWN: &str = "#ec7014";
const FAILED: &str = "#969696";
const READ: &str = "#2171b5";
const LOST: &str = "#e31a1c";
const BACKWARDS: &str = "#6a51a3";
const EXPIRY: &str = "#a50f15";
const OVERLAP: &str = "#fb6a4a";

/// Horizontal placement: seconds since the run's start to x.
struct Scale {
    start_ns: u64,
    px_per_s: f64,
}

impl Scale {
    fn x_s(&self, s: f64) -> f64 {
        MARGIN_LEFT + s * self.px_per_s
    }

    fn x(&self, ns: u64) -> f64 {
        self.x_s(ns.saturating_sub(self.start_ns) as f64 / 1e9)
    }
}

/// Escapes text for SVG content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fault_name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::FreezeHolder => "freeze-holder",
        FaultKind::FreezeAfterRead => "freeze-after-read",
        FaultKind::Revoke => "revoke",
        FaultKind::FreezeLockService => "freeze-lock-service",
        FaultKind::KillStorage => "kill-storage",
        FaultKind::KillMember => "kill-member",
    }
}

fn service_colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::KillStorage => "#fc9272",
        FaultKind::KillMember => "#fdae6b",
        _ => "#c6dbef",
    }
}

/// The timeline of one run. `title` heads the picture; the policy, verdict and counts
/// follow it.
pub fn svg(input: &Input, report: &Report, title: &str) -> String {
    let (ops, _) = analysis::operations(input);
    let holds = analysis::holds(&ops, input.end_mono_ns);
    let faults = analysis::fault_spans(input);

    let duration_s = (input.end_mono_ns.saturating_sub(input.start_mono_ns) as f64 / 1e9).max(1.0);
    let plot_width = (duration_s * MIN_PX_PER_S).max(MIN_PLOT_WIDTH);
    let scale = Scale {
        start_ns: input.start_mono_ns,
        px_per_s: plot_width / duration_s,
    };
    let width = MARGIN_LEFT + plot_width + MARGIN_RIGHT;

    let mut workers: BTreeSet<u32> = ops.iter().map(|o| o.worker).collect();
    workers.extend(faults.iter().filter_map(|f| match f.target {
        Target::Worker(w) => Some(w),
        _ => None,
    }));
    let service_y = TOP;
    let overlap_y = service_y + SERVICE_LANE_H + LANE_GAP;
    let first_worker_y = overlap_y + OVERLAP_LANE_H + LANE_GAP;
    let lane_y: HashMap<u32, f64> = workers
        .iter()
        .enumerate()
        .map(|(i, &w)| (w, first_worker_y + i as f64 * (WORKER_LANE_H + LANE_GAP)))
        .collect();
    let lanes_end = first_worker_y + workers.len() as f64 * (WORKER_LANE_H + LANE_GAP);
    let axis_y = lanes_end + 2.0;
    let legend_y = axis_y + 36.0;
    let legend_rows = legend_rows(width);
    let height = legend_y + legend_rows as f64 * 20.0 + 10.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    s.push_str(concat!(
        r#"<defs><pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" "#,
        r##"patternTransform="rotate(45)"><rect width="6" height="6" fill="#d9d9d9" fill-opacity="0.5"/>"##,
        r##"<line x1="0" y1="0" x2="0" y2="6" stroke="#525252" stroke-width="2"/></pattern></defs>"##,
        "\n"
    ));
    let _ = writeln!(
        s,
        r#"<rect width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    heading(&mut s, input, report, title, workers.len());

    // Lane backgrounds and labels.
    lane(&mut s, "faults", service_y, SERVICE_LANE_H, width, "#f7f7f7");
    lane(&mut s, "overlap", overlap_y, OVERLAP_LANE_H, width, "#fff5f0");
    for (&w, &y) in &lane_y {
        lane(&mut s, &format!("worker {w}"), y, WORKER_LANE_H, width, "#fbfbfb");
    }
    axis(&mut s, &scale, duration_s, TOP, axis_y);

    // Lock service and storage faults.
    for f in faults.iter().filter(|f| !matches!(f.target, Target::Worker(_))) {
        let (x0, x1) = span_x(&scale, f, duration_s);
        let who = match f.target {
            Target::LockService(Some(n)) => format!(" member {n}"),
            _ => String::new(),
        };
        let label = format!("{}{who}", fault_name(f.fault));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="#636363" stroke-width="0.5"><title>{}</title></rect>"##,
            service_y + 3.0,
            x1 - x0,
            SERVICE_LANE_H - 6.0,
            service_colour(f.fault),
            esc(&span_title(f, &label)),
        );
        if x1 - x0 > label.len() as f64 * 5.5 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
                x0 + 3.0,
                service_y + SERVICE_LANE_H / 2.0 + 3.0,
                esc(&label)
            );
        }
    }

    // Overlapping holders.
    for o in &report.overlaps.intervals {
        let x0 = scale.x_s(o.start_s);
        let w = (o.duration_s * scale.px_per_s).max(1.5);
        let who: Vec<String> = o
            .holders
            .iter()
            .map(|h| format!("worker {} (token {})", h.worker, opt(h.token)))
            .collect();
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{OVERLAP}"><title>{}</title></rect>"#,
            overlap_y + 2.0,
            OVERLAP_LANE_H - 4.0,
            esc(&format!(
                "{:.2} s from {:.2} s: {}",
                o.duration_s,
                o.start_s,
                who.join(", ")
            )),
        );
    }

    // Holds.
    for (i, h) in holds.iter().enumerate() {
        let Some(&y) = lane_y.get(&h.worker) else {
            continue;
        };
        let x0 = scale.x(h.start_ns);
        let w = (scale.x(h.end_ns) - x0).max(1.0);
        let token = opt(h.token);
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" rx="2" fill="{}" stroke="#737373" stroke-width="0.5"><title>worker {} holds, token {token}</title></rect>"##,
            y + 8.0,
            WORKER_LANE_H - 16.0,
            HOLD_COLOURS[i % HOLD_COLOURS.len()],
            h.worker,
        );
        if w > token.len() as f64 * 6.0 + 20.0 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="8" fill="#525252">{token}</text>"##,
                x0 + 2.0,
                y + WORKER_LANE_H - 10.0,
            );
        }
    }

    // Freezes and revocations of workers.
    for f in &faults {
        let Target::Worker(w) = f.target else {
            continue;
        };
        let Some(&y) = lane_y.get(&w) else { continue };
        let label = fault_name(f.fault);
        if f.fault == FaultKind::Revoke {
            let x = scale.x_s(f.start_s);
            let _ = writeln!(
                s,
                r#"<path d="M{:.1},{:.1} h8 l-4,6 z" fill="{BACKWARDS}"><title>{}</title></path>"#,
                x - 4.0,
                y + 1.0,
                esc(&span_title(f, label)),
            );
            continue;
        }
        let (x0, x1) = span_x(&scale, f, duration_s);
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{WORKER_LANE_H:.1}" fill="url(#hatch)" stroke="#525252" stroke-width="0.5"><title>{}</title></rect>"##,
            y,
            x1 - x0,
            esc(&span_title(f, label)),
        );
    }

    // Lease expiries.
    for e in &report.lease_expiries {
        let y = e
            .worker
            .and_then(|w| lane_y.get(&w).copied())
            .map_or(service_y + SERVICE_LANE_H / 2.0, |y| y + WORKER_LANE_H - 5.0);
        let x = scale.x_s(e.at_s);
        let what = if e.revoked { "revoked" } else { "expired" };
        let _ = writeln!(
            s,
            r#"<path d="M{:.1},{:.1} l8,8 m0,-8 l-8,8" stroke="{EXPIRY}" stroke-width="2"><title>{}</title></path>"#,
            x - 4.0,
            y - 4.0,
            esc(&format!(
                "lease {} {what} at {:.2} s: key {} (token {})",
                opt(e.lease.map(|l| format!("{l:x}"))),
                e.at_s,
                e.key,
                e.token
            )),
        );
    }

    // Reads and writes.
    let lost: HashSet<(u32, u64)> = report
        .lost_updates
        .duplicates
        .iter()
        .flat_map(|d| d.writes.iter().map(|w| (w.worker, w.op)))
        .collect();
    let backwards: HashSet<(u32, u64)> = report
        .backwards_tokens
        .iter()
        .map(|b| (b.worker, b.op))
        .collect();
    for op in &ops {
        let Some(&y) = lane_y.get(&op.worker) else {
            continue;
        };
        let x = scale.x(op.at_ns());
        let mid = y + WORKER_LANE_H / 2.0;
        let tip = esc(&format!(
            "worker {} op {} {} {:?} token {} value {}{}",
            op.worker,
            op.op,
            kind_name(op.f),
            op.outcome,
            opt(op.token),
            opt(op.value),
            op.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        match op.f {
            OpKind::Read => {
                let colour = match op.outcome {
                    Outcome::Ok => READ,
                    Outcome::Fail if op.stale => REJECTED,
                    _ => FAILED,
                };
                let _ = writeln!(
                    s,
                    r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.5"><title>{tip}</title></line>"#,
                    y + 2.0,
                    y + 9.0,
                );
            }
            OpKind::Write => {
                write_marker(&mut s, x, mid, op.outcome, op.stale, &tip);
                if lost.contains(&(op.worker, op.op)) {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{x:.1}" cy="{mid:.1}" r="7" fill="none" stroke="{LOST}" stroke-width="1.8"/>"#
                    );
                }
            }
            _ => continue,
        }
        if backwards.contains(&(op.worker, op.op)) {
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="14" height="14" fill="none" stroke="{BACKWARDS}" stroke-width="1.8"/>"#,
                x - 7.0,
                mid - 7.0,
            );
        }
    }

    legend(&mut s, legend_y, width);
    s.push_str("</svg>\n");
    s
}

fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Session => "session",
        OpKind::Lock => "lock",
        OpKind::Read => "read",
        OpKind::Write => "write",
        OpKind::Unlock => "unlock",
        OpKind::Close => "close",
    }
}

fn opt(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// A fault's horizontal extent; one that never ended runs to the end of the plot, and an
/// instant one gets a visible sliver.
fn span_x(scale: &Scale, f: &FaultSpan, duration_s: f64) -> (f64, f64) {
    let x0 = scale.x_s(f.start_s);
    let x1 = scale.x_s(f.end_s.unwrap_or(duration_s));
    (x0, x1.max(x0 + 2.0))
}

fn span_title(f: &FaultSpan, label: &str) -> String {
    let mut t = match f.end_s {
        Some(end) => format!("{label} {:.2}-{end:.2} s", f.start_s),
        None => format!("{label} from {:.2} s", f.start_s),
    };
    if let Some(lease) = f.lease {
        let _ = write!(t, ", lease {lease:x}");
    }
    if let Some(note) = &f.note {
        let _ = write!(t, ": {note}");
    }
    t
}

fn heading(s: &mut String, input: &Input, report: &Report, title: &str, workers: usize) {
    let total_ops: u64 = report
        .operations
        .iter()
        .map(|c| c.ok + c.fail + c.info + c.pending)
        .sum();
    let colour = match (report.claims_safety, report.valid) {
        (true, true) => ACCEPTED,
        (true, false) => REJECTED,
        (false, _) => "#252525",
    };
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN_LEFT}" y="22" font-size="15" font-weight="bold">{} — <tspan fill="{colour}">{} fencing: {}</tspan></text>"#,
        esc(title),
        esc(&input.policy.to_string()),
        esc(&report.verdict),
    );
    let _ = writeln!(
        s,
        r##"<text x="{MARGIN_LEFT}" y="42" font-size="12" fill="#404040">{}</text>"##,
        esc(&format!(
            "{:.0} s, {workers} workers, {total_ops} operations, {} acknowledged increments, \
             {} unknown writes, final counter {}, {} lost ({:.1}%), {} backwards tokens, \
             {} overlaps ({:.1} s), {}/{} stale reads/writes, {} lease expiries, {} faults",
            report.duration_s,
            report.acknowledged_increments,
            report.unknown_writes,
            opt(report.final_value),
            report.lost_updates.count,
            report.lost_updates.share * 100.0,
            report.backwards_tokens.len(),
            report.overlaps.intervals.len(),
            report.overlaps.total_s,
            report.stale_rejections.reads,
            report.stale_rejections.writes,
            report.lease_expiries.len(),
            report.fault_spans.len(),
        ))
    );
}

fn lane(s: &mut String, label: &str, y: f64, h: f64, width: f64, fill: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{MARGIN_LEFT}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}" stroke="#e0e0e0"/>"##,
        width - MARGIN_LEFT - MARGIN_RIGHT,
    );
    let _ = writeln!(
        s,
        r#"<text class="lane" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        MARGIN_LEFT - 8.0,
        y + h / 2.0 + 4.0,
        esc(label)
    );
}

fn axis(s: &mut String, scale: &Scale, duration_s: f64, top: f64, y: f64) {
    let step = TICK_STEPS_S
        .iter()
        .copied()
        .find(|step| step * scale.px_per_s >= MIN_TICK_PX)
        .unwrap_or(TICK_STEPS_S[TICK_STEPS_S.len() - 1]);
    let _ = writeln!(
        s,
        r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#252525"/>"##,
        scale.x_s(duration_s)
    );
    let ticks = (duration_s / step).floor() as u64;
    for i in 0..=ticks {
        let t = i as f64 * step;
        let x = scale.x_s(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{y:.1}" stroke="#000" stroke-opacity="0.08"/><line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#252525"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="10">{t:.0}</text>"##,
            y + 5.0,
            y + 17.0,
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">seconds since start</text>"#,
        scale.x_s(duration_s),
        y + 30.0,
    );
}

/// The legend's entries: a drawing at (0, 0) and its words.
const LEGEND: [(&str, &str); 13] = [
    (
        r##"<rect x="-6" y="-5" width="14" height="10" rx="2" fill="#9ecae1" stroke="#737373" stroke-width="0.5"/>"##,
        "hold (lock ok to unlock)",
    ),
    (
        r##"<rect x="-6" y="-6" width="14" height="12" fill="url(#hatch)" stroke="#525252" stroke-width="0.5"/>"##,
        "worker frozen",
    ),
    (
        r##"<path d="M-4,-3 h8 l-4,6 z" fill="#6a51a3"/>"##,
        "lease revoked (fault)",
    ),
    (
        r##"<path d="M-4,-4 l8,8 m0,-8 l-8,8" stroke="#a50f15" stroke-width="2"/>"##,
        "lock key gone (lease expired/revoked)",
    ),
    (
        r##"<line x1="0" y1="-4" x2="0" y2="4" stroke="#2171b5" stroke-width="1.5"/>"##,
        "read",
    ),
    (
        r##"<circle r="3.5" fill="#238b45"/>"##,
        "write accepted",
    ),
    (
        r##"<path d="M-3.5,-3.5 l7,7 m0,-7 l-7,7" stroke="#d7301f" stroke-width="2"/>"##,
        "rejected: stale token",
    ),
    (
        r##"<text y="4" text-anchor="middle" font-size="12" font-weight="bold" fill="#ec7014">?</text>"##,
        "write outcome unknown",
    ),
    (r##"<circle r="3.5" fill="#969696"/>"##, "write failed"),
    (
        r##"<circle r="7" fill="none" stroke="#e31a1c" stroke-width="1.8"/>"##,
        "lost update (duplicate write)",
    ),
    (
        r##"<rect x="-7" y="-7" width="14" height="14" fill="none" stroke="#6a51a3" stroke-width="1.8"/>"##,
        "token accepted backwards",
    ),
    (
        r##"<rect x="-7" y="-4" width="14" height="8" fill="#fb6a4a"/>"##,
        "two or more holders",
    ),
    (
        r##"<rect x="-7" y="-5" width="14" height="10" fill="#fc9272" stroke="#636363" stroke-width="0.5"/>"##,
        "storage / lock service fault",
    ),
];

/// Width given to each legend entry.
const LEGEND_ENTRY_W: f64 = 230.0;

fn legend_per_row(width: f64) -> usize {
    (((width - MARGIN_LEFT) / LEGEND_ENTRY_W).floor() as usize).max(1)
}

fn legend_rows(width: f64) -> usize {
    LEGEND.len().div_ceil(legend_per_row(width))
}

fn legend(s: &mut String, y: f64, width: f64) {
    let per_row = legend_per_row(width);
    for (i, (drawing, words)) in LEGEND.iter().enumerate() {
        let x = MARGIN_LEFT + 8.0 + (i % per_row) as f64 * LEGEND_ENTRY_W;
        let y = y + (i / per_row) as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<g transform="translate({x:.1},{y:.1})">{drawing}<text x="14" y="4">{}</text></g>"#,
            esc(words)
        );
    }
}

/// A write's mark: what the storage did with it.
fn write_marker(s: &mut String, x: f64, y: f64, outcome: Outcome, stale: bool, tip: &str) {
    let _ = match outcome {
        Outcome::Ok => writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{ACCEPTED}"><title>{tip}</title></circle>"#
        ),
        Outcome::Fail if stale => writeln!(
            s,
            r#"<path d="M{:.1},{:.1} l7,7 m0,-7 l-7,7" stroke="{REJECTED}" stroke-width="2"><title>{tip}</title></path>"#,
            x - 3.5,
            y - 3.5,
        ),
        Outcome::Fail => writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{FAILED}"><title>{tip}</title></circle>"#
        ),
        Outcome::Info | Outcome::Pending => writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="12" font-weight="bold" fill="{UNKNOWN}"><title>{tip}</title>?</text>"#,
            y + 4.0,
        ),
    };
}
