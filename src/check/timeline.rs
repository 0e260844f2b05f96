//! The timeline picture of one check run, as a self-contained SVG: one lane per worker with
//! its holds, freezes, lease expiries, reads and writes, a lane for faults of the lock
//! service and the storage, a lane for overlapping holders, a time axis and a legend.
//!
//! Invariants: the picture is drawn from the same [`analysis`] helpers as the report, so
//! what it marks is what the report counts (every write of a value that several
//! acknowledged writes wrote is ringed, as is every acknowledged add of a lost element; a
//! shortfall of the final counter has no single write to ring and shows only in the title;
//! each phantom's failed add gets a dashed ring and the first read that showed it a
//! diamond); every piece of text from the record or
//! the caller is escaped; the plot is at least `MIN_PLOT_WIDTH` wide and gives each second
//! at least `MIN_PX_PER_S`, so a 60-120 s run stays readable.
//!
//! Hand-written rather than through a crate: the picture is rectangles, lines, circles and
//! text, which `format!` says as plainly as any SVG builder would.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use super::analysis::{self, FaultSpan, Hold, Input, Op, Outcome, Report, show};
use super::history::{FaultKind, OpKind, Target};
use crate::svg::escape as esc;

/// The plot's minimum width: fits a laptop screen next to nothing else.
const MIN_PLOT_WIDTH: f64 = 1200.0;
/// At least this much per second, so that a worker's 0-2 s hold is visibly a bar.
const MIN_PX_PER_S: f64 = 12.0;
/// Estimated width of a character of the 9 px labels, to keep labels apart.
const LABEL_PX_PER_CHAR: f64 = 5.5;
/// Room for the lane labels.
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
/// Top of the first lane, below the three title lines.
const TOP: f64 = 74.0;
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
const PHANTOM: &str = "#ce1256";

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

fn service_colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::KillStorage | FaultKind::KillMember | FaultKind::KillPostgres => "#fc9272",
        FaultKind::PartitionLeader | FaultKind::PartitionHalves | FaultKind::IsolateStorage => {
            "#dadaeb"
        }
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
    let width = MARGIN_LEFT + plot_width + MARGIN_RIGHT;
    let mut workers: BTreeSet<u32> = ops.iter().map(|o| o.worker).collect();
    workers.extend(faults.iter().filter_map(|f| match f.target {
        Target::Worker(w) => Some(w),
        _ => None,
    }));
    let service_y = TOP;
    let overlap_y = service_y + SERVICE_LANE_H + LANE_GAP;
    let first_worker_y = overlap_y + OVERLAP_LANE_H + LANE_GAP;
    let mut p = Picture {
        s: String::new(),
        scale: Scale {
            start_ns: input.start_mono_ns,
            px_per_s: plot_width / duration_s,
        },
        duration_s,
        service_y,
        lane_y: workers
            .iter()
            .enumerate()
            .map(|(i, &w)| (w, first_worker_y + i as f64 * (WORKER_LANE_H + LANE_GAP)))
            .collect(),
    };
    let lanes_end = first_worker_y + workers.len() as f64 * (WORKER_LANE_H + LANE_GAP);
    let axis_y = lanes_end + 2.0;
    let legend_y = axis_y + 36.0;
    let height = legend_y + legend_rows(width) as f64 * 20.0 + 10.0;

    let _ = writeln!(
        p.s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    p.s.push_str(concat!(
        r#"<defs><pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" "#,
        r##"patternTransform="rotate(45)"><rect width="6" height="6" fill="#d9d9d9" fill-opacity="0.5"/>"##,
        r##"<line x1="0" y1="0" x2="0" y2="6" stroke="#525252" stroke-width="2"/></pattern></defs>"##,
        "\n"
    ));
    let _ = writeln!(
        p.s,
        r#"<rect width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    heading(&mut p.s, input, report, title, workers.len());
    lane(
        &mut p.s,
        "faults",
        service_y,
        SERVICE_LANE_H,
        width,
        "#f7f7f7",
    );
    lane(
        &mut p.s,
        "overlap",
        overlap_y,
        OVERLAP_LANE_H,
        width,
        "#fff5f0",
    );
    for (&w, &y) in &p.lane_y {
        let label = format!("worker {w}");
        lane(&mut p.s, &label, y, WORKER_LANE_H, width, "#fbfbfb");
    }
    axis(&mut p.s, &p.scale, duration_s, TOP, axis_y);

    // Back to front: spans first, then the marks that sit on them.
    p.service_faults(&faults);
    p.overlaps(report, overlap_y);
    p.holds(&holds);
    p.worker_faults(&faults);
    p.lease_expiries(report);
    p.reads_and_writes(&ops, report);

    legend(&mut p.s, legend_y, width);
    p.s.push_str("</svg>\n");
    p.s
}

/// The picture being drawn, and where things go on it.
struct Picture {
    s: String,
    scale: Scale,
    duration_s: f64,
    service_y: f64,
    /// The top of each worker's lane.
    lane_y: BTreeMap<u32, f64>,
}

impl Picture {
    /// Lock service and storage faults, in the top lane.
    fn service_faults(&mut self, faults: &[FaultSpan]) {
        let y = self.service_y;
        let mut spans: Vec<(f64, f64, String)> = Vec::new();
        for f in faults
            .iter()
            .filter(|f| !matches!(f.target, Target::Worker(_)))
        {
            let (x0, x1) = span_x(&self.scale, f, self.duration_s);
            // Short, so that most labels fit beside their span.
            let label = match (f.fault, &f.target) {
                (FaultKind::KillStorage, _) => "storage killed".to_owned(),
                (FaultKind::KillPostgres, _) => "postgres killed".to_owned(),
                (FaultKind::KillMember, Target::LockService(Some(n))) => {
                    format!("member {n} killed")
                }
                // Which hosts were on which side is in the span's title, from its note.
                (FaultKind::PartitionLeader, Target::LockService(Some(n))) => {
                    format!("leader {n} cut off")
                }
                (FaultKind::PartitionLeader | FaultKind::PartitionHalves, _) => {
                    "members split".to_owned()
                }
                (FaultKind::IsolateStorage, _) => "storage cut off".to_owned(),
                (_, Target::LockService(Some(n))) => format!("member {n} frozen"),
                (_, Target::LockService(None)) => "lockd frozen".to_owned(),
                _ => f.fault.name().to_owned(),
            };
            let _ = writeln!(
                self.s,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="#636363" stroke-width="0.5"><title>{}</title></rect>"##,
                y + 3.0,
                x1 - x0,
                SERVICE_LANE_H - 6.0,
                service_colour(f.fault),
                esc(&span_title(f, &label)),
            );
            spans.push((x0, x1, label));
        }
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A label goes inside its span when it fits, else in the free room just after it,
        // else just before it; one that fits nowhere without touching another span or label
        // is left to the span's tooltip.
        let right_edge = self.scale.x_s(self.duration_s);
        let mut free_from = self.scale.x_s(0.0);
        for (i, (x0, x1, label)) in spans.iter().enumerate() {
            let (x0, x1) = (*x0, *x1);
            let width = label.len() as f64 * LABEL_PX_PER_CHAR;
            let next_span = spans.get(i + 1).map_or(right_edge, |n| n.0);
            let x = if x1 - x0 > width + 6.0 && x0 + 3.0 >= free_from {
                Some(x0 + 3.0)
            } else if x1 + 3.0 + width + 3.0 <= next_span && x1 + 3.0 >= free_from {
                Some(x1 + 3.0)
            } else if x0 - 3.0 - width >= free_from {
                Some(x0 - 3.0 - width)
            } else {
                None
            };
            if let Some(x) = x {
                free_from = x + width + 4.0;
                let _ = writeln!(
                    self.s,
                    r#"<text x="{x:.1}" y="{:.1}" font-size="9">{}</text>"#,
                    y + SERVICE_LANE_H / 2.0 + 3.0,
                    esc(label)
                );
            }
            free_from = free_from.max(x1);
        }
    }

    /// Times in which two or more workers believed they held the lock, in their own lane.
    fn overlaps(&mut self, report: &Report, y: f64) {
        for o in &report.overlaps.intervals {
            let x0 = self.scale.x_s(o.start_s);
            let w = (o.duration_s * self.scale.px_per_s).max(1.5);
            let who: Vec<String> = o
                .holders
                .iter()
                .map(|h| format!("worker {} (token {})", h.worker, show(h.token)))
                .collect();
            let _ = writeln!(
                self.s,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{OVERLAP}"><title>{}</title></rect>"#,
                y + 2.0,
                OVERLAP_LANE_H - 4.0,
                esc(&format!(
                    "{:.2} s from {:.2} s: {}",
                    o.duration_s,
                    o.start_s,
                    who.join(", ")
                )),
            );
        }
    }

    /// A bar per hold, labelled with its token where it is wide enough.
    fn holds(&mut self, holds: &[Hold]) {
        for (i, h) in holds.iter().enumerate() {
            let Some(&y) = self.lane_y.get(&h.worker) else {
                continue;
            };
            let x0 = self.scale.x(h.start_ns);
            let w = (self.scale.x(h.end_ns) - x0).max(1.0);
            let token = show(h.token);
            let _ = writeln!(
                self.s,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" rx="2" fill="{}" stroke="#737373" stroke-width="0.5"><title>worker {} holds, token {token}</title></rect>"##,
                y + 8.0,
                WORKER_LANE_H - 16.0,
                HOLD_COLOURS[i % HOLD_COLOURS.len()],
                h.worker,
            );
            if w > token.len() as f64 * 6.0 + 20.0 {
                let _ = writeln!(
                    self.s,
                    r##"<text x="{:.1}" y="{:.1}" font-size="8" fill="#525252">{token}</text>"##,
                    x0 + 2.0,
                    y + WORKER_LANE_H - 10.0,
                );
            }
        }
    }

    /// Freezes as hatched spans over a worker's lane, revocations as a mark on its top.
    fn worker_faults(&mut self, faults: &[FaultSpan]) {
        for f in faults {
            let Target::Worker(w) = f.target else {
                continue;
            };
            let Some(&y) = self.lane_y.get(&w) else {
                continue;
            };
            let label = f.fault.name();
            if f.fault == FaultKind::Revoke {
                let x = self.scale.x_s(f.start_s);
                let _ = writeln!(
                    self.s,
                    r#"<path d="M{:.1},{:.1} h8 l-4,6 z" fill="{BACKWARDS}"><title>{}</title></path>"#,
                    x - 4.0,
                    y + 1.0,
                    esc(&span_title(f, label)),
                );
                continue;
            }
            let (x0, x1) = span_x(&self.scale, f, self.duration_s);
            let _ = writeln!(
                self.s,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{WORKER_LANE_H:.1}" fill="url(#hatch)" stroke="#525252" stroke-width="0.5"><title>{}</title></rect>"##,
                x1 - x0,
                esc(&span_title(f, label)),
            );
        }
    }

    /// A dashed line down the owner's lane (the fault lane when the owner is unknown).
    fn lease_expiries(&mut self, report: &Report) {
        for e in &report.lease_expiries {
            let (top, h) = e
                .worker
                .and_then(|w| self.lane_y.get(&w).copied())
                .map_or((self.service_y, SERVICE_LANE_H), |y| (y, WORKER_LANE_H));
            let x = self.scale.x_s(e.at_s);
            let what = if e.revoked { "revoked" } else { "expired" };
            let _ = writeln!(
                self.s,
                r#"<path d="M{x:.1},{top:.1} v{:.1} m0,-4 l4,4 l-4,4 l-4,-4 z" stroke="{EXPIRY}" fill="{EXPIRY}" stroke-width="1.2" stroke-dasharray="3,2"><title>{}</title></path>"#,
                h - 8.0,
                esc(&format!(
                    "lease {} {what} at {:.2} s: key {} (token {})",
                    show(e.lease.map(|l| format!("{l:x}"))),
                    e.at_s,
                    e.key,
                    e.token
                )),
            );
        }
    }

    /// Reads as ticks, writes by what the storage did with them, and the report's findings
    /// ringed.
    fn reads_and_writes(&mut self, ops: &[Op], report: &Report) {
        let mut lost: HashSet<(u32, u64)> = HashSet::new();
        let mut phantom_adds: HashSet<(u32, u64)> = HashSet::new();
        let mut phantom_reads: HashSet<(u32, u64)> = HashSet::new();
        if let Some(counter) = &report.counter {
            lost.extend(
                counter
                    .lost_updates
                    .duplicates
                    .iter()
                    .flat_map(|d| d.writes.iter().map(|w| (w.worker, w.op))),
            );
        }
        if let Some(set) = &report.set {
            lost.extend(set.lost.iter().map(|l| (l.add.worker, l.add.op)));
            for phantom in &set.phantoms {
                if let Some(add) = &phantom.add {
                    phantom_adds.insert((add.worker, add.op));
                }
                if let (Some(worker), Some(op)) = (phantom.read.worker, phantom.read.op) {
                    phantom_reads.insert((worker, op));
                }
            }
        }
        let backwards: HashSet<(u32, u64)> = report
            .backwards_tokens
            .iter()
            .map(|b| (b.worker, b.op))
            .collect();
        for op in ops {
            let Some(&y) = self.lane_y.get(&op.worker) else {
                continue;
            };
            let x = self.scale.x(op.at_ns());
            let mid = y + WORKER_LANE_H / 2.0;
            let what = match (&op.element, &op.set) {
                (Some(element), _) => format!("add {element}"),
                (None, Some(set)) => format!("{} elements", set.len()),
                (None, None) => format!("value {}", show(op.value)),
            };
            let tip = esc(&format!(
                "worker {} op {} {} {:?} token {} {what}{}",
                op.worker,
                op.op,
                kind_name(op.f),
                op.outcome,
                show(op.token),
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
                        self.s,
                        r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.5"><title>{tip}</title></line>"#,
                        y + 2.0,
                        y + 9.0,
                    );
                    if phantom_reads.contains(&(op.worker, op.op)) {
                        let _ = writeln!(
                            self.s,
                            r#"<path d="M{x:.1},{:.1} l4,4 l-4,4 l-4,-4 z" fill="{PHANTOM}"/>"#,
                            y + 1.5,
                        );
                    }
                }
                OpKind::Write => {
                    write_marker(&mut self.s, x, mid, op.outcome, op.stale, &tip);
                    if lost.contains(&(op.worker, op.op)) {
                        let _ = writeln!(
                            self.s,
                            r#"<circle cx="{x:.1}" cy="{mid:.1}" r="7" fill="none" stroke="{LOST}" stroke-width="1.8"/>"#
                        );
                    }
                    if phantom_adds.contains(&(op.worker, op.op)) {
                        let _ = writeln!(
                            self.s,
                            r#"<circle cx="{x:.1}" cy="{mid:.1}" r="7" fill="none" stroke="{PHANTOM}" stroke-width="1.8" stroke-dasharray="3,2"/>"#
                        );
                    }
                }
                _ => continue,
            }
            if backwards.contains(&(op.worker, op.op)) {
                let _ = writeln!(
                    self.s,
                    r#"<rect x="{:.1}" y="{:.1}" width="14" height="14" fill="none" stroke="{BACKWARDS}" stroke-width="1.8"/>"#,
                    x - 7.0,
                    mid - 7.0,
                );
            }
        }
    }
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
        r#"<text x="{MARGIN_LEFT}" y="22" font-size="15" font-weight="bold">{} — <tspan fill="{colour}">fencing {}: {}</tspan></text>"#,
        esc(title),
        esc(&input.policy.to_string()),
        match (report.claims_safety, report.valid) {
            (true, true) => "valid",
            (true, false) => "SAFETY VIOLATED",
            (false, _) => "not claimed safe",
        },
    );
    let common = format!(
        "{} backwards tokens, {} overlaps ({:.1} s), {}/{} stale reads/writes, \
         {} lease expiries, {} faults",
        report.backwards_tokens.len(),
        report.overlaps.intervals.len(),
        report.overlaps.total_s,
        report.stale_rejections.reads,
        report.stale_rejections.writes,
        report.lease_expiries.len(),
        report.fault_spans.len(),
    );
    let run = format!(
        "{:.0} s, {workers} workers, {total_ops} operations",
        report.duration_s
    );
    let counts = match (&report.counter, &report.set) {
        (Some(counter), _) => [
            format!(
                "{run}, {} acknowledged increments, {} unknown writes, final counter {}",
                counter.acknowledged_increments,
                counter.unknown_writes,
                show(counter.final_value),
            ),
            format!(
                "{} lost updates ({:.1}%), {common}",
                counter.lost_updates.count,
                counter.lost_updates.share * 100.0,
            ),
        ],
        (None, Some(set)) => [
            format!(
                "{run}, {} acknowledged adds, {} unknown adds ({} in the final read), {} \
                 failed adds, final set of {}",
                set.acknowledged_adds,
                set.unknown_adds,
                show(set.unknown_adds_present),
                set.failed_adds,
                show(set.final_size),
            ),
            format!(
                "{} lost elements ({:.1}%), {} phantoms, {common}",
                set.lost.len(),
                set.lost_share * 100.0,
                set.phantoms.len(),
            ),
        ],
        (None, None) => [run, common],
    };
    for (i, line) in counts.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{MARGIN_LEFT}" y="{}" font-size="12" fill="#404040">{}</text>"##,
            41 + 16 * i,
            esc(line)
        );
    }
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
const LEGEND: [(&str, &str); 16] = [
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
        r##"<path d="M0,-9 v10 m0,-4 l4,4 l-4,4 l-4,-4 z" stroke="#a50f15" fill="#a50f15" stroke-width="1.2" stroke-dasharray="3,2"/>"##,
        "lock key gone (lease expired/revoked)",
    ),
    (
        r##"<line x1="0" y1="-4" x2="0" y2="4" stroke="#2171b5" stroke-width="1.5"/>"##,
        "read",
    ),
    (r##"<circle r="3.5" fill="#238b45"/>"##, "write accepted"),
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
        "lost: increment written twice",
    ),
    (
        r##"<circle r="7" fill="none" stroke="#e31a1c" stroke-width="1.8"/><circle r="3.5" fill="#238b45"/>"##,
        "lost: acknowledged add missing later",
    ),
    (
        r##"<circle r="7" fill="none" stroke="#ce1256" stroke-width="1.8" stroke-dasharray="3,2"/><path d="M8,-9 l4,4 l-4,4 l-4,-4 z" fill="#ce1256"/>"##,
        "phantom: failed add, and the read showing it",
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
        r##"<rect x="-7" y="-5" width="14" height="10" fill="#c6dbef" stroke="#636363" stroke-width="0.5"/>"##,
        "lock service frozen",
    ),
    (
        r##"<rect x="-7" y="-5" width="14" height="10" fill="#fc9272" stroke="#636363" stroke-width="0.5"/>"##,
        "killed: storage or etcd member",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::analysis::analyse;
    use crate::check::analysis::fixtures::{End, History, START, at, phantom_and_loss};
    use crate::check::history::KeyChange;
    use fencelock::FencingToken;
    use fencelock::storage::fence::{self, Access, Policy};

    #[test]
    fn a_set_timeline_rings_the_lost_add_and_marks_the_phantom_and_its_read() {
        let input = phantom_and_loss().set_input(Policy::Strict, Some(&["w2-3", "w1-7"]), 3000);
        let report = analyse(&input);
        let svg = svg(&input, &report, "set");
        assert!(svg.contains("2 acknowledged adds, 0 unknown adds (0 in the final read), 1 failed adds, final set of 2"), "{svg}");
        assert!(svg.contains("1 lost elements (50.0%), 1 phantoms"), "{svg}");
        assert!(svg.contains("SAFETY VIOLATED"));
        // The lost add w1-3 is ringed where it was acknowledged (0.21 s), the failed add
        // w2-3 has a dashed ring, the read that showed it a diamond.
        let x = |s: f64| MARGIN_LEFT + s * MIN_PLOT_WIDTH / 3.0;
        let ring = format!(r#"<circle cx="{:.1}" cy"#, x(0.21));
        let lost_ring = svg
            .lines()
            .filter(|l| l.starts_with(&ring) && l.contains(LOST))
            .count();
        assert_eq!(lost_ring, 1, "{svg}");
        let dashed = format!(r#"<circle cx="{:.1}""#, x(1.21));
        assert_eq!(
            svg.lines()
                .filter(|l| l.starts_with(&dashed) && l.contains(PHANTOM))
                .count(),
            1,
            "{svg}"
        );
        let diamond = format!(r#"<path d="M{:.1},"#, x(2.03));
        assert_eq!(
            svg.lines()
                .filter(|l| l.starts_with(&diamond) && l.contains(PHANTOM))
                .count(),
            1,
            "{svg}"
        );
        assert!(
            svg.contains("add w2-3"),
            "the add's element is in its tooltip"
        );
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }

    #[test]
    fn timeline_has_a_lane_per_worker_and_escapes_its_title() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.turn(2, 1000, 11, 1);
        h.turn(3, 2000, 12, 2);
        h.fault(1, FaultKind::KillStorage, Target::Storage, 2500, 2900);
        let input = h.input(Policy::Strict, Some(3), 3000);
        let report = analyse(&input);
        let svg = svg(&input, &report, "run <1> & \"more\"");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        // Three worker lanes, plus the fault and overlap lanes.
        assert_eq!(svg.matches(r#"class="lane""#).count(), 5);
        for w in 1..=3 {
            assert!(svg.contains(&format!(">worker {w}</text>")), "worker {w}");
        }
        assert!(svg.contains("run &lt;1&gt; &amp; &quot;more&quot;"));
        assert!(!svg.contains("run <1>"));
        assert!(svg.contains("storage killed"));
        // Every element that opens is closed: as many `<` as `>`, and text never holds one.
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }

    #[test]
    fn partitions_are_spans_whose_titles_name_the_sides() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.turn(2, 1000, 11, 1);
        h.fault(
            1,
            FaultKind::PartitionHalves,
            Target::LockService(None),
            200,
            900,
        );
        h.fault(
            2,
            FaultKind::PartitionLeader,
            Target::LockService(Some(2)),
            1200,
            1900,
        );
        let sides = "split: members [0, 1] with workers 1 | members [2] with workers 2";
        h.faults[1].note = Some(sides.into());
        let input = h.input(Policy::Strict, Some(2), 2000);
        let report = analyse(&input);
        let svg = svg(&input, &report, "partitions");
        assert!(svg.contains("members split 0.20-0.90 s"), "{svg}");
        assert!(
            svg.contains(&esc(sides)),
            "the sides are in the span's title"
        );
        assert!(svg.contains("leader 2 cut off 1.20-1.90 s"), "{svg}");
        for freeze in ["lockd frozen", "member 2 frozen"] {
            assert!(
                !svg.contains(freeze),
                "a partition is not drawn as a freeze"
            );
        }
    }

    /// A tiny deterministic generator, so the sample run is the same every time.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// The storage of the simulated run: the counter and its fence, moved by the real rule.
    struct Storage {
        policy: Policy,
        fence: Option<FencingToken>,
        counter: u64,
    }

    impl Storage {
        fn admit(&mut self, access: Access, token: u64) -> bool {
            match fence::check(
                self.policy,
                access,
                "c",
                FencingToken::new(token),
                self.fence,
            ) {
                Ok(accepted) => {
                    self.fence = accepted.raise_to.or(self.fence);
                    true
                }
                Err(_) => false,
            }
        }
    }

    /// A write that happens later than the turn that issued it: a frozen or revoked holder's.
    struct Late {
        worker: u32,
        at: u64,
        token: u64,
        value: u64,
    }

    /// `end` ms of five workers taking turns, with a holder frozen after its read every
    /// seventh turn, a revoked lease, a storage kill and a frozen lock service. Returns the
    /// history and the counter the storage ended with.
    fn sample(policy: Policy, end: u64) -> (History, u64) {
        const TTL: u64 = 2_000;
        let mut rng = Lcg(42);
        let mut h = History::default();
        let mut store = Storage {
            policy,
            fence: None,
            counter: 0,
        };
        let mut late: Vec<Late> = Vec::new();
        let mut busy_until = [0u64; 6];
        // The storage is killed during the first write due after 30 s.
        const KILL_AFTER: u64 = 30_000;
        let mut kill = (u64::MAX, u64::MAX);
        let freeze_ls = (45_000, 46_500);
        h.fault(
            101,
            FaultKind::FreezeLockService,
            Target::LockService(None),
            freeze_ls.0,
            freeze_ls.1,
        );
        let mut t = 100;
        let mut token = 10;
        let mut fault_id = 1;
        let mut turn = 0;
        let mut worker = 0;
        while t < end - 3_000 {
            turn += 1;
            worker = (1..=5)
                .map(|i| (worker + i - 1) % 5 + 1)
                .find(|&w| busy_until[w as usize] <= t)
                .unwrap_or(worker % 5 + 1);
            token += 1 + rng.below(3);
            let lease = 0x7000 + token as i64;
            let mut lock_done = t + 5 + rng.below(20);
            if (freeze_ls.0..freeze_ls.1).contains(&lock_done) {
                lock_done = freeze_ls.1 + 10;
            }
            h.lock(worker, t, lock_done, lease, token);
            h.key(lock_done, lease, token, KeyChange::Created);
            let read_at = lock_done + 10;
            flush(&mut late, &mut h, &mut store, read_at);
            if (kill.0..kill.1).contains(&read_at) {
                let err = Some("connection refused");
                h.op(
                    worker,
                    OpKind::Read,
                    read_at,
                    read_at + 1,
                    End::Fail,
                    Some(token),
                    None,
                    err,
                );
                h.unlock(worker, read_at + 5, read_at + 10);
                h.key(read_at + 10, lease, token, KeyChange::Deleted);
                t = read_at + 40;
                continue;
            }
            let read_ok = store.admit(Access::Read, token);
            let read = store.counter;
            let end = if read_ok { End::Ok } else { End::Stale };
            h.op(
                worker,
                OpKind::Read,
                read_at,
                read_at + 3,
                end,
                Some(token),
                Some(read),
                None,
            );
            let work = rng.below(2_000);
            if turn % 7 == 3 || turn % 11 == 8 {
                // Frozen past the TTL right after the read (or its lease revoked): the lock
                // service lets the next worker in while this one still means to write.
                let (gone, resume) = if turn % 7 == 3 {
                    let resume = read_at + 3 + TTL + 1_500 + rng.below(1_000);
                    let id = fault_id;
                    fault_id += 1;
                    h.fault(
                        id,
                        FaultKind::FreezeAfterRead,
                        Target::Worker(worker),
                        read_at + 3,
                        resume,
                    );
                    (read_at + 3 + TTL, resume)
                } else {
                    let revoke = read_at + 200;
                    h.faults.push(crate::check::history::FaultEvent {
                        id: fault_id,
                        fault: FaultKind::Revoke,
                        target: Target::Worker(worker),
                        start_mono_ns: at(revoke),
                        end_mono_ns: Some(at(revoke)),
                        wall_ms: 0,
                        lease: Some(lease),
                        note: None,
                    });
                    fault_id += 1;
                    (revoke, read_at + 200 + 800 + rng.below(800))
                };
                h.key(gone, lease, token, KeyChange::Deleted);
                late.push(Late {
                    worker,
                    at: resume,
                    token,
                    value: read + 1,
                });
                busy_until[worker as usize] = resume + 20;
                t = gone + 30;
                continue;
            }
            let write_at = read_at + 3 + work;
            if kill.0 == u64::MAX && write_at >= KILL_AFTER && read_ok {
                kill = (write_at - 2, write_at + 1_200);
                h.fault(100, FaultKind::KillStorage, Target::Storage, kill.0, kill.1);
            }
            flush(&mut late, &mut h, &mut store, write_at);
            if !read_ok {
                h.unlock(worker, write_at, write_at + 4);
            } else if (kill.0..kill.1).contains(&write_at) {
                let err = Some("connection reset by peer");
                let w = Some(read + 1);
                h.op(
                    worker,
                    OpKind::Write,
                    write_at,
                    kill.0 + 3,
                    End::Info,
                    Some(token),
                    w,
                    err,
                );
                h.unlock(worker, kill.1 + 100, kill.1 + 104);
            } else {
                let end = if store.admit(Access::Write, token) {
                    store.counter = read + 1;
                    End::Ok
                } else {
                    End::Stale
                };
                let w = Some(read + 1);
                h.op(
                    worker,
                    OpKind::Write,
                    write_at,
                    write_at + 4,
                    end,
                    Some(token),
                    w,
                    None,
                );
                h.unlock(worker, write_at + 8, write_at + 12);
            }
            let released = h
                .events
                .last()
                .map_or(t, |e| (e.mono_ns - START) / 1_000_000);
            h.key(released, lease, token, KeyChange::Deleted);
            t = released + 20 + rng.below(60);
        }
        flush(&mut late, &mut h, &mut store, end);
        (h, store.counter)
    }

    /// Late writes of frozen holders land in time order with the other turns' accesses.
    fn flush(late: &mut Vec<Late>, h: &mut History, store: &mut Storage, until: u64) {
        late.sort_by_key(|l| l.at);
        while late.first().is_some_and(|l| l.at < until) {
            let l = late.remove(0);
            let end = if store.admit(Access::Write, l.token) {
                store.counter = l.value;
                End::Ok
            } else {
                End::Stale
            };
            let w = Some(l.value);
            h.op(
                l.worker,
                OpKind::Write,
                l.at,
                l.at + 4,
                end,
                Some(l.token),
                w,
                None,
            );
            h.unlock(l.worker, l.at + 8, l.at + 12);
        }
    }

    fn sample_input(policy: Policy) -> Input {
        sample_run(policy, 60_000)
    }

    fn sample_run(policy: Policy, end: u64) -> Input {
        let (h, final_value) = sample(policy, end);
        h.input(policy, Some(final_value), end)
    }

    #[test]
    fn the_sample_run_loses_updates_only_without_read_fencing() {
        let strict = analyse(&sample_input(Policy::Strict));
        let writes = analyse(&sample_input(Policy::Writes));
        let off = analyse(&sample_input(Policy::Off));
        assert_eq!(
            strict.counter().lost_updates.count,
            0,
            "{:?}",
            strict.counter().lost_updates
        );
        assert_eq!(strict.backwards_tokens, vec![]);
        assert!(strict.valid());
        assert!(writes.counter().lost_updates.count > 0);
        assert!(off.counter().lost_updates.count > 0);
        assert!(!strict.overlaps.intervals.is_empty());
    }

    /// Writes the sample run's pictures for a person to look at:
    /// `cargo test --lib check::timeline -- --ignored`, then open the files in
    /// `$CHECK_SAMPLE_DIR` (default: the system's temporary directory).
    #[test]
    #[ignore = "writes sample pictures for people"]
    fn write_sample_timelines() {
        let dir = std::env::var_os("CHECK_SAMPLE_DIR")
            .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        let mut rows = Vec::new();
        for policy in [Policy::Writes, Policy::Strict, Policy::Off] {
            let input = sample_input(policy);
            let report = analyse(&input);
            let name = match policy {
                Policy::Writes => "check-sample.svg".to_owned(),
                other => format!("check-sample-{other}.svg"),
            };
            let picture = svg(&input, &report, "fencelock check: sample run");
            std::fs::write(dir.join(name), picture).unwrap();
            rows.push((policy.as_str(), report));
        }
        // The longest run the picture is meant for.
        let input = sample_run(Policy::Writes, 120_000);
        let picture = svg(&input, &analyse(&input), "fencelock check: 120 s sample");
        std::fs::write(dir.join("check-sample-120s.svg"), picture).unwrap();
        let rows: Vec<(&str, &Report)> = rows.iter().map(|(l, r)| (*l, r)).collect();
        println!("{}", crate::check::analysis::summary_table(&rows));
    }
}
