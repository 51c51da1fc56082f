//! A chart of one run, drawn by hand as SVG: for every sender, delivered mail
//! per hour above its axis (green, one scale for all senders) and failed
//! attempts per hour below it (red, its own scale: refused for the IP's
//! reputation, or bounced), with the incident's events marked.

use std::fmt::Write;

use super::report::RunReport;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 86.0;
const ROW: f64 = 74.0;
const UP: f64 = 44.0;
const DOWN: f64 = 22.0;

/// The SVG document for `run` of the scenario titled `title`.
pub fn chart(title: &str, run: &RunReport) -> String {
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
    let max_delivered = detail
        .hourly
        .iter()
        .flat_map(|h| h.delivered.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let max_failed = detail
        .hourly
        .iter()
        .flat_map(|h| h.failed.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let height = TOP + ROW * rows.len() as f64 + 66.0;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |hour: f64| LEFT + plot * hour / hours as f64;
    let bar = (plot / hours as f64).max(0.5);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let lines = [
        format!("run {}: {}", run.name, run.description),
        format!(
            "per sender and hour: delivered mail in green (full height {max_delivered}), failed attempts (reputation refusals and bounces) in red (full depth {max_failed})"
        ),
        format!(
            "submitted {}, delivered {}, bounced {}, delayed {}",
            run.submitted, run.delivered, run.bounced, run.delayed
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        let y = 38 + 15 * i;
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="{y}">{}</text>"#, escape(line));
    }
    let days = hours.div_ceil(24);
    for day in 0..=days {
        let hx = x((day * 24) as f64);
        if hx > WIDTH - RIGHT + 0.5 {
            break;
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{hx:.1}" y1="{TOP}" x2="{hx:.1}" y2="{:.1}" stroke="#dddddd"/>"##,
            height - 54.0
        );
        let date = super::local_time(
            detail.start + day as i64 * 86_400,
            detail.utc_offset_seconds,
        );
        let _ = writeln!(
            svg,
            r#"<text x="{hx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
            height - 40.0,
            escape(date.get(5..10).unwrap_or(&date))
        );
    }

    for (row, s) in rows.iter().enumerate() {
        let axis = TOP + ROW * row as f64 + UP + 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            axis + 4.0,
            escape(&detail.senders[*s])
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{axis:.1}" x2="{:.1}" y2="{axis:.1}" stroke="#999999"/>"##,
            WIDTH - RIGHT
        );
        let mut green = String::new();
        let mut red = String::new();
        for (hour, volume) in detail.hourly.iter().enumerate() {
            let delivered = volume.delivered[*s];
            if delivered > 0 {
                let h = UP * delivered as f64 / max_delivered as f64;
                let _ = write!(
                    green,
                    "M{:.1} {:.1}h{:.2}v{:.2}h-{:.2}z",
                    x(hour as f64),
                    axis - h,
                    bar,
                    h,
                    bar
                );
            }
            let failed = volume.failed[*s];
            if failed > 0 {
                let h = (DOWN * failed as f64 / max_failed as f64).max(1.0);
                let _ = write!(
                    red,
                    "M{:.1} {:.1}h{:.2}v{:.2}h-{:.2}z",
                    x(hour as f64),
                    axis,
                    bar,
                    h,
                    bar
                );
            }
        }
        if !green.is_empty() {
            let _ = writeln!(svg, r##"<path d="{green}" fill="#2e8b57"/>"##);
        }
        if !red.is_empty() {
            let _ = writeln!(svg, r##"<path d="{red}" fill="#d62728"/>"##);
        }
    }

    let mut marks: Vec<(i64, String)> = detail
        .provider_events
        .iter()
        .map(|e| (e.at, format!("{} {} {}", e.by, e.what, e.ip)))
        .collect();
    if let (Some(start), Some(d)) = (detail.incident_at, run.detection_s) {
        marks.push((start + d as i64, "detected".to_string()));
    }
    marks.sort();
    marks.dedup_by(|a, b| a.0 / 3600 == b.0 / 3600 && a.1 == b.1);
    for (i, (when, label)) in marks.iter().take(40).enumerate() {
        let hx = x((when - detail.start) as f64 / 3600.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{hx:.1}" y1="{:.1}" x2="{hx:.1}" y2="{:.1}" stroke="#1f77b4" stroke-dasharray="3,3"/>"##,
            TOP - 6.0,
            height - 54.0
        );
        let (tx, anchor) = if hx > WIDTH * 0.8 {
            (hx - 2.0, "end")
        } else {
            (hx + 2.0, "start")
        };
        let _ = writeln!(
            svg,
            r##"<text x="{tx:.1}" y="{:.1}" fill="#1f77b4" font-size="9" text-anchor="{anchor}">{}</text>"##,
            height - 24.0 + 10.0 * (i % 3) as f64,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped() {
        assert_eq!(
            super::escape(r#"a<b & "c">"#),
            "a&lt;b &amp; &quot;c&quot;&gt;"
        );
    }
}
