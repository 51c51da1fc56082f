//! The simulator's pictures, as SVG: per run, delivered and failed mail per
//! hour and sender (`chart`); per scenario, every run's failures over time on
//! one axis (`comparison`).
//!
//! Every run of a scenario is drawn on one [`Scale`], so a run with 3 failures
//! never looks like a run with 1,152. Colours are the Okabe-Ito palette, which
//! stays distinct under the common colour-vision deficiencies, and runs also
//! differ by dash pattern. Event labels are laid out in lanes so that none
//! overlaps another.
//!
//! Drawn by hand rather than with a plotting crate: the charts are a few kinds
//! of SVG element (rect paths, lines, text), mirrored small multiples with event
//! lanes are layout a crate would not do for us, and hand-written output is
//! byte-identical from run to run with no font files needed to render it.

use std::fmt::Write;

use super::report::RunReport;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 170.0;
const RIGHT: f64 = 24.0;
const ROW: f64 = 88.0;
const UP: f64 = 44.0;
const DOWN: f64 = 24.0;
const LANE: f64 = 12.0;
const LABEL_FONT: f64 = 9.0;

/// Okabe-Ito colours.
const BLUE: &str = "#0072B2";
const VERMILLION: &str = "#D55E00";
const GREEN: &str = "#009E73";
const PURPLE: &str = "#CC79A7";
const ORANGE: &str = "#E69F00";
const SKY: &str = "#56B4E9";
const GRID: &str = "#dddddd";
const INK: &str = "#333333";

/// One scale for every run of a scenario: the largest hourly figures of any
/// sender in any run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub delivered_per_hour: u64,
    pub failed_per_hour: u64,
}

impl Scale {
    pub fn of(runs: &[RunReport]) -> Scale {
        let hourly = || runs.iter().flat_map(|r| r.detail.hourly.iter());
        Scale {
            delivered_per_hour: hourly()
                .flat_map(|h| h.delivered.iter().copied())
                .max()
                .unwrap_or(0)
                .max(1),
            failed_per_hour: hourly()
                .flat_map(|h| h.failed.iter().copied())
                .max()
                .unwrap_or(0)
                .max(1),
        }
    }
}

/// The SVG document for `run` of the scenario titled `title`, drawn on `scale`
/// (the same for every run of the scenario: [`Scale::of`]).
pub fn chart(title: &str, run: &RunReport, scale: Scale) -> String {
    let detail = &run.detail;
    let hours = detail.hourly.len().max(1);
    let rows: Vec<usize> = (0..detail.senders.len())
        .filter(|s| {
            detail
                .hourly
                .iter()
                .any(|h| h.delivered[*s] > 0 || h.failed[*s] > 0)
        })
        .collect();
    let plot = WIDTH - LEFT - RIGHT;
    let x = |hour: f64| LEFT + plot * hour / hours as f64;
    let bar = (plot / hours as f64).max(0.5);

    let marks = event_marks(run);
    let placed = lanes(&marks, x, hours);
    let lane_count = placed.iter().map(|p| p.lane + 1).max().unwrap_or(0);
    let top = 118.0;
    let rows_bottom = top + ROW * rows.len() as f64;
    let height = rows_bottom + 34.0 + LANE * lane_count as f64 + 10.0;

    let mut svg = open(height);
    heading(
        &mut svg,
        title,
        &[
            format!("run {}: {}", run.name, run.description),
            format!(
                "submitted {}, delivered {}, bounced {}, delayed {}",
                thousands(run.submitted),
                thousands(run.delivered),
                thousands(run.bounced),
                thousands(run.delayed)
            ),
        ],
    );
    let legend_y = 72.0;
    swatch(
        &mut svg,
        LEFT,
        legend_y,
        BLUE,
        "delivered per hour (above each axis)",
    );
    swatch(
        &mut svg,
        LEFT + 260.0,
        legend_y,
        VERMILLION,
        "failed attempts per hour: refused for the IP's reputation, or bounced (below)",
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" fill="{INK}">one scale for every sender and every run of this scenario: a full bar is {} delivered or {} failed per hour</text>"#,
        legend_y + 18.0,
        thousands(scale.delivered_per_hour),
        thousands(scale.failed_per_hour)
    );

    day_grid(&mut svg, run, top - 8.0, rows_bottom, x, hours);

    for (row, s) in rows.iter().enumerate() {
        let axis = top + ROW * row as f64 + UP;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            LEFT - 52.0,
            axis + 4.0,
            escape(&detail.senders[*s])
        );
        y_ticks(&mut svg, axis, scale);
        let mut up = String::new();
        let mut down = String::new();
        for (hour, volume) in detail.hourly.iter().enumerate() {
            let delivered = volume.delivered[*s];
            if delivered > 0 {
                let h = (UP * delivered as f64 / scale.delivered_per_hour as f64).max(0.8);
                let _ = write!(
                    up,
                    "M{:.1} {:.2}h{:.2}v{:.2}h-{:.2}z",
                    x(hour as f64),
                    axis - h,
                    bar,
                    h,
                    bar
                );
            }
            let failed = volume.failed[*s];
            if failed > 0 {
                // Any failure stays visible, however small next to the scale.
                let h = (DOWN * failed as f64 / scale.failed_per_hour as f64).max(1.5);
                let _ = write!(
                    down,
                    "M{:.1} {:.1}h{:.2}v{:.2}h-{:.2}z",
                    x(hour as f64),
                    axis,
                    bar,
                    h,
                    bar
                );
            }
        }
        if !up.is_empty() {
            let _ = writeln!(svg, r#"<path d="{up}" fill="{BLUE}"/>"#);
        }
        if !down.is_empty() {
            let _ = writeln!(svg, r#"<path d="{down}" fill="{VERMILLION}"/>"#);
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{axis:.1}" x2="{:.1}" y2="{axis:.1}" stroke="#888888"/>"##,
            WIDTH - RIGHT
        );
    }
    event_lines(&mut svg, &placed, top - 8.0, rows_bottom + 34.0);
    svg.push_str("</svg>\n");
    svg
}

/// Every run's failed attempts per hour, all senders together, on one axis
/// with values, and the incident's events: the picture that shows what a run
/// with mailfleet changes.
pub fn comparison(title: &str, runs: &[RunReport]) -> String {
    let hours = runs
        .iter()
        .map(|r| r.detail.hourly.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let totals: Vec<Vec<u64>> = runs
        .iter()
        .map(|r| {
            r.detail
                .hourly
                .iter()
                .map(|h| h.failed.iter().sum())
                .collect()
        })
        .collect();
    let peak = totals.iter().flatten().copied().max().unwrap_or(0).max(1);
    let (axis_max, step) = nice_axis(peak);

    let plot = WIDTH - LEFT - RIGHT;
    let x = |hour: f64| LEFT + plot * hour / hours as f64;
    // A moment every run shares (the listing) is drawn once; one that only some
    // runs have (a delisting after mailfleet rested the IP) names its run.
    let per_run: Vec<Vec<Mark>> = runs.iter().map(event_marks).collect();
    let mut marks: Vec<Mark> = Vec::new();
    for (run, run_marks) in runs.iter().zip(&per_run) {
        for mark in run_marks {
            let shared = per_run.iter().all(|other| other.contains(mark));
            let mut mark = mark.clone();
            if !shared && !mark.label.starts_with(&run.name) {
                mark.label = format!("{}: {}", run.name, mark.label);
            }
            marks.push(mark);
        }
    }
    marks.sort_by(|a, b| a.at_hour.total_cmp(&b.at_hour).then(a.label.cmp(&b.label)));
    marks.dedup();
    let placed = lanes(&marks, x, hours);
    let lane_count = placed.iter().map(|p| p.lane + 1).max().unwrap_or(0);

    let legend_top = 62.0;
    let top = legend_top + 20.0 * runs.len() as f64 + 16.0;
    let plot_height = 260.0;
    let bottom = top + plot_height;
    let height = bottom + 34.0 + LANE * lane_count as f64 + 10.0;
    let y = |value: f64| bottom - plot_height * value / axis_max as f64;

    let mut svg = open(height);
    heading(
        &mut svg,
        title,
        &["failed attempts per hour, all senders: refused for an IP's reputation, or bounced (one axis for every run)".to_string()],
    );
    for (i, run) in runs.iter().enumerate() {
        let (colour, dash) = run_style(i);
        let ly = legend_top + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}"/>"#,
            ly - 4.0,
            LEFT + 36.0,
            ly - 4.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{ly:.1}" fill="{INK}">{}: {} bounced, {} delayed, detected {}</text>"#,
            LEFT + 44.0,
            escape(&run.name),
            thousands(run.bounced),
            thousands(run.delayed),
            run.detection_s
                .map(duration)
                .unwrap_or_else(|| "never".to_string())
        );
    }

    let mut value = 0;
    while value <= axis_max {
        let ty = y(value as f64);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="{GRID}"/>"#,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10" fill="{INK}">{}</text>"#,
            LEFT - 6.0,
            ty + 3.5,
            thousands(value)
        );
        value += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{INK}" transform="rotate(-90 {:.1} {:.1})">failed per hour</text>"#,
        LEFT - 62.0,
        top + plot_height / 2.0,
        LEFT - 62.0,
        top + plot_height / 2.0
    );
    if let Some(first) = runs.first() {
        day_grid(&mut svg, first, top, bottom, x, hours);
    }
    for (i, series) in totals.iter().enumerate() {
        let (colour, dash) = run_style(i);
        let mut d = String::new();
        for (hour, failed) in series.iter().enumerate() {
            let (x0, x1, vy) = (x(hour as f64), x(hour as f64 + 1.0), y(*failed as f64));
            if hour == 0 {
                let _ = write!(d, "M{x0:.1} {vy:.1}");
            } else {
                let _ = write!(d, "V{vy:.1}");
            }
            let _ = write!(d, "H{x1:.1}");
        }
        let _ = writeln!(
            svg,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.6" stroke-dasharray="{dash}"/>"#
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#888888"/>"##,
        WIDTH - RIGHT
    );
    event_lines(&mut svg, &placed, top, bottom + 34.0);
    svg.push_str("</svg>\n");
    svg
}

/// A labelled moment: a provider's listing or delisting, the detection.
#[derive(Clone, Debug, PartialEq)]
struct Mark {
    at_hour: f64,
    label: String,
}

/// A mark with its place: the x of its line, where its label starts and ends,
/// and the lane (row under the plot) the label was given.
#[derive(Clone, Debug, PartialEq)]
struct Placed {
    x: f64,
    text_x: f64,
    anchor: &'static str,
    lane: usize,
    label: String,
}

fn event_marks(run: &RunReport) -> Vec<Mark> {
    let detail = &run.detail;
    let mut marks: Vec<(i64, String)> = detail
        .provider_events
        .iter()
        .map(|e| (e.at, format!("{} {} {}", e.by, e.what, e.ip)))
        .collect();
    if let (Some(start), Some(d)) = (detail.incident_at, run.detection_s) {
        marks.push((start + d as i64, format!("{} detected it", run.name)));
    }
    marks.sort();
    marks.dedup_by(|a, b| a.0 / 3600 == b.0 / 3600 && a.1 == b.1);
    marks
        .into_iter()
        .take(40)
        .map(|(at, label)| Mark {
            at_hour: (at - detail.start) as f64 / 3600.0,
            label,
        })
        .collect()
}

/// Label width in pixels, from an average glyph width of the label font: a
/// generous estimate, so that estimated room is real room.
fn text_width(text: &str, font: f64) -> f64 {
    text.chars().count() as f64 * font * 0.6
}

/// Gives every mark's label the first lane where it overlaps no label already
/// there. A label starts at its line and runs right, or ends at its line and
/// runs left when it would not fit before the right edge.
fn lanes(marks: &[Mark], x: impl Fn(f64) -> f64, hours: usize) -> Vec<Placed> {
    let mut taken: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut placed = Vec::new();
    for mark in marks {
        let mx = x(mark.at_hour.clamp(0.0, hours as f64));
        let width = text_width(&mark.label, LABEL_FONT);
        let (from, to, text_x, anchor) = if mx + 3.0 + width <= WIDTH - 4.0 {
            (mx, mx + 3.0 + width, mx + 3.0, "start")
        } else {
            (mx - 3.0 - width, mx, mx - 3.0, "end")
        };
        let lane = taken
            .iter()
            .position(|spans| {
                spans
                    .iter()
                    .all(|(a, b)| to + 6.0 <= *a || from >= *b + 6.0)
            })
            .unwrap_or_else(|| {
                taken.push(Vec::new());
                taken.len() - 1
            });
        taken[lane].push((from, to));
        placed.push(Placed {
            x: mx,
            text_x,
            anchor,
            lane,
            label: mark.label.clone(),
        });
    }
    placed
}

/// Each mark's dashed line down to its label; labels are drawn after every
/// line, on a white ground, so a line never runs through a label.
fn event_lines(svg: &mut String, placed: &[Placed], top: f64, labels_top: f64) {
    for p in placed {
        let label_y = labels_top + LANE * p.lane as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="{INK}" stroke-width="0.8" stroke-dasharray="3,3"/>"#,
            label_y - 8.0,
            x = p.x,
        );
    }
    for p in placed {
        let label_y = labels_top + LANE * p.lane as f64;
        let width = text_width(&p.label, LABEL_FONT);
        let ground_x = if p.anchor == "start" {
            p.text_x - 1.0
        } else {
            p.text_x - width - 1.0
        };
        let _ = writeln!(
            svg,
            r##"<rect x="{ground_x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff"/>"##,
            label_y - LABEL_FONT,
            width + 2.0,
            LABEL_FONT + 3.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{label_y:.1}" fill="{INK}" font-size="{LABEL_FONT}" text-anchor="{}">{}</text>"#,
            p.text_x,
            p.anchor,
            escape(&p.label)
        );
    }
}

fn open(height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    svg
}

fn heading(svg: &mut String, title: &str, lines: &[String]) {
    let _ = writeln!(
        svg,
        r#"<text x="16" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, line) in lines.iter().enumerate() {
        let y = 38 + 15 * i;
        let _ = writeln!(svg, r#"<text x="16" y="{y}">{}</text>"#, escape(line));
    }
}

fn swatch(svg: &mut String, x: f64, y: f64, colour: &str, text: &str) {
    let _ = writeln!(
        svg,
        r#"<rect x="{x:.1}" y="{:.1}" width="12" height="10" fill="{colour}"/>"#,
        y - 9.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{y:.1}" fill="{INK}">{}</text>"#,
        x + 16.0,
        escape(text)
    );
}

/// The day lines and dates of a run's time axis.
fn day_grid(
    svg: &mut String,
    run: &RunReport,
    top: f64,
    bottom: f64,
    x: impl Fn(f64) -> f64,
    hours: usize,
) {
    let detail = &run.detail;
    for day in 0..=hours.div_ceil(24) {
        let hx = x((day * 24) as f64);
        if hx > WIDTH - RIGHT + 0.5 {
            break;
        }
        let _ = writeln!(
            svg,
            r#"<line x1="{hx:.1}" y1="{top:.1}" x2="{hx:.1}" y2="{bottom:.1}" stroke="{GRID}"/>"#
        );
        let date = super::local_time(
            detail.start + day as i64 * 86_400,
            detail.utc_offset_seconds,
        );
        let _ = writeln!(
            svg,
            r#"<text x="{hx:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="{INK}">{}</text>"#,
            bottom + 13.0,
            escape(date.get(5..10).unwrap_or(&date))
        );
    }
}

/// Values on a sender's row: the full height above, zero, the full depth below.
fn y_ticks(svg: &mut String, axis: f64, scale: Scale) {
    let tick_x = LEFT - 4.0;
    for (value, y) in [
        (scale.delivered_per_hour, axis - UP),
        (0, axis),
        (scale.failed_per_hour, axis + DOWN),
    ] {
        let _ = writeln!(
            svg,
            r##"<line x1="{tick_x:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#888888"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="8" fill="{INK}">{}</text>"#,
            tick_x - 2.0,
            y + 3.0,
            compact(value)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{:.1}" stroke="#888888"/>"##,
        axis - UP,
        axis + DOWN
    );
}

fn run_style(index: usize) -> (&'static str, &'static str) {
    const STYLES: [(&str, &str); 6] = [
        (VERMILLION, "none"),
        (BLUE, "6,3"),
        (GREEN, "2,2"),
        (PURPLE, "8,2,2,2"),
        (ORANGE, "4,4"),
        (SKY, "1,3"),
    ];
    STYLES[index % STYLES.len()]
}

/// An axis top of 1, 2 or 5 times a power of ten steps, at or above `peak`,
/// and its step (at most six steps).
fn nice_axis(peak: u64) -> (u64, u64) {
    let mut unit = 1u64;
    loop {
        for factor in [1, 2, 5] {
            let step = unit * factor;
            if step * 6 >= peak {
                return (peak.div_ceil(step) * step, step);
            }
        }
        unit *= 10;
    }
}

/// 1,152 and 32,557,767: digits grouped by three.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 950, 1.2k, 120k, 3.4M: short enough for a tick label.
fn compact(value: u64) -> String {
    match value {
        0..=9_999 => thousands(value),
        10_000..=999_999 => format!("{}k", (value + 500) / 1_000),
        _ => format!("{:.1}M", value as f64 / 1e6),
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=119 => format!("after {s} s"),
        120..=7_199 => format!("after {} min", s / 60),
        7_200..=172_799 => format!("after {:.1} h", s as f64 / 3600.0),
        _ => format!("after {:.1} days", s as f64 / 86_400.0),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_152), "1,152");
        assert_eq!(thousands(32_557_767), "32,557,767");
        assert_eq!(compact(950), "950");
        assert_eq!(compact(120_232), "120k");
        assert_eq!(compact(3_400_000), "3.4M");
        assert_eq!(duration(16.0), "after 16 s");
        assert_eq!(duration(877_800.0), "after 10.2 days");
    }

    #[test]
    fn axis_tops_are_round_and_cover_the_peak() {
        assert_eq!(nice_axis(1), (1, 1));
        assert_eq!(nice_axis(3), (3, 1));
        assert_eq!(nice_axis(1_152), (1_200, 200));
        for peak in [1, 7, 13, 99, 1_152, 68_456, 1_000_001] {
            let (top, step) = nice_axis(peak);
            assert!(top >= peak && top % step == 0 && top / step <= 6, "{peak}");
        }
    }

    #[test]
    fn labels_never_share_a_lane_where_they_overlap() {
        let marks: Vec<Mark> = [0.0, 0.2, 0.5, 14.0, 100.0, 335.5, 336.0]
            .iter()
            .map(|h| Mark {
                at_hour: *h,
                label: format!("microsoft delisted 203.0.113.13 at {h}"),
            })
            .collect();
        let x = |hour: f64| LEFT + (WIDTH - LEFT - RIGHT) * hour / 336.0;
        let placed = lanes(&marks, x, 336);
        for (i, a) in placed.iter().enumerate() {
            let span = |p: &Placed| {
                let w = text_width(&p.label, LABEL_FONT);
                if p.anchor == "start" {
                    (p.text_x, p.text_x + w)
                } else {
                    (p.text_x - w, p.text_x)
                }
            };
            let (a0, a1) = span(a);
            assert!(a0 >= 0.0 && a1 <= WIDTH, "label {i} leaves the picture");
            for b in placed.iter().skip(i + 1).filter(|b| b.lane == a.lane) {
                let (b0, b1) = span(b);
                assert!(a1 <= b0 || b1 <= a0, "labels {a:?} and {b:?} overlap");
            }
        }
        assert_eq!(placed[0].lane, 0);
        assert_ne!(placed[1].lane, placed[0].lane);
    }
}
