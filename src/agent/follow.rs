//! Following a delivery log that grows, is rotated and is truncated, without
//! reading a line twice or losing one.
//!
//! - Only complete lines are delivered; a partial last line waits for its
//!   newline (the position stays at its start).
//! - The position is (device, inode, offset) plus a fingerprint of the file's
//!   first bytes, so a restart resumes exactly there, and a file truncated
//!   and rewritten past the offset is told from the same file grown.
//! - Rotation by rename (a new file appears at the path): the old file stays
//!   open and is drained until it has been idle for a grace period (the MTA
//!   may still write to it until it reopens its log), then its last partial
//!   line, if any, is delivered.
//! - Truncation (copytruncate): reading starts again at 0; the lines written
//!   between the last read and the truncation are recovered from the copy
//!   (a file next to the log with the same first bytes) when there is one.
//! - After a restart, a file rotated away while the agent was stopped is
//!   found again by its inode among the files next to the log and drained
//!   from the saved offset.
//!
//! Files are read with positioned reads in blocks of `max_line` bytes; a line
//! longer than that is delivered as [`Input::TooLong`] and skipped to its end.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::digest::fnv1a;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes of the file's beginning that identify its content.
const HEAD_MAX: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowOptions {
    /// Longest line read; longer ones are skipped.
    pub max_line: usize,
    /// How long a rotated file must stay unchanged before it is closed.
    pub drain_grace: Duration,
    /// At most this many bytes per poll, so a large backlog does not starve reporting.
    pub max_bytes_per_poll: u64,
    /// With no saved position, start at the end of the existing file instead of its beginning.
    pub start_at_end: bool,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            max_line: 256 * 1024,
            drain_grace: Duration::from_secs(30),
            max_bytes_per_poll: 64 * 1024 * 1024,
            start_at_end: false,
        }
    }
}

/// The first bytes of a file: their count and FNV-1a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub len: u64,
    pub hash: u64,
}

/// Where reading stands in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    pub dev: u64,
    pub inode: u64,
    /// Everything before this byte has been delivered, complete lines only.
    pub offset: u64,
    #[serde(default)]
    pub head: Option<Head>,
    /// The bytes just before `offset`, so a copy of the file can be told from
    /// another file that merely starts the same way.
    #[serde(default)]
    pub tail: Option<Head>,
    /// Inside a line longer than `max_line`: skip to its end.
    #[serde(default)]
    pub discarding: bool,
}

impl FilePosition {
    fn start(dev: u64, inode: u64) -> Self {
        FilePosition {
            dev,
            inode,
            offset: 0,
            head: None,
            tail: None,
            discarding: false,
        }
    }
}

/// What a restart needs: the followed file and the rotated files still drained.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowState {
    #[serde(default)]
    pub current: Option<FilePosition>,
    #[serde(default)]
    pub draining: Vec<FilePosition>,
}

/// What the follower hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// One complete line without its newline.
    Line(&'a [u8]),
    /// A line longer than `max_line`, skipped.
    TooLong,
}

/// Things worth a log message and a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Opened {
        path: PathBuf,
        offset: u64,
    },
    /// The log does not exist (yet).
    Missing {
        path: PathBuf,
    },
    /// A new file appeared at the path; the old one is drained.
    Rotated {
        old_inode: u64,
        new_inode: u64,
    },
    /// The file shrank below the read position (copytruncate).
    Truncated {
        offset: u64,
        recovered_from: Option<PathBuf>,
    },
    /// The file's first bytes changed: rewritten in place past the read position.
    Replaced {
        recovered_from: Option<PathBuf>,
    },
    /// A rotated file was idle for the grace period and is closed.
    Drained {
        inode: u64,
        partial_line: bool,
    },
    /// The file followed before a restart was rotated away meanwhile.
    RotatedWhileStopped {
        found: Option<PathBuf>,
    },
    /// A file followed before a restart is gone: its unread lines are lost.
    Lost {
        inode: u64,
        offset: u64,
    },
    ReadError {
        path: PathBuf,
        error: String,
    },
}

impl Notice {
    /// A short word for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Opened { .. } => "opened",
            Notice::Missing { .. } => "missing",
            Notice::Rotated { .. } => "rotated",
            Notice::Truncated { .. } => "truncated",
            Notice::Replaced { .. } => "replaced",
            Notice::Drained { .. } => "drained",
            Notice::RotatedWhileStopped { .. } => "rotated_while_stopped",
            Notice::Lost { .. } => "lost",
            Notice::ReadError { .. } => "read_error",
        }
    }
}

struct Tracked {
    file: File,
    path: PathBuf,
    pos: FilePosition,
}

struct Drain {
    tracked: Tracked,
    idle_since: Instant,
}

pub struct Follower {
    path: PathBuf,
    options: FollowOptions,
    current: Option<Tracked>,
    /// The saved position of the followed file, until it is opened again.
    pending: Option<FilePosition>,
    draining: Vec<Drain>,
    start_at_end: bool,
    missing_reported: bool,
    /// The last poll stopped at `max_bytes_per_poll` with more to read.
    behind: bool,
    buf: Vec<u8>,
}

impl Follower {
    /// Starts following `path`, from `saved` when there is one.
    pub fn resume(
        path: &Path,
        saved: Option<FollowState>,
        options: FollowOptions,
        now: Instant,
    ) -> (Follower, Vec<Notice>) {
        let mut notices = Vec::new();
        let mut follower = Follower {
            path: path.to_path_buf(),
            options,
            current: None,
            pending: None,
            draining: Vec::new(),
            start_at_end: options.start_at_end && saved.is_none(),
            missing_reported: false,
            behind: false,
            buf: vec![0; options.max_line.max(16)],
        };
        if let Some(state) = saved {
            for pos in state.draining {
                match find_by_inode(path, pos.dev, pos.inode) {
                    Some((file, found)) => follower.draining.push(Drain {
                        tracked: Tracked {
                            file,
                            path: found,
                            pos,
                        },
                        idle_since: now,
                    }),
                    None => notices.push(Notice::Lost {
                        inode: pos.inode,
                        offset: pos.offset,
                    }),
                }
            }
            follower.pending = state.current;
        }
        (follower, notices)
    }

    /// Where a restart should continue.
    pub fn state(&self) -> FollowState {
        FollowState {
            current: self
                .current
                .as_ref()
                .map(|t| t.pos.clone())
                .or_else(|| self.pending.clone()),
            draining: self
                .draining
                .iter()
                .map(|d| d.tracked.pos.clone())
                .collect(),
        }
    }

    /// Whether the last poll left lines unread (its byte budget ran out):
    /// poll again without waiting.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// Reads what is new and hands every complete line to `sink`.
    pub fn poll(&mut self, now: Instant, sink: &mut dyn FnMut(Input<'_>)) -> Vec<Notice> {
        let mut budget = self.options.max_bytes_per_poll;
        let notices = self.poll_within(now, sink, &mut budget);
        self.behind = budget == 0;
        notices
    }

    fn poll_within(
        &mut self,
        now: Instant,
        sink: &mut dyn FnMut(Input<'_>),
        budget: &mut u64,
    ) -> Vec<Notice> {
        let mut notices = Vec::new();

        let grace = self.options.drain_grace;
        let mut still_draining = Vec::new();
        for mut drain in std::mem::take(&mut self.draining) {
            match read_lines(&mut self.buf, &mut drain.tracked, sink, budget) {
                Ok(0) if now.saturating_duration_since(drain.idle_since) >= grace => {
                    let partial_line = finish(&mut self.buf, &mut drain.tracked, sink);
                    notices.push(Notice::Drained {
                        inode: drain.tracked.pos.inode,
                        partial_line,
                    });
                }
                Ok(0) => still_draining.push(drain),
                Ok(_) => {
                    drain.idle_since = now;
                    still_draining.push(drain);
                }
                Err(e) => {
                    notices.push(Notice::ReadError {
                        path: drain.tracked.path.clone(),
                        error: e.to_string(),
                    });
                    still_draining.push(drain);
                }
            }
        }
        self.draining = still_draining;

        if self.current.is_none() {
            self.open_current(now, &mut notices);
        }
        let Some(mut current) = self.current.take() else {
            return notices;
        };
        if let Some(notice) = self.check_in_place(&mut current, now) {
            notices.push(notice);
        }
        if let Err(e) = read_lines(&mut self.buf, &mut current, sink, budget) {
            notices.push(Notice::ReadError {
                path: self.path.clone(),
                error: e.to_string(),
            });
        }
        update_head(&mut current);
        match fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) != (current.pos.dev, current.pos.inode) => {
                let old_inode = current.pos.inode;
                self.draining.push(Drain {
                    tracked: current,
                    idle_since: now,
                });
                self.open_current(now, &mut notices);
                if let Some(new) = &mut self.current {
                    notices.push(Notice::Rotated {
                        old_inode,
                        new_inode: new.pos.inode,
                    });
                    if let Err(e) = read_lines(&mut self.buf, new, sink, budget) {
                        notices.push(Notice::ReadError {
                            path: self.path.clone(),
                            error: e.to_string(),
                        });
                    }
                    update_head(new);
                }
            }
            // Renamed away with no new file yet (the writer may still append to it), or unchanged.
            _ => self.current = Some(current),
        }
        notices
    }

    fn open_current(&mut self, now: Instant, notices: &mut Vec<Notice>) {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    notices.push(Notice::ReadError {
                        path: self.path.clone(),
                        error: e.to_string(),
                    });
                } else if !self.missing_reported {
                    notices.push(Notice::Missing {
                        path: self.path.clone(),
                    });
                }
                self.missing_reported = true;
                return;
            }
        };
        self.missing_reported = false;
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(e) => {
                notices.push(Notice::ReadError {
                    path: self.path.clone(),
                    error: e.to_string(),
                });
                return;
            }
        };
        let (dev, inode) = (meta.dev(), meta.ino());
        let pos = match self.pending.take() {
            Some(saved) if (saved.dev, saved.inode) == (dev, inode) => saved,
            Some(saved) => {
                match find_by_inode(&self.path, saved.dev, saved.inode) {
                    Some((old, found)) => {
                        notices.push(Notice::RotatedWhileStopped {
                            found: Some(found.clone()),
                        });
                        self.draining.push(Drain {
                            tracked: Tracked {
                                file: old,
                                path: found,
                                pos: saved,
                            },
                            idle_since: now,
                        });
                    }
                    None => {
                        notices.push(Notice::RotatedWhileStopped { found: None });
                        notices.push(Notice::Lost {
                            inode: saved.inode,
                            offset: saved.offset,
                        });
                    }
                }
                FilePosition::start(dev, inode)
            }
            None if self.start_at_end => FilePosition {
                offset: last_line_end(&file, meta.len()),
                ..FilePosition::start(dev, inode)
            },
            None => FilePosition::start(dev, inode),
        };
        self.start_at_end = false;
        notices.push(Notice::Opened {
            path: self.path.clone(),
            offset: pos.offset,
        });
        let mut tracked = Tracked {
            file,
            path: self.path.clone(),
            pos,
        };
        update_head(&mut tracked);
        self.current = Some(tracked);
    }

    /// Truncation or in-place rewrite: start again at 0, draining the copy if one is found.
    fn check_in_place(&mut self, current: &mut Tracked, now: Instant) -> Option<Notice> {
        let len = current.file.metadata().ok()?.len();
        let truncated = len < current.pos.offset;
        let replaced = !truncated
            && (current
                .pos
                .head
                .is_some_and(|head| head_of(&current.file, head.len).ok() != Some(head))
                || current.pos.tail.is_some_and(|tail| {
                    tail_of(&current.file, current.pos.offset).ok() != Some(tail)
                }));
        if !truncated && !replaced {
            return None;
        }
        let old = current.pos.clone();
        let recovered_from = old.head.and_then(|head| {
            find_copy(&self.path, head, old.tail, old.offset, (old.dev, old.inode))
        });
        let recovered_path = recovered_from.as_ref().map(|(_, p, _)| p.clone());
        if let Some((file, path, meta)) = recovered_from {
            let pos = FilePosition {
                dev: meta.dev(),
                inode: meta.ino(),
                ..old.clone()
            };
            self.draining.push(Drain {
                tracked: Tracked { file, path, pos },
                idle_since: now,
            });
        }
        current.pos = FilePosition::start(old.dev, old.inode);
        Some(if truncated {
            Notice::Truncated {
                offset: old.offset,
                recovered_from: recovered_path,
            }
        } else {
            Notice::Replaced {
                recovered_from: recovered_path,
            }
        })
    }
}

/// Delivers complete lines from the position on; returns the bytes consumed.
fn read_lines(
    buf: &mut [u8],
    t: &mut Tracked,
    sink: &mut dyn FnMut(Input<'_>),
    budget: &mut u64,
) -> io::Result<u64> {
    let mut consumed = 0u64;
    while *budget > 0 {
        let n = read_full(&t.file, buf, t.pos.offset)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let mut i = 0usize;
        if t.pos.discarding {
            match memchr::memchr(b'\n', data) {
                Some(nl) => {
                    i = nl + 1;
                    t.pos.discarding = false;
                }
                None => {
                    t.pos.offset += n as u64;
                    consumed += n as u64;
                    *budget = budget.saturating_sub(n as u64);
                    continue;
                }
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', &data[i..]) {
            sink(Input::Line(&data[i..i + nl]));
            i += nl + 1;
        }
        if i == 0 && n == buf.len() {
            sink(Input::TooLong);
            t.pos.discarding = true;
            i = n;
        }
        t.pos.offset += i as u64;
        consumed += i as u64;
        *budget = budget.saturating_sub(i as u64);
        if n < buf.len() {
            break;
        }
    }
    Ok(consumed)
}

/// A drained file's last bytes without a newline: its writer has gone, so they are a line.
fn finish(buf: &mut [u8], t: &mut Tracked, sink: &mut dyn FnMut(Input<'_>)) -> bool {
    let Ok(n) = read_full(&t.file, buf, t.pos.offset) else {
        return false;
    };
    if n == 0 {
        return false;
    }
    if t.pos.discarding {
        t.pos.discarding = false;
    } else if n == buf.len() {
        sink(Input::TooLong);
    } else {
        sink(Input::Line(&buf[..n]));
    }
    t.pos.offset += n as u64;
    true
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The fingerprint of up to [`HEAD_MAX`] bytes from `start`.
fn fingerprint(file: &File, start: u64, len: u64) -> io::Result<Head> {
    let mut bytes = [0u8; HEAD_MAX as usize];
    let want = len.min(HEAD_MAX) as usize;
    let n = read_full(file, &mut bytes[..want], start)?;
    Ok(Head {
        len: n as u64,
        hash: fnv1a(&bytes[..n]),
    })
}

fn head_of(file: &File, len: u64) -> io::Result<Head> {
    fingerprint(file, 0, len)
}

/// The bytes before `offset` that [`FilePosition::tail`] covers.
fn tail_of(file: &File, offset: u64) -> io::Result<Head> {
    let len = offset.min(HEAD_MAX);
    fingerprint(file, offset - len, len)
}

/// The fingerprints cover delivered bytes only.
fn update_head(t: &mut Tracked) {
    let wanted = t.pos.offset.min(HEAD_MAX);
    if wanted > 0 && t.pos.head.is_none_or(|h| h.len < wanted) {
        if let Ok(head) = head_of(&t.file, wanted) {
            t.pos.head = Some(head);
        }
    }
    t.pos.tail = if t.pos.offset == 0 {
        None
    } else {
        tail_of(&t.file, t.pos.offset).ok()
    };
}

/// The offset just past the last newline of the first `len` bytes.
fn last_line_end(file: &File, len: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let want = (end - start) as usize;
        let Ok(n) = read_full(file, &mut buf[..want], start) else {
            return 0;
        };
        if let Some(nl) = memchr::memrchr(b'\n', &buf[..n]) {
            return start + nl as u64 + 1;
        }
        end = start;
    }
    0
}

/// Files next to the log whose name starts with the log's name (`maillog.1`,
/// `maillog-20211105`), and the log itself.
fn siblings(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return out;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name != name && file_name.starts_with(name.as_ref()) {
                out.push(entry.path());
            }
        }
    }
    out
}

fn find_by_inode(path: &Path, dev: u64, inode: u64) -> Option<(File, PathBuf)> {
    siblings(path).into_iter().find_map(|candidate| {
        let meta = fs::metadata(&candidate).ok()?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (dev, inode) {
            return None;
        }
        let file = File::open(&candidate).ok()?;
        // Opened after the check: make sure it is still that file.
        let opened = file.metadata().ok()?;
        ((opened.dev(), opened.ino()) == (dev, inode)).then_some((file, candidate))
    })
}

/// The newest sibling (not `exclude`) that holds the same bytes at its start
/// (`head`) and before `offset` (`tail`): a copy of the followed file.
fn find_copy(
    path: &Path,
    head: Head,
    tail: Option<Head>,
    offset: u64,
    exclude: (u64, u64),
) -> Option<(File, PathBuf, fs::Metadata)> {
    siblings(path)
        .into_iter()
        .filter_map(|candidate| {
            let file = File::open(&candidate).ok()?;
            let meta = file.metadata().ok()?;
            let usable =
                meta.is_file() && (meta.dev(), meta.ino()) != exclude && meta.len() >= offset;
            let same = usable
                && head_of(&file, head.len).ok()? == head
                && tail.is_none_or(|t| tail_of(&file, offset).ok() == Some(t));
            same.then_some((file, candidate, meta))
        })
        .max_by_key(|(_, _, meta)| meta.modified().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Harness {
        dir: tempfile::TempDir,
        follower: Follower,
        lines: Vec<String>,
        too_long: usize,
        now: Instant,
    }

    fn options() -> FollowOptions {
        FollowOptions {
            max_line: 64,
            drain_grace: Duration::from_secs(5),
            ..FollowOptions::default()
        }
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let now = Instant::now();
            let (follower, notices) =
                Follower::resume(&dir.path().join("maillog"), None, options(), now);
            assert!(notices.is_empty());
            Harness {
                dir,
                follower,
                lines: Vec::new(),
                too_long: 0,
                now,
            }
        }

        fn log(&self) -> PathBuf {
            self.dir.path().join("maillog")
        }

        fn append(&self, text: &str) {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log())
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }

        fn poll(&mut self) -> Vec<Notice> {
            let (lines, too_long) = (&mut self.lines, &mut self.too_long);
            self.follower.poll(self.now, &mut |input| match input {
                Input::Line(l) => lines.push(String::from_utf8_lossy(l).into_owned()),
                Input::TooLong => *too_long += 1,
            })
        }

        fn later(&mut self, seconds: u64) {
            self.now += Duration::from_secs(seconds);
        }

        /// A restart: a new follower from the saved state.
        fn restart(&mut self) -> Vec<Notice> {
            let state: FollowState =
                serde_json::from_str(&serde_json::to_string(&self.follower.state()).unwrap())
                    .unwrap();
            let (follower, notices) =
                Follower::resume(&self.log(), Some(state), options(), self.now);
            self.follower = follower;
            notices
        }
    }

    #[test]
    fn only_complete_lines_are_read_and_partial_ones_wait() {
        let mut h = Harness::new();
        assert_eq!(h.poll(), vec![Notice::Missing { path: h.log() }]);
        assert!(h.poll().is_empty(), "missing is said once");
        h.append("one\ntw");
        let notices = h.poll();
        assert!(matches!(notices[0], Notice::Opened { offset: 0, .. }));
        assert_eq!(h.lines, ["one"]);
        h.append("o\nthree");
        h.poll();
        h.poll();
        assert_eq!(h.lines, ["one", "two"]);
        assert_eq!(h.follower.state().current.unwrap().offset, 8);
        h.append("\n");
        h.poll();
        assert_eq!(h.lines, ["one", "two", "three"]);
    }

    #[test]
    fn a_restart_resumes_at_the_saved_offset() {
        let mut h = Harness::new();
        h.append("a\nb\npartial");
        h.poll();
        h.restart();
        h.append(" end\nc\n");
        h.poll();
        assert_eq!(h.lines, ["a", "b", "partial end", "c"]);
    }

    #[test]
    fn rotation_by_rename_drains_the_old_file_then_follows_the_new_one() {
        let mut h = Harness::new();
        h.append("1\n2\n");
        h.poll();
        fs::rename(h.log(), h.dir.path().join("maillog.1")).unwrap();
        // The MTA still writes to the renamed file until it reopens its log.
        let mut old = fs::OpenOptions::new()
            .append(true)
            .open(h.dir.path().join("maillog.1"))
            .unwrap();
        old.write_all(b"3\n").unwrap();
        h.poll();
        h.append("new-1\n");
        let notices = h.poll();
        assert!(
            notices.iter().any(|n| matches!(n, Notice::Rotated { .. })),
            "{notices:?}"
        );
        old.write_all(b"4\nlast-without-newline").unwrap();
        h.poll();
        assert_eq!(h.follower.state().draining.len(), 1);
        h.later(6);
        let notices = h.poll();
        assert!(
            notices.contains(&Notice::Drained {
                inode: fs::metadata(h.dir.path().join("maillog.1")).unwrap().ino(),
                partial_line: true
            }),
            "{notices:?}"
        );
        h.append("new-2\n");
        h.poll();
        let mut lines = h.lines.clone();
        lines.sort();
        assert_eq!(
            lines,
            ["1", "2", "3", "4", "last-without-newline", "new-1", "new-2"]
        );
        assert!(h.follower.state().draining.is_empty());
    }

    #[test]
    fn copytruncate_restarts_at_zero_and_recovers_the_unread_tail_from_the_copy() {
        let mut h = Harness::new();
        h.append("2021 first line of the log\nb\n");
        h.poll();
        h.append("written before the copy\n");
        // logrotate copytruncate: copy, then truncate in place.
        fs::copy(h.log(), h.dir.path().join("maillog.1")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(h.log())
            .unwrap()
            .set_len(0)
            .unwrap();
        h.append("after\n");
        let notices = h.poll();
        assert!(
            matches!(&notices[0], Notice::Truncated { offset: 29, recovered_from: Some(p) } if p.ends_with("maillog.1")),
            "{notices:?}"
        );
        h.later(6);
        h.poll();
        assert_eq!(
            h.lines,
            [
                "2021 first line of the log",
                "b",
                "after",
                "written before the copy"
            ]
        );
    }

    #[test]
    fn a_rotated_file_that_starts_the_same_is_not_taken_for_a_copy() {
        let mut h = Harness::new();
        h.follower.options.max_line = 1024;
        h.follower.buf = vec![0; 1024];
        let first = "s".repeat(300);
        h.append(&format!("{first}\nold-a\nold-b\n"));
        h.poll();
        fs::rename(h.log(), h.dir.path().join("maillog.1")).unwrap();
        h.append(&format!("{first}\nnew-a\n"));
        h.poll();
        h.later(6);
        h.poll();
        fs::OpenOptions::new()
            .write(true)
            .open(h.log())
            .unwrap()
            .set_len(0)
            .unwrap();
        h.append("x\n");
        let notices = h.poll();
        assert!(
            matches!(
                &notices[0],
                Notice::Truncated {
                    recovered_from: None,
                    ..
                }
            ),
            "{notices:?}"
        );
        h.later(6);
        h.poll();
        let short: Vec<&str> = h
            .lines
            .iter()
            .map(|l| if l.len() > 20 { "first" } else { l.as_str() })
            .collect();
        assert_eq!(short, ["first", "old-a", "old-b", "first", "new-a", "x"]);
    }

    #[test]
    fn a_file_rewritten_past_the_offset_is_read_from_the_start() {
        let mut h = Harness::new();
        h.append("old content line\n");
        h.poll();
        let replacement = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(h.log())
            .unwrap();
        drop(replacement);
        h.append("NEW content line\nsecond new line\n");
        let notices = h.poll();
        assert_eq!(
            notices,
            vec![Notice::Replaced {
                recovered_from: None
            }]
        );
        assert_eq!(
            h.lines,
            ["old content line", "NEW content line", "second new line"]
        );
    }

    #[test]
    fn a_restart_finds_a_file_rotated_while_stopped() {
        let mut h = Harness::new();
        h.append("a\n");
        h.poll();
        let state = h.follower.state();
        h.append("b\npart");
        fs::rename(h.log(), h.dir.path().join("maillog-20211105")).unwrap();
        h.append("c\n");
        let (follower, notices) = Follower::resume(&h.log(), Some(state), options(), h.now);
        assert!(notices.is_empty());
        h.follower = follower;
        let notices = h.poll();
        assert!(
            matches!(&notices[0], Notice::RotatedWhileStopped { found: Some(p) } if p.ends_with("maillog-20211105")),
            "{notices:?}"
        );
        h.later(6);
        h.poll();
        h.later(6);
        h.poll();
        assert_eq!(h.lines, ["a", "c", "b", "part"]);

        // Gone for good: said, and counted by the caller. (The new file is made
        // before the old one is removed so it cannot reuse its inode.)
        let state = h.follower.state();
        fs::write(h.dir.path().join("next"), "d\n").unwrap();
        fs::remove_file(h.log()).unwrap();
        fs::rename(h.dir.path().join("next"), h.log()).unwrap();
        let (follower, _) = Follower::resume(&h.log(), Some(state), options(), h.now);
        h.follower = follower;
        let notices = h.poll();
        assert!(
            notices.iter().any(|n| matches!(n, Notice::Lost { .. })),
            "{notices:?}"
        );
        assert_eq!(h.lines.last().unwrap(), "d");
    }

    #[test]
    fn binary_garbage_and_overlong_lines_do_not_stop_reading() {
        let mut h = Harness::new();
        let long = "x".repeat(200);
        h.append(&format!("ok\n\u{0}\u{1}\u{2}\x7f\n{long}\nafter\n"));
        h.poll();
        assert_eq!(h.lines, ["ok", "\u{0}\u{1}\u{2}\x7f", "after"]);
        assert_eq!(h.too_long, 1);
        let mut raw = fs::OpenOptions::new().append(true).open(h.log()).unwrap();
        raw.write_all(b"\xff\xfe\xfd\n").unwrap();
        h.poll();
        assert_eq!(h.lines.len(), 4);
    }

    #[test]
    fn a_large_backlog_is_read_in_budgeted_polls() {
        let mut h = Harness::new();
        h.follower.options.max_bytes_per_poll = 10;
        h.append("aaaa\nbbbb\ncccc\ndddd\n");
        h.poll();
        assert!(h.follower.behind());
        while h.follower.behind() {
            h.poll();
        }
        assert_eq!(h.lines, ["aaaa", "bbbb", "cccc", "dddd"]);
    }

    #[test]
    fn start_at_end_skips_existing_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("maillog");
        fs::write(&log, "old 1\nold 2\nhalf").unwrap();
        let opts = FollowOptions {
            start_at_end: true,
            ..options()
        };
        let (mut follower, _) = Follower::resume(&log, None, opts, Instant::now());
        let mut lines = Vec::new();
        follower.poll(Instant::now(), &mut |i| {
            if let Input::Line(l) = i {
                lines.push(String::from_utf8_lossy(l).into_owned())
            }
        });
        let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b" line\nnew\n").unwrap();
        follower.poll(Instant::now(), &mut |i| {
            if let Input::Line(l) = i {
                lines.push(String::from_utf8_lossy(l).into_owned())
            }
        });
        assert_eq!(lines, ["half line", "new"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever the chunks a writer appends and wherever the agent
            /// restarts, every complete line comes out once, in order.
            #[test]
            fn every_complete_line_once_whatever_the_chunks_and_restarts(
                lines in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..90), 1..40),
                cuts in prop::collection::vec(0usize..4000, 0..12),
                restarts in prop::collection::vec(any::<bool>(), 12),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let log = dir.path().join("maillog");
                let mut stream = Vec::new();
                for line in &lines {
                    stream.extend_from_slice(line);
                    stream.push(b'\n');
                }
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
                cuts.push(stream.len());
                cuts.sort_unstable();
                let opts = FollowOptions { max_line: 64, ..FollowOptions::default() };
                let now = Instant::now();
                let (mut follower, _) = Follower::resume(&log, None, opts, now);
                let mut got: Vec<Vec<u8>> = Vec::new();
                let mut too_long = 0;
                let mut written = 0;
                for (i, cut) in cuts.into_iter().enumerate() {
                    let mut f = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
                    f.write_all(&stream[written..cut]).unwrap();
                    written = cut;
                    follower.poll(now, &mut |input| match input {
                        Input::Line(l) => got.push(l.to_vec()),
                        Input::TooLong => too_long += 1,
                    });
                    if restarts[i % restarts.len()] {
                        let state = serde_json::from_str(&serde_json::to_string(&follower.state()).unwrap()).unwrap();
                        follower = Follower::resume(&log, Some(state), opts, now).0;
                    }
                }
                follower.poll(now, &mut |input| match input {
                    Input::Line(l) => got.push(l.to_vec()),
                    Input::TooLong => too_long += 1,
                });
                let fitting: Vec<Vec<u8>> = lines.iter().filter(|l| l.len() < 64).cloned().collect();
                prop_assert_eq!(got, fitting);
                prop_assert_eq!(too_long, lines.iter().filter(|l| l.len() >= 64).count());
            }
        }
    }
}
