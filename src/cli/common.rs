//! Inputs several commands share: manifests, the user's classifier rules, time.

use std::path::{Path, PathBuf};

use clap::Args;
use jiff::Timestamp;

use crate::fleet::Fleet;
use crate::manifests::{self, ManifestSource, Manifests};
use crate::reputation::classifier::ClassifierConfig;

/// The example fleet compiled into the binary, used with --example.
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
    /// documents set the status of earlier objects. `-` reads one YAML stream
    /// (a `kind: List` too) from standard input.
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests: Vec<PathBuf>,

    /// Use the example fleet built into mailfleet (examples/fleet) instead of --manifests.
    #[arg(long, conflicts_with = "manifests")]
    pub example: bool,

    /// Your own classifier rules and providers (YAML, see docs/CLASSIFIER.md; `-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

impl FleetArgs {
    pub fn load(&self) -> Result<Fleet, Box<dyn std::error::Error>> {
        let manifests = if self.example {
            embedded_fleet()?
        } else if self.manifests.is_empty() {
            // A gate that quietly judged the built-in example would pass every pull request.
            return Err("no manifests given: pass --manifests DIR (a folder or file of SenderPool and DomainRoute manifests, `-` for standard input), or --example for the example fleet built into mailfleet".into());
        } else {
            let mut sources = Vec::with_capacity(self.manifests.len());
            for path in &self.manifests {
                sources.push(if path.as_os_str() == "-" {
                    ManifestSource::Text {
                        name: PathBuf::from("(standard input)"),
                        text: read_input(path, "--manifests")?,
                    }
                } else {
                    ManifestSource::Path(path.clone())
                });
            }
            manifests::load_sources(&sources)?
        };
        Ok(Fleet::new(manifests, self.classifier_config()?)?)
    }

    pub fn classifier_config(
        &self,
    ) -> Result<Option<ClassifierConfig>, Box<dyn std::error::Error>> {
        let Some(path) = &self.rules else {
            return Ok(None);
        };
        let text = read_input(path, "--rules")?;
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

/// Largest file read whole by an offline command (rules, a replayed log).
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// The text of a file argument; `-` is standard input (once per run: a second
/// `-` would read an empty stream and judge nothing).
pub fn read_input(path: &Path, argument: &str) -> Result<String, InputError> {
    String::from_utf8(read_input_bytes(path, argument)?).map_err(|source| InputError::NotUtf8 {
        argument: argument.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Why a file argument (or standard input) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{argument} {}: not UTF-8 text: {source}", .path.display())]
    NotUtf8 {
        argument: String,
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    #[error("cannot read {argument} {}: {source}", .path.display())]
    Read {
        argument: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{argument} {}: larger than {MAX_INPUT_BYTES} bytes", .path.display())]
    TooLarge { argument: String, path: PathBuf },
    #[error("{argument} -: standard input is already read by {first}; give one of them a file")]
    StdinTaken { argument: String, first: String },
}

/// An `--at` that is not a time.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 time such as 2021-11-05T08:10:00Z: {source}")]
pub struct TimeSyntaxError {
    text: String,
    source: jiff::Error,
}

/// [`read_input`] for inputs that may hold lines in other encodings (logs).
pub fn read_input_bytes(path: &Path, argument: &str) -> Result<Vec<u8>, InputError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        take_stdin(argument)?;
        std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|source| InputError::Read {
        argument: argument.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge {
            argument: argument.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Claims standard input for `argument`; refuses a second claimant.
pub fn take_stdin(argument: &str) -> Result<(), InputError> {
    static TAKEN: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    match taken.as_deref() {
        Some(first) => Err(InputError::StdinTaken {
            argument: argument.to_string(),
            first: first.to_string(),
        }),
        None => {
            *taken = Some(argument.to_string());
            Ok(())
        }
    }
}

/// Reads `--at`: an RFC 3339 time such as 2021-11-05T08:10:00Z.
pub fn parse_time(text: &str) -> Result<Timestamp, TimeSyntaxError> {
    text.parse::<Timestamp>().map_err(|source| TimeSyntaxError {
        text: text.to_string(),
        source,
    })
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
