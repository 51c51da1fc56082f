//! Abuse feedback reports (ARF, RFC 5965) read from a Maildir folder that a
//! feedback loop's mail lands in (docs/AGENT.md, "Complaints").
//!
//! Each message in `new/` is read once per run, bounded to
//! [`MAX_REPORT_BYTES`], and judged by [`ComplaintCounts`]: a report about
//! this agent's source IP is counted for its provider and goes into the next
//! feedback report; one that does not parse or repeats one already counted
//! (the same report Message-ID, the same original Message-ID and feedback
//! type, or the same bytes) is counted among the skipped and logged. The
//! identities of the newest reports counted are kept in the state file, so a
//! report delivered again after a restart is a duplicate too. Those files move to `cur/` (marked seen) only
//! after the report that carries them is saved in the agent's state file, so a
//! crash before that reads them again. A report about another IP is left in
//! `new/` for the agent of that IP (one folder may serve a pool's agents).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::reputation::arf::MAX_REPORT_BYTES;
use crate::reputation::classifier::Classifier;
use crate::reputation::complaints::{ComplaintCounts, Intake};

/// Files looked at per scan; the rest wait for the next one.
pub const MAX_FILES_PER_SCAN: usize = 1000;
/// File names remembered as handled in one run (reports about other IPs).
const MAX_REMEMBERED_FILES: usize = 100_000;

/// What one scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complaints about this IP, per provider.
    pub counted: BTreeMap<String, u64>,
    /// Reports skipped, per reason (`not_ours`, `duplicate`, `unreadable_file`,
    /// or the ARF reader's kind such as `not_feedback_report`, `too_large`).
    pub skipped: BTreeMap<&'static str, u64>,
}

/// The folder, and what this run has read from it.
pub struct ComplaintInbox {
    dir: PathBuf,
    ours: [IpAddr; 1],
    counts: ComplaintCounts,
    /// Report digests already counted or skipped as unreadable this run.
    digests: HashSet<u64>,
    /// Files in `new/` already judged this run (and left there or waiting).
    handled: HashSet<OsString>,
    /// Files judged and counted, to move to `cur/` once their report is saved.
    to_file: Vec<PathBuf>,
}

impl ComplaintInbox {
    pub fn new(dir: PathBuf, source_ip: IpAddr) -> Self {
        ComplaintInbox {
            dir,
            ours: [source_ip],
            counts: ComplaintCounts::default(),
            digests: HashSet::new(),
            handled: HashSet::new(),
            to_file: Vec::new(),
        }
    }

    /// Reads the reports that arrived in `new/` since the last scan. A folder
    /// that cannot be read is an error for the caller to log; a file that
    /// cannot be read is skipped as `unreadable_file` and left in place.
    pub fn scan(&mut self, classifier: &Classifier) -> std::io::Result<Scan> {
        let mut names: Vec<OsString> = std::fs::read_dir(self.dir.join("new"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name())
            .filter(|n| !self.handled.contains(n))
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        names.sort();
        names.truncate(MAX_FILES_PER_SCAN);
        let mut scan = Scan::default();
        for name in names {
            let path = self.dir.join("new").join(&name);
            let raw = match read_bounded(&path) {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "complaint report not read: {e}");
                    *scan.skipped.entry("unreadable_file").or_default() += 1;
                    self.remember(name);
                    continue;
                }
            };
            let (judged, move_it) = self.judge(&raw, classifier);
            match judged {
                Ok(provider) => *scan.counted.entry(provider).or_default() += 1,
                Err(reason) => {
                    tracing::warn!(file = %path.display(), reason, "complaint report skipped");
                    *scan.skipped.entry(reason).or_default() += 1;
                }
            }
            if move_it {
                self.to_file.push(path);
            }
            self.remember(name);
        }
        Ok(scan)
    }

    /// Judges one report: its provider, or why it was skipped; and whether
    /// its file leaves `new/` (everything but a report about another IP).
    fn judge(
        &mut self,
        raw: &[u8],
        classifier: &Classifier,
    ) -> (Result<String, &'static str>, bool) {
        let digest = digest(raw);
        if self.digests.contains(&digest) {
            return (Err("duplicate"), true);
        }
        let intake = self.counts.add(raw, &self.ours, classifier);
        match intake {
            Intake::Counted { provider, .. } => {
                self.digests.insert(digest);
                (Ok(provider), true)
            }
            Intake::NotOurs => (Err("not_ours"), false),
            Intake::Duplicate => (Err("duplicate"), true),
            Intake::Unreadable(e) => {
                self.digests.insert(digest);
                (Err(e.kind()), true)
            }
        }
    }

    fn remember(&mut self, name: OsString) {
        if self.handled.len() < MAX_REMEMBERED_FILES {
            self.handled.insert(name);
        }
    }

    /// The identities of the newest `limit` reports counted, for the state
    /// file: after a restart, [`Self::remember_reports`] keeps them from counting again.
    pub fn remembered_reports(&self, limit: usize) -> Vec<String> {
        self.counts.remembered(limit)
    }

    /// Takes the identities saved before a restart.
    pub fn remember_reports(&mut self, ids: impl IntoIterator<Item = String>) {
        self.counts.remember(ids);
    }

    /// Files waiting to move to `cur/`.
    pub fn waiting(&self) -> usize {
        self.to_file.len()
    }

    /// Moves the judged files to `cur/`, marked seen (`:2,S`): call once the
    /// report carrying their counts is saved. A file that cannot be moved
    /// (already moved by another agent, say) is logged and forgotten.
    pub fn file_away(&mut self) {
        let cur = self.dir.join("cur");
        for path in std::mem::take(&mut self.to_file) {
            let Some(name) = path.file_name() else {
                continue;
            };
            let mut seen = name.to_os_string();
            if !seen.to_string_lossy().contains(":2,") {
                seen.push(":2,S");
            }
            if let Err(e) = std::fs::rename(&path, cur.join(&seen)) {
                tracing::warn!(file = %path.display(), "complaint report not moved to cur/: {e}");
            }
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_REPORT_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// A digest of a report's bytes, for spotting the same report delivered twice
/// (within one run; the files of counted reports leave `new/`).
fn digest(raw: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    raw.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "203.0.113.10";

    use crate::reputation::complaints::sample_report as report;

    fn maildir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        dir
    }

    fn deliver(dir: &Path, name: &str, body: &[u8]) {
        std::fs::write(dir.join("new").join(name), body).unwrap();
    }

    fn listing(dir: &Path, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reports_about_this_ip_are_counted_once_and_filed_after_the_save() {
        let dir = maildir();
        let classifier = Classifier::builtin();
        let mut inbox = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        deliver(
            dir.path(),
            "1.a",
            report(OURS, "u@yahoo.com", "1@x").as_bytes(),
        );
        deliver(
            dir.path(),
            "2.a",
            report(OURS, "v@gmail.com", "2@x").as_bytes(),
        );
        let scan = inbox.scan(&classifier).unwrap();
        assert_eq!(
            scan.counted,
            BTreeMap::from([("google".to_string(), 1), ("yahoo".to_string(), 1)])
        );
        assert!(scan.skipped.is_empty());
        assert_eq!(
            listing(dir.path(), "new").len(),
            2,
            "not moved before the save"
        );
        assert_eq!(
            inbox.scan(&classifier).unwrap(),
            Scan::default(),
            "read once"
        );
        inbox.file_away();
        assert!(listing(dir.path(), "new").is_empty());
        assert_eq!(listing(dir.path(), "cur"), vec!["1.a:2,S", "2.a:2,S"]);
    }

    #[test]
    fn a_report_that_does_not_parse_is_skipped_with_its_kind_and_filed() {
        let dir = maildir();
        let classifier = Classifier::builtin();
        let mut inbox = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        deliver(dir.path(), "bad", b"Subject: hello\r\n\r\nnot a report\r\n");
        let mut big = report(OURS, "u@yahoo.com", "3@x").into_bytes();
        big.resize(MAX_REPORT_BYTES + 10, b'x');
        deliver(dir.path(), "big", &big);
        let scan = inbox.scan(&classifier).unwrap();
        assert!(scan.counted.is_empty());
        assert_eq!(
            scan.skipped,
            BTreeMap::from([("not_feedback_report", 1), ("too_large", 1)])
        );
        inbox.file_away();
        assert_eq!(listing(dir.path(), "cur"), vec!["bad:2,S", "big:2,S"]);
    }

    #[test]
    fn a_report_about_another_ip_is_left_for_its_agent_and_not_counted_again() {
        let dir = maildir();
        let classifier = Classifier::builtin();
        let mut inbox = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        deliver(
            dir.path(),
            "other",
            report("192.0.2.1", "u@yahoo.com", "4@x").as_bytes(),
        );
        let scan = inbox.scan(&classifier).unwrap();
        assert_eq!(scan.skipped, BTreeMap::from([("not_ours", 1)]));
        assert_eq!(inbox.scan(&classifier).unwrap(), Scan::default());
        inbox.file_away();
        assert_eq!(listing(dir.path(), "new"), vec!["other"]);
    }

    #[test]
    fn duplicates_by_message_id_or_by_bytes_are_skipped_and_filed() {
        let dir = maildir();
        let classifier = Classifier::builtin();
        let mut inbox = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        let one = report(OURS, "u@yahoo.com", "5@x");
        deliver(dir.path(), "a", one.as_bytes());
        deliver(dir.path(), "b", one.as_bytes());
        // The same complaint again, reported with other words around it.
        deliver(
            dir.path(),
            "c",
            one.replace("A complaint.", "The same complaint.")
                .as_bytes(),
        );
        let scan = inbox.scan(&classifier).unwrap();
        assert_eq!(scan.counted, BTreeMap::from([("yahoo".to_string(), 1)]));
        assert_eq!(scan.skipped, BTreeMap::from([("duplicate", 2)]));
        inbox.file_away();
        assert_eq!(listing(dir.path(), "cur").len(), 3);
    }

    #[test]
    fn a_report_delivered_again_after_a_restart_is_a_duplicate() {
        let dir = maildir();
        let classifier = Classifier::builtin();
        let mut before = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        // The report's own Message-ID, about another original than the next one.
        let first = format!(
            "Message-ID: <fbl-7@feedback.example>\r\n{}",
            report(OURS, "u@yahoo.com", "6@x")
        );
        deliver(dir.path(), "a", first.as_bytes());
        assert_eq!(before.scan(&classifier).unwrap().counted.len(), 1);
        before.file_away();
        let saved = before.remembered_reports(10);
        assert_eq!(saved.len(), 2, "{saved:?}");

        // A new run, as after a restart: the same report delivered again
        // (other bytes, same report Message-ID), and the same complaint in
        // another report (same original Message-ID): neither counts.
        let mut after = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        after.remember_reports(saved.clone());
        deliver(
            dir.path(),
            "b",
            first.replace("A complaint.", "Resent.").as_bytes(),
        );
        deliver(
            dir.path(),
            "c",
            report(OURS, "u@yahoo.com", "6@x").as_bytes(),
        );
        let scan = after.scan(&classifier).unwrap();
        assert!(scan.counted.is_empty(), "{scan:?}");
        assert_eq!(scan.skipped, BTreeMap::from([("duplicate", 2)]));
        // Without the saved identities the same files count again.
        let mut forgetful = ComplaintInbox::new(dir.path().to_path_buf(), OURS.parse().unwrap());
        deliver(dir.path(), "d", first.as_bytes());
        assert_eq!(forgetful.scan(&classifier).unwrap().counted.len(), 1);
        // Only the newest are kept when asked for fewer.
        assert_eq!(after.remembered_reports(1), saved[1..].to_vec());
    }

    #[test]
    fn a_missing_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = ComplaintInbox::new(dir.path().join("absent"), OURS.parse().unwrap());
        assert!(inbox.scan(&Classifier::builtin()).is_err());
    }
}
