//! `mailfleet crd`: the CRDs, as applied with `kubectl apply -f crds/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::api::crd;

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this folder (as kept in crds/) instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,

    /// Also write the Helm chart's CRD templates into this folder
    /// (charts/mailfleet/templates/crds).
    #[arg(long, value_name = "DIR", requires = "out_dir")]
    pub chart_dir: Option<PathBuf>,
}

pub fn run(args: CrdArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.out_dir {
        None => std::io::stdout().write_all(crd::render_all().as_bytes())?,
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for c in crd::all() {
                let path = dir.join(crd::file_name(&c));
                std::fs::write(&path, crd::to_yaml(&c))?;
                eprintln!("wrote {}", path.display());
                if let Some(chart) = &args.chart_dir {
                    std::fs::create_dir_all(chart)?;
                    let path = chart.join(crd::file_name(&c));
                    std::fs::write(&path, crd::to_chart_template(&c))?;
                    eprintln!("wrote {}", path.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
