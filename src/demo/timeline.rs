//! How the demo shows what happened: a side-by-side summary, a timeline in the terminal, and
//! the same timeline as an SVG picture, after Martin Kleppmann's two diagrams of the
//! expired-lease problem (one unfenced, one fenced).
//!
//! Invariants:
//! - Events keep their order on every time axis, and every gap between two events is at
//!   least a few columns (pixels) wide, so that steps a few milliseconds apart stay
//!   visible next to a lease TTL of seconds; the labels carry the real times.
//! - Every text that goes into the SVG is escaped.

use std::fmt::Write as _;

use super::Report;
use super::resource::Resource;
use super::scenario::{ClientReport, Scenario, Times, WriteOutcome};
use crate::svg::escape as esc;
use fencelock::storage::Policy;

/// The name a scenario goes by.
pub fn title(policy: Policy) -> &'static str {
    match policy {
        Policy::Off => "without fencing",
        _ => "with fencing",
    }
}

fn scenario_title(s: &Scenario) -> String {
    let policy = s.fencing.parse().unwrap_or(Policy::Strict);
    format!("{} (--fencing {})", title(policy), s.fencing)
}

fn verdict(s: &Scenario) -> &'static str {
    match (s.client1.write, s.final_value.as_deref()) {
        (WriteOutcome::Stale, Some(v)) if v == s.client2.value => {
            "safe: the stale write was refused"
        }
        (WriteOutcome::Accepted, Some(v)) if v == s.client1.value => {
            "client 2's write was silently lost"
        }
        _ => "unexpected: see the events above",
    }
}

/// A client's write in a few words; the stale writer's accepted write overwrote a newer one.
fn write_words(client: &ClientReport, stale_writer: bool) -> String {
    match client.write {
        WriteOutcome::Accepted if stale_writer => "accepted (overwrites!)".into(),
        WriteOutcome::Accepted => "accepted".into(),
        WriteOutcome::Stale => match client.current_token {
            Some(current) => format!("rejected: stale ({} < {current})", client.token),
            None => "rejected: stale".into(),
        },
    }
}

/// The two scenarios side by side, one row per fact.
pub fn summary(report: &Report) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![(
        String::new(),
        report.scenarios.iter().map(scenario_title).collect(),
    )];
    let mut row = |name: &str, cell: &dyn Fn(&Scenario) -> String| {
        rows.push((name.into(), report.scenarios.iter().map(cell).collect()));
    };
    row("TTL granted", &|s| format!("{} s", s.ttl_s));
    row("client 1 fencing token", &|s| s.client1.token.to_string());
    row("client 2 fencing token", &|s| s.client2.token.to_string());
    row("lease expiry seen", &|s| {
        format!(
            "{:.3} s into the freeze",
            (s.times_ms.lease_expired - s.times_ms.client1_frozen) / 1000.0
        )
    });
    row("client 2 write", &|s| write_words(&s.client2, false));
    row("client 1 write (stale)", &|s| write_words(&s.client1, true));
    row("value stored at the end", &|s| {
        s.final_value
            .as_deref()
            .map_or("nothing".into(), |v| format!("{v:?}"))
    });
    row("verdict", &|s| verdict(s).into());

    let name_width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let cell_width = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (name, cells) in rows {
        let mut line = format!("{name:<name_width$}");
        for cell in cells {
            let _ = write!(line, "   {cell:<cell_width$}");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Columns of the terminal timeline's time axis.
const COLUMNS: usize = 60;
/// Fewest columns between two events.
const MIN_COLUMNS: f64 = 3.0;

/// Maps times (ms) to positions: order kept, each gap at least `min_gap` wide, the rest of
/// `width` shared in proportion to the real gaps.
struct Scale {
    times: Vec<f64>,
    positions: Vec<f64>,
}

impl Scale {
    fn new(mut times: Vec<f64>, width: f64, min_gap: f64) -> Scale {
        times.sort_by(f64::total_cmp);
        times.dedup();
        let gaps = times.len().saturating_sub(1) as f64;
        let span = times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
        let spare = (width - gaps * min_gap).max(0.0);
        let per_ms = if span > 0.0 { spare / span } else { 0.0 };
        let mut positions = Vec::with_capacity(times.len());
        let mut at = 0.0;
        for (i, t) in times.iter().enumerate() {
            if i > 0 {
                at += min_gap + (t - times[i - 1]) * per_ms;
            }
            positions.push(at);
        }
        Scale { times, positions }
    }

    /// The position of `t`, interpolated between the known times.
    fn at(&self, t: f64) -> f64 {
        match self.times.iter().position(|&known| known >= t) {
            None => self.positions.last().copied().unwrap_or(0.0),
            Some(0) => 0.0,
            Some(i) => {
                let (t0, t1) = (self.times[i - 1], self.times[i]);
                let (p0, p1) = (self.positions[i - 1], self.positions[i]);
                p0 + (p1 - p0) * (t - t0) / (t1 - t0)
            }
        }
    }
}

/// The scenario's times with every event strictly after the one before it in the story,
/// so that two events read in the same tenth of a millisecond (client 1 acquired, then
/// frozen) still get a gap of their own.
fn story_times(s: &Scenario) -> Times {
    let mut t = s.times_ms.clone();
    let mut last = f64::NEG_INFINITY;
    for field in [
        &mut t.client1_acquired,
        &mut t.client1_frozen,
        &mut t.client2_started,
        &mut t.lease_expired,
        &mut t.client2_acquired,
        &mut t.client2_wrote,
        &mut t.client2_exited,
        &mut t.client1_resumed,
        &mut t.client1_wrote,
        &mut t.client1_exited,
    ] {
        *field = field.max(last + 0.001);
        last = *field;
    }
    t
}

fn event_times(t: &Times) -> Vec<f64> {
    vec![
        t.client1_acquired,
        t.client1_frozen,
        t.client2_started,
        t.lease_expired,
        t.client2_acquired,
        t.client2_wrote,
        t.client2_exited,
        t.client1_resumed,
        t.client1_wrote,
        t.client1_exited,
    ]
}

/// The timeline of each scenario as lanes of characters.
pub fn terminal(report: &Report) -> String {
    let mut text = String::new();
    for s in &report.scenarios {
        let t = &story_times(s);
        let scale = Scale::new(event_times(t), (COLUMNS - 1) as f64, MIN_COLUMNS);
        let col = |t: f64| (scale.at(t).round() as usize).min(COLUMNS - 1);
        let mut lanes = [[' '; COLUMNS]; 4];
        let fill = |lane: &mut [char; COLUMNS], from: f64, to: f64, c: char| {
            for cell in &mut lane[col(from)..col(to).max(col(from))] {
                *cell = c;
            }
        };
        let mark = |o: WriteOutcome| {
            if o == WriteOutcome::Stale {
                '✗'
            } else {
                '✓'
            }
        };

        fill(&mut lanes[0], t.client1_acquired, t.client1_frozen, '━');
        fill(&mut lanes[0], t.client1_frozen, t.client1_resumed, '░');
        fill(&mut lanes[0], t.client1_resumed, t.client1_wrote, '━');
        lanes[0][col(t.client1_wrote)] = mark(s.client1.write);

        fill(&mut lanes[1], t.client2_started, t.client2_acquired, '·');
        fill(&mut lanes[1], t.client2_acquired, t.client2_exited, '━');
        lanes[1][col(t.client2_wrote)] = mark(s.client2.write);

        fill(&mut lanes[2], t.client1_acquired, t.lease_expired, '1');
        lanes[2][col(t.lease_expired)] = '✕';
        fill(&mut lanes[2], t.client2_acquired, t.client2_exited, '2');

        lanes[3][col(t.client2_wrote)] = mark(s.client2.write);
        lanes[3][col(t.client1_wrote)] = mark(s.client1.write);

        let notes = [
            format!(
                "token {}, write {}",
                s.client1.token,
                write_words(&s.client1, true)
            ),
            format!(
                "token {}, write {}",
                s.client2.token,
                write_words(&s.client2, false)
            ),
            format!("lease expired at {:.3} s", t.lease_expired / 1000.0),
            format!(
                "holds {}",
                s.final_value
                    .as_deref()
                    .map_or("nothing".into(), |v| format!("{v:?}"))
            ),
        ];
        let _ = writeln!(text, "{}: {}", scenario_title(s), verdict(s));
        for (name, (lane, note)) in ["client 1", "client 2", "lock service", lane_name(report)]
            .iter()
            .zip(lanes.iter().zip(notes))
        {
            let lane: String = lane.iter().collect();
            let _ = writeln!(text, "  {name:<12} {lane}  {note}");
        }
        let end = format!("{:.3} s", t.client1_exited / 1000.0);
        let _ = writeln!(text, "  {:<12} 0 s{end:>width$}\n", "", width = COLUMNS - 3);
    }
    text.push_str(
        "━ holds the lock (as far as it knows)  ░ frozen (SIGSTOP)  · waits for the lock\n\
         1/2 the lock service's holder  ✕ lease expired  ✓ write accepted  ✗ write rejected\n\
         Steps a few milliseconds apart are widened to stay visible; the times are real.\n",
    );
    text
}

const SVG_WIDTH: f64 = 1080.0;
/// Where the time axis starts and ends.
const PLOT_LEFT: f64 = 150.0;
const PLOT_RIGHT: f64 = 680.0;
/// Fewest pixels between two events.
const MIN_PIXELS: f64 = 34.0;
const PANEL_HEIGHT: f64 = 320.0;
const HEADER: f64 = 70.0;
const FOOTER: f64 = 60.0;

/// A white outline behind a text that crosses a line, so both stay readable.
const HALO: &str =
    r#"paint-order="stroke" stroke="white" stroke-width="4" stroke-linejoin="round""#;

const BLUE: &str = "#2b6cb0";
const ORANGE: &str = "#dd6b20";
const RED: &str = "#c53030";
const GREEN: &str = "#2f855a";
const GREY: &str = "#4a5568";

/// The timeline picture: one panel per scenario, one lane per participant.
pub fn svg(report: &Report) -> String {
    let height = HEADER + PANEL_HEIGHT * report.scenarios.len() as f64 + FOOTER;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" viewBox="0 0 {SVG_WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">
<defs>
  <pattern id="frozen" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
    <rect width="8" height="8" fill="#e2e8f0"/><line x1="0" y1="0" x2="0" y2="8" stroke="#a0aec0" stroke-width="3"/>
  </pattern>
  <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
    <path d="M0,0 L10,5 L0,10 z" fill="{GREY}"/>
  </marker>
</defs>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="30" font-size="19" font-weight="bold">fencelock demo: a lock holder frozen past its lease, with and without fencing</text>
<text x="20" y="52" fill="{GREY}">lock service: {service}; times in seconds after client 1 acquired the lock; TTL {ttl} s granted</text>
"##,
        service = esc(&format!(
            "{} on {}",
            report.lock_service,
            report.endpoints.join(",")
        )),
        ttl = report.scenarios.first().map_or(0, |s| s.ttl_s),
    );
    for (i, s) in report.scenarios.iter().enumerate() {
        panel(
            &mut svg,
            s,
            HEADER + PANEL_HEIGHT * i as f64,
            lane_name(report),
        );
    }
    let y = height - FOOTER + 24.0;
    let _ = write!(
        svg,
        r##"<g transform="translate(20,{y})" fill="{GREY}">
  <rect x="0" y="-10" width="26" height="12" fill="{BLUE}"/><text x="32" y="0">holds the lock (as far as it knows)</text>
  <rect x="260" y="-10" width="26" height="12" fill="url(#frozen)" stroke="#a0aec0"/><text x="292" y="0">frozen by SIGSTOP</text>
  <line x1="430" y1="-4" x2="456" y2="-4" stroke="{GREY}" stroke-dasharray="2,3" stroke-width="2"/><text x="462" y="0">waits for the lock</text>
  <line x1="600" y1="-12" x2="600" y2="4" stroke="{RED}" stroke-dasharray="5,3" stroke-width="2"/><text x="608" y="0">lease expired (seen on the lock service)</text>
  <text x="0" y="22">Steps a few milliseconds apart are widened so that they can be seen next to the TTL; the labels give the real times.</text>
</g>
</svg>
"##
    );
    svg
}

/// One scenario's panel, its top at `top`.
fn panel(svg: &mut String, s: &Scenario, top: f64, resource: &str) {
    let t = &story_times(s);
    let scale = Scale::new(event_times(t), PLOT_RIGHT - PLOT_LEFT, MIN_PIXELS);
    let x = |ms: f64| PLOT_LEFT + scale.at(ms);
    let (c1, c2, lock, storage) = (top + 84.0, top + 134.0, top + 184.0, top + 234.0);
    let fenced = s.client1.write == WriteOutcome::Stale;
    let (verdict_colour, headline) = if fenced {
        (
            GREEN,
            "the stale write is rejected: the storage keeps client 2's value",
        )
    } else {
        (
            RED,
            "the stale write is accepted: client 2's value is silently overwritten",
        )
    };
    let _ = write!(
        svg,
        r##"<line x1="20" y1="{top}" x2="{right}" y2="{top}" stroke="#cbd5e0"/>
<text x="20" y="{title_y}" font-size="16" font-weight="bold">{title}</text>
<text x="20" y="{sub_y}" fill="{verdict_colour}" font-weight="bold">{headline}</text>
"##,
        right = SVG_WIDTH - 20.0,
        title_y = top + 24.0,
        sub_y = top + 43.0,
        title = esc(&format!(
            "{}: storage started with --fencing {}",
            capitalise(title_of(s)),
            s.fencing
        )),
    );
    for (name, y) in [
        ("client 1", c1),
        ("client 2", c2),
        ("lock service", lock),
        (resource, storage),
    ] {
        let _ = write!(
            svg,
            r##"<text x="20" y="{ty}" font-weight="bold">{name}</text>
<line x1="{PLOT_LEFT}" y1="{y}" x2="{PLOT_RIGHT}" y2="{y}" stroke="#edf2f7"/>
"##,
            ty = y + 4.0,
        );
    }

    // Client 1: holds, is frozen, wakes up believing it still holds.
    bar(
        svg,
        x(t.client1_acquired),
        x(t.client1_frozen),
        c1,
        BLUE,
        "",
    );
    let (fx0, fx1) = (x(t.client1_frozen), x(t.client1_resumed));
    let _ = write!(
        svg,
        r##"<rect x="{fx0}" y="{y}" width="{w}" height="18" fill="url(#frozen)" stroke="#a0aec0"/>
<text x="{tx}" y="{ty}" text-anchor="middle" fill="#1a202c" {HALO}>frozen (SIGSTOP): no keepalives, still thinks it holds the lock</text>
"##,
        y = c1 - 9.0,
        w = (fx1 - fx0).max(1.0),
        tx = (fx0 + fx1) / 2.0,
        ty = c1 - 14.0,
    );
    bar(svg, x(t.client1_resumed), x(t.client1_wrote), c1, BLUE, "");
    label(
        svg,
        x(t.client1_wrote) + 14.0,
        c1 + 4.0,
        &format!("SIGCONT: resumes, writes with token {}", s.client1.token),
        BLUE,
        "start",
    );
    label(
        svg,
        x(t.client1_acquired),
        c1 + 24.0,
        &format!("token {}", s.client1.token),
        BLUE,
        "start",
    );

    // Client 2: waits in line, then holds and writes.
    let _ = write!(
        svg,
        r##"<line x1="{a}" y1="{c2}" x2="{b}" y2="{c2}" stroke="{GREY}" stroke-dasharray="2,3" stroke-width="2"/>
<text x="{a}" y="{ty}" fill="{GREY}">waits for the lock</text>
"##,
        a = x(t.client2_started),
        b = x(t.client2_acquired),
        ty = c2 - 8.0,
    );
    bar(
        svg,
        x(t.client2_acquired),
        x(t.client2_exited),
        c2,
        ORANGE,
        "",
    );
    label(
        svg,
        x(t.client2_acquired),
        c2 + 24.0,
        &format!("token {}", s.client2.token),
        ORANGE,
        "middle",
    );

    // The lock service: whose lease holds the lock, and when the first one expired.
    bar(
        svg,
        x(t.client1_acquired),
        x(t.lease_expired),
        lock,
        "#90cdf4",
        &format!("client 1's lease (token {})", s.client1.token),
    );
    bar(
        svg,
        x(t.client2_acquired),
        x(t.client2_exited),
        lock,
        "#fbd38d",
        "",
    );
    label(
        svg,
        x(t.client2_exited) + 4.0,
        lock + 4.0,
        "client 2",
        ORANGE,
        "start",
    );
    let ex = x(t.lease_expired);
    let _ = write!(
        svg,
        r##"<line x1="{ex}" y1="{y0}" x2="{ex}" y2="{y1}" stroke="{RED}" stroke-dasharray="5,3" stroke-width="2"/>
<text x="{tx}" y="{ty}" fill="{RED}" text-anchor="end" {HALO}>lease expired {secs:.3} s</text>
"##,
        y0 = c1 - 24.0,
        y1 = storage + 10.0,
        tx = ex - 4.0,
        ty = lock + 26.0,
        secs = t.lease_expired / 1000.0,
    );

    // The storage, and each write as an arrow into it.
    let _ = writeln!(
        svg,
        r##"<line x1="{PLOT_LEFT}" y1="{storage}" x2="{PLOT_RIGHT}" y2="{storage}" stroke="{GREY}" stroke-width="2"/>"##
    );
    write_arrow(svg, x(t.client2_wrote), c2, storage, s, false);
    write_arrow(svg, x(t.client1_wrote), c1, storage, s, true);

    // The time axis: the times that tell the story.
    let axis = storage + 52.0;
    let _ = write!(
        svg,
        r##"<line x1="{PLOT_LEFT}" y1="{axis}" x2="{PLOT_RIGHT}" y2="{axis}" stroke="{GREY}"/>
<text x="{PLOT_RIGHT}" y="{ly}" fill="{GREY}" text-anchor="end" font-size="11">time →</text>
"##,
        ly = axis - 6.0,
    );
    for (ms, anchor) in [
        (t.client1_acquired, "start"),
        (t.lease_expired, "end"),
        (t.client1_wrote, "start"),
    ] {
        let tx = x(ms);
        let _ = write!(
            svg,
            r##"<line x1="{tx}" y1="{axis}" x2="{tx}" y2="{y2}" stroke="{GREY}"/>
<text x="{tx}" y="{ty}" fill="{GREY}" font-size="11" text-anchor="{anchor}">{secs:.3} s</text>
"##,
            y2 = axis + 5.0,
            ty = axis + 17.0,
            secs = ms / 1000.0,
        );
    }
}

/// A write from a client's lane into the storage, with its outcome next to the arrowhead.
fn write_arrow(
    svg: &mut String,
    x: f64,
    from: f64,
    storage: f64,
    s: &Scenario,
    stale_writer: bool,
) {
    let (client, outcome) = if stale_writer {
        (&s.client1, s.client1.write)
    } else {
        (&s.client2, s.client2.write)
    };
    let colour = match (outcome, stale_writer) {
        (WriteOutcome::Stale, _) => GREEN,
        (WriteOutcome::Accepted, true) => RED,
        (WriteOutcome::Accepted, false) => GREEN,
    };
    let text = match outcome {
        WriteOutcome::Accepted if stale_writer => format!(
            "✓ write, token {}: accepted, overwrites client 2's value",
            client.token
        ),
        WriteOutcome::Accepted => format!("✓ write, token {}: ok", client.token),
        WriteOutcome::Stale => format!(
            "✗ write, token {}: rejected, {} seen before",
            client.token,
            client
                .current_token
                .map_or("a newer token".into(), |c| format!("token {c}"))
        ),
    };
    // Client 2's label sits left of its arrow, client 1's right of its own: they are close.
    let (tx, anchor, ty) = if stale_writer {
        (x + 18.0, "start", storage + 34.0)
    } else {
        (x + 2.0, "end", storage + 18.0)
    };
    let _ = write!(
        svg,
        r##"<circle cx="{x}" cy="{from}" r="4" fill="{GREY}"/>
<line x1="{x}" y1="{from}" x2="{ax}" y2="{ay}" stroke="{GREY}" stroke-width="1.5" marker-end="url(#arrow)"/>
<text x="{tx}" y="{ty}" fill="{colour}" font-weight="bold" text-anchor="{anchor}">{text}</text>
"##,
        ax = x + 12.0,
        ay = storage - 3.0,
        text = esc(&text),
    );
}

/// A lock-hold bar from `x0` to `x1` on the lane at `y`, with an optional label inside.
fn bar(svg: &mut String, x0: f64, x1: f64, y: f64, fill: &str, text: &str) {
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{ry}" width="{w}" height="18" rx="3" fill="{fill}"/>"##,
        ry = y - 9.0,
        w = (x1 - x0).max(2.0),
    );
    if !text.is_empty() {
        label(svg, x0 + 8.0, y + 4.0, text, "#1a202c", "start");
    }
}

fn label(svg: &mut String, x: f64, y: f64, text: &str, fill: &str, anchor: &str) {
    let _ = writeln!(
        svg,
        r##"<text x="{x}" y="{y}" fill="{fill}" text-anchor="{anchor}">{text}</text>"##,
        text = esc(text),
    );
}

/// The name of the lane of the resource the clients wrote to.
fn lane_name(report: &Report) -> &'static str {
    match report.resource {
        Resource::Postgres => "postgres",
        Resource::Etcd => "etcd key",
        Resource::Storage => "storage",
    }
}

fn title_of(s: &Scenario) -> &'static str {
    title(s.fencing.parse().unwrap_or(Policy::Strict))
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_keeps_order_and_a_minimum_gap() {
        let scale = Scale::new(vec![0.0, 2.0, 1000.0, 1003.0, 1005.0], 100.0, 5.0);
        let p: Vec<f64> = [0.0, 2.0, 1000.0, 1003.0, 1005.0]
            .iter()
            .map(|&t| scale.at(t))
            .collect();
        assert_eq!(p[0], 0.0);
        assert!((p[4] - 100.0).abs() < 1e-9, "ends at the width: {p:?}");
        for w in p.windows(2) {
            assert!(w[1] - w[0] >= 5.0, "gap below the minimum: {p:?}");
        }
        assert!(p[2] - p[1] > 50.0, "the long wait stays long: {p:?}");
    }

    #[test]
    fn svg_text_is_escaped() {
        assert_eq!(esc(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }

    fn client(token: u64, n: u8, write: WriteOutcome, current: Option<u64>) -> ClientReport {
        ClientReport {
            lease: "694d7a1b2c3d4e5f".into(),
            lock_key: format!("/l/{n}"),
            token,
            value: format!("written by client {n}"),
            write,
            current_token: current,
            lease_lost_noticed: None,
            exit_status: Some(if write == WriteOutcome::Stale { 3 } else { 0 }),
        }
    }

    /// Client 1 acquired and was frozen in the same tenth of a millisecond, as it happens.
    fn scenario(fencing: &str, stale: bool) -> Scenario {
        let (c1_write, current, last) = if stale {
            (WriteOutcome::Stale, Some(8), "written by client 2")
        } else {
            (WriteOutcome::Accepted, None, "written by client 1")
        };
        Scenario {
            fencing: fencing.into(),
            lock: "/l".into(),
            key: "key0".into(),
            ttl_s: 1,
            client1: client(5, 1, c1_write, current),
            client2: client(8, 2, WriteOutcome::Accepted, None),
            final_value: Some(last.into()),
            lease_expired_before_client2_acquired: true,
            expiry_revision: 9,
            client2_acquired_revision: 9,
            times_ms: Times {
                client1_acquired: 0.0,
                client1_frozen: 0.0,
                client2_started: 1.2,
                lease_expired: 1000.9,
                client2_acquired: 1002.5,
                client2_wrote: 1004.0,
                client2_exited: 1006.1,
                client1_resumed: 1006.2,
                client1_wrote: 1008.0,
                client1_exited: 1010.0,
            },
        }
    }

    fn report() -> Report {
        Report {
            resource: Resource::Storage,
            lock_service: "lockd".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            ttl_requested_s: 1,
            scenarios: vec![scenario("strict", true), scenario("off", false)],
            fencing_rejected_stale_write: true,
            unfenced_stale_write_overwrote: true,
            svg: "demo-timeline.svg".into(),
            took_ms: 2100.0,
        }
    }

    #[test]
    fn the_terminal_timeline_marks_each_write_where_it_happened() {
        let text = terminal(&report());
        println!("{text}");
        let lanes: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
        let column = |lane: &str, mark: char| lane.chars().position(|c| c == mark);
        // With fencing: client 1's write is refused, and the storage shows it at that column.
        assert!(lanes[0].contains("rejected: stale (5 < 8)"), "{}", lanes[0]);
        assert_eq!(column(lanes[0], '✗'), column(lanes[3], '✗'));
        assert_eq!(column(lanes[1], '✓'), column(lanes[3], '✓'));
        assert!(
            column(lanes[1], '✓') < column(lanes[0], '✗'),
            "client 2 wrote first"
        );
        assert!(
            lanes[0].contains('━') && lanes[0].contains('░'),
            "held, then frozen"
        );
        assert!(
            lanes[2].contains('✕'),
            "the expiry on the lock service's lane"
        );
        // Without fencing both writes are accepted and client 1's value stays.
        assert!(lanes[5].contains("accepted (overwrites!)"), "{}", lanes[5]);
        assert!(
            lanes[8].contains(r#""written by client 1""#),
            "{}",
            lanes[8]
        );
    }

    #[test]
    fn the_summary_puts_the_two_scenarios_side_by_side() {
        let text = summary(&report());
        println!("{text}");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name:?}"))
                .to_owned()
        };
        assert!(row("client 1 write (stale)").contains("rejected: stale (5 < 8)"));
        assert!(row("client 1 write (stale)").contains("accepted (overwrites!)"));
        assert!(row("value stored at the end").contains(r#""written by client 2""#));
        assert!(row("verdict").contains("safe") && row("verdict").contains("silently lost"));
    }

    #[test]
    fn the_picture_has_a_panel_per_scenario_and_balanced_elements() {
        let svg = svg(&report());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("With fencing: storage started with --fencing strict"));
        assert!(svg.contains("Without fencing: storage started with --fencing off"));
        assert!(svg.contains("rejected, token 8 seen before"));
        assert!(svg.contains("accepted, overwrites client 2&#39;s value"));
        for tag in ["text", "g", "svg", "defs", "pattern", "marker"] {
            let open =
                svg.matches(&format!("<{tag} ")).count() + svg.matches(&format!("<{tag}>")).count();
            assert_eq!(
                open,
                svg.matches(&format!("</{tag}>")).count(),
                "<{tag}> balanced"
            );
        }
        // Client 1's hold before the freeze is drawn although both happened at 0.0 ms.
        let first_bar = svg
            .lines()
            .find(|l| l.starts_with(&format!(r#"<rect x="{PLOT_LEFT}""#)))
            .expect("a bar at the start of the axis");
        let width: f64 = first_bar
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .and_then(|w| w.parse().ok())
            .expect("a width");
        assert!(width >= MIN_PIXELS, "{first_bar}");
    }
}
