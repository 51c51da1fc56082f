//! `mailfleet simulate`: a deterministic fleet simulation on a simulated clock,
//! driving the real reputation engine and route compiler (docs/SIMULATOR.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::{table, Format};
use crate::sim::svg::thousands;
use crate::sim::{self, svg, Options, RunReport, ScenarioReport, SCENARIOS};

/// Timeline lines shown per run; the JSON and charts are not limited.
const TIMELINE_LINES: usize = 24;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The scenario to run: seed-2021-11 (the incident), flapping-provider,
    /// all-ips-blocked, new-ip-warmup, gmail-rate-limit, dnsbl-listing.
    #[arg(long, value_name = "NAME", required_unless_present = "list")]
    pub scenario: Option<String>,

    /// Seeds every random draw: the same seed gives the same report, byte for byte.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    #[arg(long, value_enum, default_value_t)]
    pub format: Format,

    /// Write a chart per run (SVG: delivered and refused mail per hour and per
    /// IP) and the JSON report into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Volume factor: 1 is the scenario's full volume (0.01 runs 1 % of the mail
    /// on the same timeline).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    pub scale: f64,

    /// Only these runs of the scenario (for example `--run mailfleet`); repeat
    /// for several. Default: every run.
    #[arg(long = "run", value_name = "NAME")]
    pub runs: Vec<String>,

    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
}

/// `simulate --list` in the format asked for.
fn scenario_list(format: Format) -> String {
    match format {
        Format::Json => {
            let list: Vec<serde_json::Value> = SCENARIOS
                .iter()
                .map(|(name, what)| serde_json::json!({"scenario": name, "shows": what}))
                .collect();
            format!("{}\n", serde_json::Value::Array(list))
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = SCENARIOS
                .iter()
                .map(|(n, what)| vec![n.to_string(), what.to_string()])
                .collect();
            table(&["SCENARIO", "WHAT IT SHOWS"], &rows)
        }
    }
}

pub fn run(args: SimulateArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.list {
        print!("{}", scenario_list(args.format));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = args.scenario.as_deref() else {
        return Err("name a scenario with --scenario NAME (see --list)".into());
    };
    let options = Options {
        seed: args.seed,
        scale: args.scale,
    };
    options.check()?;
    let mut scenario = sim::scenario(name)?;
    if !args.runs.is_empty() {
        let known: Vec<String> = scenario.runs.iter().map(|r| r.name.clone()).collect();
        if let Some(unknown) = args.runs.iter().find(|r| !known.contains(r)) {
            let known = known.join(", ");
            return Err(
                format!("scenario {name} has no run `{unknown}`; its runs are: {known}").into(),
            );
        }
        scenario.runs.retain(|r| args.runs.contains(&r.name));
    }
    let report = sim::run_scenario(&scenario, &options)?;
    if let Some(dir) = &args.out {
        write_outputs(dir, &report)?;
    }
    match args.format {
        Format::Json => print!("{}", report.to_json()),
        Format::Table => print!("{}", human(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(dir: &Path, report: &ScenarioReport) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create --out {}: {e}", dir.display()))?;
    let write = |name: String, text: String| -> Result<(), Box<dyn std::error::Error>> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    };
    let scale = svg::Scale::of(&report.runs);
    for run in &report.runs {
        write(
            format!("{}-{}.svg", report.scenario, run.name),
            svg::chart(&report.title, run, scale),
        )?;
    }
    write(
        format!("{}.svg", report.scenario),
        svg::comparison(&report.title, &report.runs),
    )?;
    write(format!("{}.json", report.scenario), report.to_json())
}

/// The report for a person: the scenario, the calibration, then one table per run.
pub fn human(report: &ScenarioReport) -> String {
    let mut out = format!(
        "{}: {}\n(seed {}, scale {})\n",
        report.scenario, report.title, report.seed, report.scale
    );
    if let Some(c) = &report.calibration {
        out.push_str(&format!(
            "\ncalibration: the baseline bounced {} messages on the block; INCIDENT.md reports {} of {} ({} at this scale, {:+.2} %).\n\
             That implies Microsoft (consumer domains and Microsoft 365 tenants) receives {} % of all mail, {} % of it on Microsoft 365 tenant domains.\n",
            thousands(c.baseline_failed),
            thousands(c.reported_failed),
            thousands(c.reported_messages),
            thousands(c.target_failed),
            c.deviation_percent,
            c.microsoft_share_percent,
            c.microsoft_365_share_of_microsoft_percent,
        ));
    }
    for run in &report.runs {
        out.push_str(&format!("\nrun {}: {}\n", run.name, run.description));
        let rows = run_rows(run);
        for line in table(&["  METRIC", "VALUE"], &rows).lines() {
            out.push_str(line);
            out.push('\n');
        }
        let timeline = run.detail.timeline();
        if !timeline.is_empty() {
            out.push_str("  timeline of the affected IPs:\n");
            let rows: Vec<Vec<String>> = timeline
                .iter()
                .take(TIMELINE_LINES)
                .map(|(at, ip, provider, what)| {
                    vec![
                        format!(
                            "  {}",
                            crate::sim::local_time(*at, run.detail.utc_offset_seconds)
                        ),
                        ip.clone(),
                        provider.clone(),
                        what.clone(),
                    ]
                })
                .collect();
            for line in table(&["  TIME", "IP", "PROVIDER", "WHAT"], &rows).lines() {
                out.push_str(line);
                out.push('\n');
            }
            if timeline.len() > TIMELINE_LINES {
                out.push_str(&format!(
                    "  ... and {} more\n",
                    timeline.len() - TIMELINE_LINES
                ));
            }
        }
    }
    out
}

fn run_rows(run: &RunReport) -> Vec<Vec<String>> {
    let row = |k: &str, v: String| vec![format!("  {k}"), v];
    let seconds = |s: Option<f64>| s.map_or("-".to_string(), duration);
    vec![
        row("submitted", thousands(run.submitted)),
        row("delivered", thousands(run.delivered)),
        row(
            "bounced",
            format!(
                "{} ({} on a block reply, {} expired)",
                thousands(run.bounced),
                thousands(run.bounced_by_block),
                thousands(run.expired)
            ),
        ),
        row("delayed", thousands(run.delayed)),
        row(
            "delay p50 / p99",
            format!(
                "{} / {}",
                duration(run.delay_p50_s),
                duration(run.delay_p99_s)
            ),
        ),
        row(
            "delayed mail p50 / p99 / max",
            format!(
                "{} / {} / {}",
                seconds(run.delayed_p50_s),
                seconds(run.delayed_p99_s),
                duration(run.delay_max_s)
            ),
        ),
        row(
            "refused attempts",
            format!(
                "{} ({} deferrals)",
                thousands(run.refused_attempts),
                thousands(run.deferrals)
            ),
        ),
        row("detected after", seconds(run.detection_s)),
        row("re-routed after detection", seconds(run.reroute_s)),
        row("recovered after", seconds(run.recovered_s)),
        row("delisted after", seconds(run.delisted_s)),
        row(
            "engine",
            format!(
                "{} transitions, {} blocks, {} route changes",
                run.engine_transitions, run.blocks, run.route_changes
            ),
        ),
        row("still queued at the end", thousands(run.queued_at_end)),
        row(
            "simulated",
            format!("{} .. {}", run.started_at, run.ended_at),
        ),
    ]
}

/// `1 d 3 h 50 min`, `12 min 5 s`, `7 s`.
pub fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "min"), (s, "s")]
        .iter()
        .skip_while(|(v, _)| *v == 0)
        .filter(|(v, _)| *v > 0)
        .take(3)
        .map(|(v, unit)| format!("{v} {unit}"))
        .collect();
    if parts.is_empty() {
        "0 s".to_string()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_list_honours_format_json() {
        let list: serde_json::Value =
            serde_json::from_str(&scenario_list(Format::Json)).expect("JSON");
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), SCENARIOS.len());
        assert!(list
            .iter()
            .all(|s| s["scenario"].is_string() && s["shows"].is_string()));
        assert!(scenario_list(Format::Table).starts_with("SCENARIO"));
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(32_557_767), "32,557,767");
        assert_eq!(thousands(75), "75");
        assert_eq!(duration(878_400.0), "10 d 4 h");
        assert_eq!(duration(61.0), "1 min 1 s");
        assert_eq!(duration(0.0), "0 s");
    }
}
