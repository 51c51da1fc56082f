//! `mailfleet complaints`: abuse feedback reports (ARF) counted per (sending
//! IP, provider), with the reports skipped and why.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::common::FleetArgs;
use super::output::{table, Format};
use crate::reputation::arf::MAX_REPORT_BYTES;
use crate::reputation::classifier::Classifier;
use crate::reputation::complaints::ComplaintCounts;

#[derive(Debug, Args)]
pub struct ComplaintsArgs {
    /// Feedback reports, one message per file, or folders of them (links and
    /// other non-files inside a folder are skipped, not followed).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// An IP the fleet sends from (repeatable); reports about other IPs are skipped.
    #[arg(long = "ip", value_name = "IP", required = true)]
    pub ips: Vec<IpAddr>,

    #[arg(long, value_enum, default_value_t)]
    pub format: Format,

    /// Your own classifier providers (YAML, see docs/CLASSIFIER.md).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

/// The JSON report; its field names are part of the contract (docs/OUTPUTS.md).
#[derive(Debug, Serialize)]
struct Report<'a> {
    pairs: Vec<PairRow<'a>>,
    skipped: &'a std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
struct PairRow<'a> {
    ip: IpAddr,
    provider: &'a str,
    reports: u64,
    incidents: u64,
    feedback_types: &'a std::collections::BTreeMap<String, u64>,
}

pub fn run(args: ComplaintsArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let classifier = match (FleetArgs {
        manifests: Vec::new(),
        example: false,
        rules: args.rules.clone(),
    })
    .classifier_config()?
    {
        Some(config) => Classifier::with_config(config)?,
        None => Classifier::builtin(),
    };
    let mut counts = ComplaintCounts::default();
    for path in &args.paths {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for entry in entries {
                let is_file = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.is_file());
                if is_file {
                    count_file(&mut counts, &entry, &args.ips, &classifier)?;
                } else {
                    *counts.skipped.entry("not_a_file").or_default() += 1;
                }
            }
        } else {
            count_file(&mut counts, path, &args.ips, &classifier)?;
        }
    }
    let rows: Vec<PairRow> = counts
        .pairs
        .iter()
        .map(|((ip, provider), c)| PairRow {
            ip: *ip,
            provider,
            reports: c.reports,
            incidents: c.incidents,
            feedback_types: &c.feedback_types,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer(
                &mut out,
                &Report {
                    pairs: rows,
                    skipped: &counts.skipped,
                },
            )?;
            out.write_all(b"\n")?;
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.ip.to_string(),
                        r.provider.to_string(),
                        r.reports.to_string(),
                        r.incidents.to_string(),
                        r.feedback_types
                            .iter()
                            .map(|(t, n)| format!("{t} {n}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                })
                .collect();
            out.write_all(
                table(&["IP", "PROVIDER", "REPORTS", "INCIDENTS", "TYPES"], &cells).as_bytes(),
            )?;
            let skipped: Vec<String> = counts
                .skipped
                .iter()
                .map(|(why, n)| format!("{why} {n}"))
                .collect();
            if !skipped.is_empty() {
                writeln!(out, "skipped: {}", skipped.join(", "))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads at most one byte past the limit, so an oversized file is refused
/// without being read whole.
fn count_file(
    counts: &mut ComplaintCounts,
    path: &Path,
    ours: &[IpAddr],
    classifier: &Classifier,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_REPORT_BYTES as u64 + 1).read_to_end(&mut raw))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    counts.add(&raw, ours, classifier);
    Ok(())
}
