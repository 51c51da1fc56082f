//! `OUT/feedback.wal`: the write-ahead log that makes a 200 mean "stored".
//!
//! A report is appended here and the file is `fdatasync`ed before the report
//! is counted and answered; reports arriving together share one sync (group
//! commit). The log is emptied once a state file holding all of it is on
//! disk, and replayed at start over the saved state: the feedback ledger
//! skips every report the state already counted, so a replay never counts
//! twice.
//!
//! Each line is one JSON object `{"at": <when it was counted>, "report":
//! {...}}`. A line cut short by a crash or a full disk is dropped when read:
//! its report was never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::agent::report::FeedbackReport;

/// File name of the log in the output folder.
pub const JOURNAL_FILE: &str = "feedback.wal";

/// One logged report and the time it was counted at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub report: FeedbackReport,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot store the report in {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The log. The file is opened for each append and closed after it, so
/// no descriptor stays open for writing between reports (a folder can be
/// remounted read-only, and a replaced file is picked up).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Bytes of whole lines in the file.
    length: u64,
}

/// What reading the log at start found.
#[derive(Debug, Default)]
pub struct Replay {
    pub entries: Vec<Entry>,
    /// Lines that could not be read (a torn last line after a crash).
    pub skipped: usize,
}

impl Journal {
    /// Opens (creating) the log in `dir` and returns what it holds. A torn
    /// tail is cut off, so the next append starts on a line of its own.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let mut replay = Replay::default();
        let mut whole = 0usize;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                replay.skipped += 1;
                break;
            }
            whole += line.len();
            match serde_json::from_slice::<Entry>(line) {
                Ok(entry) => replay.entries.push(entry),
                Err(_) => replay.skipped += 1,
            }
        }
        let file = open_for_append(&path).map_err(err)?;
        if whole < text.len() {
            file.set_len(whole as u64).map_err(err)?;
            file.sync_data().map_err(err)?;
        }
        sync_dir(dir).map_err(err)?;
        Ok((
            Journal {
                path,
                length: whole as u64,
            },
            replay,
        ))
    }

    /// Appends `entries` and syncs; Ok means they are on disk. On failure the
    /// file is cut back to the lines it had, so nothing half-written stays.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), JournalError> {
        let mut text = Vec::new();
        for entry in entries {
            // A report that passed validation always serialises.
            serde_json::to_writer(&mut text, entry).map_err(|e| self.error(e.into()))?;
            text.push(b'\n');
        }
        let mut file = open_for_append(&self.path).map_err(|e| self.error(e))?;
        let result = file.write_all(&text).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                self.length += text.len() as u64;
                Ok(())
            }
            Err(source) => {
                let _ = file.set_len(self.length);
                Err(self.error(source))
            }
        }
    }

    /// Empties the log: call only when a state holding every entry is on disk.
    pub fn clear(&mut self) -> Result<(), JournalError> {
        if self.length == 0 {
            return Ok(());
        }
        open_for_append(&self.path)
            .and_then(|file| file.set_len(0).and_then(|()| file.sync_data()))
            .map_err(|e| self.error(e))?;
        self.length = 0;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    fn error(&self, source: io::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Syncs a folder, so the names created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::AgentIdentity;

    fn entry(sequence: u64) -> Entry {
        let at: Timestamp = "2026-11-29T08:10:00Z".parse().unwrap();
        Entry {
            at,
            report: FeedbackReport {
                agent: AgentIdentity {
                    name: "bulk-0".into(),
                    instance: "i".into(),
                },
                ..FeedbackReport::counting_nothing("203.0.113.10", sequence, at)
            },
        }
    }

    #[test]
    fn entries_are_read_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, replay) = Journal::open(dir.path()).unwrap();
        assert!(replay.entries.is_empty() && journal.is_empty());
        journal.append(&[entry(1), entry(2)]).unwrap();
        journal.append(&[entry(3)]).unwrap();
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at\":\"2026-11-29T08:1").unwrap();
        drop(file);
        let (mut journal, replay) = Journal::open(dir.path()).unwrap();
        let sequences: Vec<u64> = replay.entries.iter().map(|e| e.report.sequence).collect();
        assert_eq!(sequences, [1, 2, 3]);
        assert_eq!(replay.skipped, 1);
        journal.append(&[entry(4)]).unwrap();
        drop(journal);
        let (mut journal, replay) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            replay.entries.len(),
            4,
            "the append after a torn tail is whole"
        );
        assert_eq!(replay.skipped, 0);
        journal.clear().unwrap();
        drop(journal);
        let (_, replay) = Journal::open(dir.path()).unwrap();
        assert!(replay.entries.is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
