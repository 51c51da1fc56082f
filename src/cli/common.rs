//! Inputs several commands share: manifests, the user's classifier rules, time.

use std::path::{Path, PathBuf};

use clap::Args;
use jiff::Timestamp;

use crate::fleet::Fleet;
use crate::manifests::{self, Manifests};
use crate::reputation::classifier::ClassifierConfig;

/// The example fleet compiled into the binary, used when no --manifests is given.
const EMBEDDED_FLEET: [(&str, &str); 9] = [
    (
        "namespace.yaml",
        include_str!("../../examples/fleet/namespace.yaml"),
    ),
    (
        "pool-bulk.yaml",
        include_str!("../../examples/fleet/pool-bulk.yaml"),
    ),
    (
        "pool-reserve.yaml",
        include_str!("../../examples/fleet/pool-reserve.yaml"),
    ),
    (
        "relay-credentials.yaml",
        include_str!("../../examples/fleet/relay-credentials.yaml"),
    ),
    (
        "route-default.yaml",
        include_str!("../../examples/fleet/route-default.yaml"),
    ),
    (
        "route-google.yaml",
        include_str!("../../examples/fleet/route-google.yaml"),
    ),
    (
        "route-microsoft.yaml",
        include_str!("../../examples/fleet/route-microsoft.yaml"),
    ),
    (
        "route-yahoo-japan.yaml",
        include_str!("../../examples/fleet/route-yahoo-japan.yaml"),
    ),
    (
        "route-yahoo.yaml",
        include_str!("../../examples/fleet/route-yahoo.yaml"),
    ),
];

#[derive(Debug, Args, Clone)]
pub struct FleetArgs {
    /// A folder (or file) of SenderPool and DomainRoute manifests, status included.
    /// Repeat it to overlay: later objects replace earlier ones, status-only
    /// documents set the status of earlier objects. Without it, the example
    /// fleet built into the binary is used.
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests: Vec<PathBuf>,

    /// Your own classifier rules and providers (YAML, see docs/CLASSIFIER.md).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

impl FleetArgs {
    pub fn load(&self) -> Result<Fleet, Box<dyn std::error::Error>> {
        let manifests = if self.manifests.is_empty() {
            eprintln!("note: no --manifests given; using the example fleet built into mailfleet (examples/fleet)");
            embedded_fleet()?
        } else {
            manifests::load_overlays(&self.manifests)?
        };
        Ok(Fleet::new(manifests, self.classifier_config()?)?)
    }

    pub fn classifier_config(
        &self,
    ) -> Result<Option<ClassifierConfig>, Box<dyn std::error::Error>> {
        let Some(path) = &self.rules else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --rules {}: {e}", path.display()))?;
        let config = ClassifierConfig::from_yaml(&text)
            .map_err(|e| format!("--rules {}: {e}", path.display()))?;
        Ok(Some(config))
    }
}

pub fn embedded_fleet() -> Result<Manifests, manifests::ManifestError> {
    let mut m = Manifests::default();
    for (name, text) in EMBEDDED_FLEET {
        manifests::parse_into(
            text,
            &Path::new("(built-in)/examples/fleet").join(name),
            &mut m,
        )?;
    }
    Ok(m)
}

/// Reads `--at`: an RFC 3339 time such as 2021-11-05T08:10:00Z.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>()
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2021-11-05T08:10:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_fleet_is_the_examples_folder() {
        let embedded = super::embedded_fleet().unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
        let on_disk = crate::manifests::load_dir(&dir).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            super::EMBEDDED_FLEET.len(),
            "a file in examples/fleet is not embedded"
        );
        assert_eq!(
            serde_json::to_string(&embedded.pools).unwrap(),
            serde_json::to_string(&on_disk.pools).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&embedded.routes).unwrap(),
            serde_json::to_string(&on_disk.routes).unwrap()
        );
    }
}
