//! The agent's state file: the reporter's state (instance, sequence, outbox,
//! the log position the outbox covers) and the configuration applied.
//! Written atomically (temporary file, fsync, rename, fsync of the folder), so
//! a crash leaves either the old or the new state, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::reporter::ReporterState;

/// Bumped when the file's shape changes incompatibly.
pub const STATE_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub format: u32,
    /// The log the position belongs to; another log starts afresh.
    pub log: PathBuf,
    pub reporter: ReporterState,
    /// The version of the sender configuration last applied.
    #[serde(default)]
    pub applied_config: Option<String>,
    /// The identities of the newest complaint reports counted (at most
    /// [`MAX_SAVED_COMPLAINT_IDS`]), so a restart counts none of them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub complaint_ids: Vec<String>,
}

/// Complaint report identities kept in the state file: feedback loops resend
/// within days, and this bounds the file (about 100 bytes each).
pub const MAX_SAVED_COMPLAINT_IDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the state file {path} is unreadable ({problem}); the agent will not guess where it stopped. \
         Remove the file to start over from the beginning of the log (lines already reported are then counted again)"
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error("cannot write the state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl AgentState {
    /// The saved state, or `None` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<AgentState>, StateError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let corrupt = |problem: String| StateError::Corrupt {
            path: path.to_path_buf(),
            problem,
        };
        let state: AgentState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(corrupt(format!(
                "format {} is not {STATE_FORMAT}",
                state.format
            )));
        }
        Ok(Some(state))
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_error = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| write_error(io::Error::other(e)))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(write_error)?;
        file.write_all(&bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        fs::rename(&tmp, path).map_err(write_error)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable once the folder is.
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::follow::FollowState;
    use crate::agent::report::Dropped;

    fn state() -> AgentState {
        AgentState {
            format: STATE_FORMAT,
            log: "/var/log/mail/maillog".into(),
            reporter: ReporterState {
                instance: "i".into(),
                next_sequence: 3,
                committed: FollowState::default(),
                outbox: Vec::new(),
                pending_dropped: Dropped::default(),
            },
            applied_config: Some("v1".into()),
            complaint_ids: vec!["report:<r1@fbl.example>".into()],
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent-state.json");
        assert_eq!(AgentState::load(&path).unwrap(), None);
        state().save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), Some(state()));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        // A file written before complaint identities were kept still loads.
        let mut old = serde_json::to_value(state()).unwrap();
        old.as_object_mut().unwrap().remove("complaint_ids");
        fs::write(&path, old.to_string()).unwrap();
        let loaded = AgentState::load(&path).unwrap().unwrap();
        assert!(loaded.complaint_ids.is_empty());
    }

    #[test]
    fn a_corrupt_file_stops_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent-state.json");
        fs::write(&path, b"{\"format\":1,\"log\":").unwrap();
        let err = AgentState::load(&path).unwrap_err().to_string();
        assert!(err.contains("Remove the file to start over"), "{err}");
        let mut other = state();
        other.format = 99;
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(AgentState::load(&path)
            .unwrap_err()
            .to_string()
            .contains("format 99"));
        assert!(matches!(
            state().save(&dir.path().join("no/such/dir/state")),
            Err(StateError::Write { .. })
        ));
    }
}
