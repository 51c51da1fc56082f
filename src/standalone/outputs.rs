//! Writing standalone mode's files into `--out`: only what changed, and each
//! change atomically, so a reader never sees half a file.
//!
//! - `state.json`, `routes.json`: written to a hidden temporary file in the
//!   same folder, synced, renamed over the old one, and the folder synced so
//!   the rename survives a crash. `state.json` is readable by its owner only:
//!   it holds the agents' instance ids.
//! - `senders/<ip slug>/`: one folder per sender laid out like a mounted
//!   ConfigMap — the files live in `..<version>/`, `..data` points at it and
//!   each key is a link through `..data`. A new configuration is a new
//!   folder and one rename of `..data`, so an agent reading the folder
//!   (`agent run --config-dir`) sees the old set or the new set, never a mix.
//! - `events.jsonl`: appended, one JSON object per line, and synced; a write
//!   that fails is cut back, so lines are whole or absent.
//!
//! Temporary files a crash left behind are removed when the writer starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::core::{Outputs, SenderOutput};
use super::state::STATE_FILE;

pub const ROUTES_FILE: &str = "routes.json";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const SENDERS_DIR: &str = "senders";
const DATA_LINK: &str = "..data";

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// Remembers what it wrote, so an unchanged output costs a comparison.
#[derive(Debug)]
pub struct OutputWriter {
    out: PathBuf,
    files: BTreeMap<PathBuf, String>,
    /// Configuration version in force per sender folder.
    senders: BTreeMap<String, String>,
}

impl OutputWriter {
    pub fn new(out: &Path) -> Result<Self, WriteError> {
        fs::create_dir_all(out.join(SENDERS_DIR)).map_err(at(out))?;
        remove_stale_temporaries(out)?;
        cut_torn_tail(&out.join(EVENTS_FILE))?;
        Ok(OutputWriter {
            out: out.to_path_buf(),
            files: BTreeMap::new(),
            senders: BTreeMap::new(),
        })
    }

    /// Brings the folder up to `outputs`; returns the paths it wrote. Sender
    /// folders come first and the state last, so a crash in between leaves a
    /// state that is at most as new as what senders were given.
    pub fn write(&mut self, outputs: &Outputs) -> Result<Vec<PathBuf>, WriteError> {
        let mut written = Vec::new();
        let mut slugs = BTreeSet::new();
        let mut staged = Vec::new();
        for sender in outputs.senders.values() {
            slugs.insert(sender.slug.clone());
            if let Some(stage) = self.stage_sender(sender)? {
                staged.push((stage, sender));
            }
        }
        if !staged.is_empty() {
            // A few senders (a block's rewrite): an fsync per file, so the
            // rewrite waits for its own files only. Many (a first start of
            // 256-IP pools writes thousands): one flush of the file system,
            // which also waits for everything else written there (queues,
            // builds) and made a block's rewrite as slow as the busiest
            // writer on the machine.
            let files: usize = staged.iter().map(|(stage, _)| stage.keys.len()).sum();
            let one_by_one = files <= MAX_FILES_SYNCED_ONE_BY_ONE;
            if one_by_one {
                for (stage, _) in &staged {
                    sync_staged(stage)?;
                }
            } else {
                sync_file_system(&self.out)?;
            }
            let mut switched = Vec::with_capacity(staged.len());
            for (stage, sender) in staged {
                switch(&stage)?;
                self.senders
                    .insert(sender.slug.clone(), sender.config.version.clone());
                written.push(self.out.join(SENDERS_DIR).join(&sender.slug));
                switched.push(stage.dir);
            }
            if one_by_one {
                // The renames and links live in each sender's folder; a new
                // sender's folder in the senders folder.
                for dir in &switched {
                    super::journal::sync_dir(dir).map_err(at(dir))?;
                }
                let root = self.out.join(SENDERS_DIR);
                super::journal::sync_dir(&root).map_err(at(&root))?;
            } else {
                sync_file_system(&self.out)?;
            }
        }
        self.remove_stale_senders(&slugs)?;
        for (name, content) in [(ROUTES_FILE, &outputs.routes), (STATE_FILE, &outputs.state)] {
            let path = self.out.join(name);
            if self.write_file(&path, content)? {
                written.push(path);
            }
        }
        Ok(written)
    }

    /// Appends event lines to `events.jsonl`.
    pub fn append_events(&self, lines: &[String]) -> Result<(), WriteError> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.out.join(EVENTS_FILE);
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at(&path))?;
        let length = file.metadata().map_err(at(&path))?.len();
        let result = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data());
        if result.is_err() {
            let _ = file.set_len(length);
        }
        result.map_err(at(&path))
    }

    fn write_file(&mut self, path: &Path, content: &str) -> Result<bool, WriteError> {
        if self.files.get(path).map(String::as_str) == Some(content) {
            return Ok(false);
        }
        let on_disk = fs::read_to_string(path).ok();
        if on_disk.as_deref() != Some(content) {
            let private = path.file_name() == Some(std::ffi::OsStr::new(STATE_FILE));
            write_file_atomically(
                path,
                content.as_bytes(),
                if private { 0o600 } else { 0o644 },
            )?;
        }
        self.files.insert(path.to_path_buf(), content.to_string());
        Ok(on_disk.as_deref() != Some(content))
    }

    /// Writes the files of a sender whose configuration changed into a
    /// staging folder (not yet synced, not yet in force).
    fn stage_sender(&mut self, sender: &SenderOutput) -> Result<Option<Staged>, WriteError> {
        let version = &sender.config.version;
        if self.senders.get(&sender.slug) == Some(version) {
            return Ok(None);
        }
        let dir = self.out.join(SENDERS_DIR).join(&sender.slug);
        let stamp = format!("..{}", sanitize(version));
        let link = dir.join(DATA_LINK);
        let in_force = fs::read_link(&link).ok();
        let changed = in_force.as_deref() != Some(Path::new(&stamp))
            || !keys_match(&dir, &sender.config.files);
        if changed {
            return stage(&dir, &stamp, &sender.config.files).map(Some);
        }
        self.senders.insert(sender.slug.clone(), version.clone());
        Ok(None)
    }

    fn remove_stale_senders(&mut self, keep: &BTreeSet<String>) -> Result<(), WriteError> {
        let root = self.out.join(SENDERS_DIR);
        let entries = fs::read_dir(&root).map_err(at(&root))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only folders this writer makes: ip slugs start with `mf-`.
            if name.starts_with("mf-") && !keep.contains(&name) && entry.path().is_dir() {
                fs::remove_dir_all(entry.path()).map_err(at(&entry.path()))?;
                self.senders.remove(&name);
            }
        }
        Ok(())
    }
}

/// Writes `content` to a hidden temporary file next to `path`, syncs it and
/// renames it over `path`.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<(), WriteError> {
    write_file_atomically(path, content, 0o644)
}

fn write_file_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        super::journal::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(at(path))
}

/// Removes what an interrupted write left: `.NAME.tmp-PID` files in the
/// output folder and `..STAMP.tmp-PID`, `..data.tmp-PID`, `.KEY.tmp-PID` in
/// the sender folders.
fn remove_stale_temporaries(out: &Path) -> Result<(), WriteError> {
    let mut folders = vec![out.to_path_buf()];
    let senders = out.join(SENDERS_DIR);
    if let Ok(entries) = fs::read_dir(&senders) {
        folders.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for folder in folders {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with('.') && name.contains(".tmp-")) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(at(&path))?;
        }
    }
    Ok(())
}

/// Cuts a last line without its newline (a crash in the middle of an append).
fn cut_torn_tail(path: &Path) -> Result<(), WriteError> {
    let Ok(text) = fs::read(path) else {
        return Ok(());
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(at(path))?;
    file.set_len(whole as u64)
        .and_then(|()| file.sync_data())
        .map_err(at(path))
}

/// A version as a folder name: letters, digits, `-` and `_` only.
fn sanitize(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether every key is a link through `..data` and no other key is.
fn keys_match(dir: &Path, files: &BTreeMap<String, String>) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut seen = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let through_data = fs::read_link(entry.path())
            .is_ok_and(|target| target == Path::new(DATA_LINK).join(&name));
        if !through_data || !files.contains_key(&name) {
            return false;
        }
        seen.insert(name);
    }
    seen.len() == files.len()
}

/// A sender's files written into a staging folder, to be put in force by [`switch`].
struct Staged {
    dir: PathBuf,
    stamp: String,
    staging: PathBuf,
    keys: Vec<String>,
}

/// Up to this many staged files are synced one by one; more take one `syncfs`.
const MAX_FILES_SYNCED_ONE_BY_ONE: usize = 64;

/// Syncs every file of a staging folder and the folder itself.
fn sync_staged(staged: &Staged) -> Result<(), WriteError> {
    for key in &staged.keys {
        let path = staged.staging.join(key);
        fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(at(&path))?;
    }
    super::journal::sync_dir(&staged.staging).map_err(at(&staged.staging))
}

/// Flushes the file system holding `path` (`syncfs`): everything written
/// there so far is on disk when it returns.
fn sync_file_system(path: &Path) -> Result<(), WriteError> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path).map_err(at(path))?;
    // SAFETY: a descriptor this function owns for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(WriteError {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Writes the files into a staging folder next to `dir/<stamp>/`; the caller
/// syncs them, then [`switch`] puts them in force.
fn stage(dir: &Path, stamp: &str, files: &BTreeMap<String, String>) -> Result<Staged, WriteError> {
    let data = dir.join(stamp);
    if data.exists() {
        fs::remove_dir_all(&data).map_err(at(&data))?;
    }
    let staging = dir.join(format!("{stamp}.tmp-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(at(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(at(&staging))?;
    for (key, content) in files {
        // Keys come from the renderer; refuse anything that could leave the folder.
        if key.is_empty() || key.starts_with('.') || key.contains('/') {
            return Err(WriteError {
                path: staging.join(key),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"),
            });
        }
        let path = staging.join(key);
        let mut file = fs::File::create(&path).map_err(at(&path))?;
        file.write_all(content.as_bytes()).map_err(at(&path))?;
    }
    Ok(Staged {
        dir: dir.to_path_buf(),
        stamp: stamp.to_string(),
        staging,
        keys: files.keys().cloned().collect(),
    })
}

/// Moves a staged folder to `dir/<stamp>/`, swaps `..data` to it, adds the key
/// links, and removes what the previous configuration had and this one has not.
fn switch(staged: &Staged) -> Result<(), WriteError> {
    let Staged {
        dir,
        stamp,
        staging,
        keys,
    } = staged;
    let (dir, stamp) = (dir.as_path(), stamp.as_str());
    let data = dir.join(stamp);
    fs::rename(staging, &data).map_err(at(&data))?;
    let link = dir.join(DATA_LINK);
    let link_temp = dir.join(format!("..data.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&link_temp);
    symlink(stamp, &link_temp).map_err(at(&link_temp))?;
    fs::rename(&link_temp, &link).map_err(at(&link))?;
    for key in keys {
        let path = dir.join(key);
        let target = Path::new(DATA_LINK).join(key);
        if fs::read_link(&path).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        // A plain file or another link is replaced in one rename as well.
        let temp = dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&temp);
        symlink(&target, &temp).map_err(at(&temp))?;
        fs::rename(&temp, &path).map_err(at(&path))?;
    }
    let entries = fs::read_dir(dir).map_err(at(dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == DATA_LINK || name == stamp {
            continue;
        }
        if name.starts_with("..") && path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path).map_err(at(&path))?;
        } else if !name.starts_with('.') && !keys.contains(&name) {
            fs::remove_file(&path).map_err(at(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::read_config_dir;
    use crate::routing::postfix::Sender;
    use crate::routing::sender_config::SenderConfig;
    use std::time::SystemTime;

    fn sender(version: &str, files: &[(&str, &str)]) -> SenderOutput {
        let mut map: BTreeMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert("config-version".into(), version.into());
        SenderOutput {
            sender: Sender {
                namespace: "mail".into(),
                pool: "bulk".into(),
                ip: "203.0.113.10".into(),
                settings: Default::default(),
            },
            slug: "mf-203-0-113-10".into(),
            config: SenderConfig {
                version: version.into(),
                files: map,
            },
        }
    }

    fn outputs(state: &str, senders: Vec<SenderOutput>) -> Outputs {
        Outputs {
            state: state.into(),
            routes: "{}\n".into(),
            senders: senders
                .into_iter()
                .map(|s| (s.sender.ip.clone(), s))
                .collect(),
            haproxy: None,
        }
    }

    fn mtime(path: &Path) -> SystemTime {
        fs::metadata(path).unwrap().modified().unwrap()
    }

    #[test]
    fn writes_only_what_changed_and_a_restart_rewrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = OutputWriter::new(dir.path()).unwrap();
        let first = outputs(
            "a: 1\n",
            vec![sender("sha256:v1", &[("main.cf", "x = 1\n")])],
        );
        assert_eq!(writer.write(&first).unwrap().len(), 3);
        let state = dir.path().join(STATE_FILE);
        let (state_time, cf_time) = (
            mtime(&state),
            mtime(&dir.path().join("senders/mf-203-0-113-10/main.cf")),
        );
        assert!(writer.write(&first).unwrap().is_empty());
        let mut restarted = OutputWriter::new(dir.path()).unwrap();
        assert!(
            restarted.write(&first).unwrap().is_empty(),
            "a restart rewrote unchanged files"
        );
        assert_eq!(mtime(&state), state_time);
        assert_eq!(
            mtime(&dir.path().join("senders/mf-203-0-113-10/main.cf")),
            cf_time
        );
        let second = outputs(
            "a: 2\n",
            vec![sender("sha256:v1", &[("main.cf", "x = 1\n")])],
        );
        assert_eq!(restarted.write(&second).unwrap(), vec![state.clone()]);
        assert_eq!(fs::read_to_string(&state).unwrap(), "a: 2\n");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_sender_folder_switches_as_a_whole_and_reads_like_a_configmap() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = OutputWriter::new(dir.path()).unwrap();
        writer
            .write(&outputs(
                "",
                vec![sender(
                    "v1",
                    &[("main.cf", "x = 1\n"), ("old.cf", "gone soon\n")],
                )],
            ))
            .unwrap();
        let folder = dir.path().join("senders/mf-203-0-113-10");
        let snapshot = read_config_dir(&folder).unwrap();
        assert_eq!(snapshot.version, "v1");
        assert_eq!(
            snapshot.files.keys().collect::<Vec<_>>(),
            ["main.cf", "old.cf"]
        );
        writer
            .write(&outputs(
                "",
                vec![sender(
                    "v2",
                    &[("main.cf", "x = 2\n"), ("sender.json", "{}\n")],
                )],
            ))
            .unwrap();
        let snapshot = read_config_dir(&folder).unwrap();
        assert_eq!(snapshot.version, "v2");
        assert_eq!(
            snapshot.files.keys().collect::<Vec<_>>(),
            ["main.cf", "sender.json"]
        );
        assert_eq!(snapshot.files["main.cf"], b"x = 2\n");
        let names: BTreeSet<String> = fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["..data", "..v2", "config-version", "main.cf", "sender.json"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        writer.write(&outputs("", vec![])).unwrap();
        assert!(!folder.exists(), "the folder of a removed sender stayed");
    }

    #[test]
    fn plain_files_left_by_hand_are_replaced_by_links() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("senders/mf-203-0-113-10");
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("main.cf"), "hand made\n").unwrap();
        let mut writer = OutputWriter::new(dir.path()).unwrap();
        writer
            .write(&outputs("", vec![sender("v1", &[("main.cf", "x = 1\n")])]))
            .unwrap();
        assert_eq!(
            fs::read_to_string(folder.join("main.cf")).unwrap(),
            "x = 1\n"
        );
    }

    #[test]
    fn events_are_appended_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OutputWriter::new(dir.path()).unwrap();
        writer.append_events(&["{\"a\":1}".into()]).unwrap();
        writer.append_events(&[]).unwrap();
        writer.append_events(&["{\"b\":2}".into()]).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(EVENTS_FILE)).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
    }

    #[test]
    fn a_restart_removes_stale_temporaries_and_cuts_a_torn_event_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let sender_dir = out.join(SENDERS_DIR).join("mf-203-0-113-10");
        fs::create_dir_all(sender_dir.join("..v1.tmp-77")).unwrap();
        fs::write(out.join(".state.json.tmp-77"), "half").unwrap();
        fs::write(sender_dir.join("..data.tmp-77"), "").unwrap();
        fs::write(out.join(EVENTS_FILE), "{\"a\":1}\n{\"b\":").unwrap();
        let mut writer = OutputWriter::new(out).unwrap();
        assert!(!out.join(".state.json.tmp-77").exists());
        assert!(!sender_dir.join("..v1.tmp-77").exists());
        assert!(!sender_dir.join("..data.tmp-77").exists());
        assert_eq!(
            fs::read_to_string(out.join(EVENTS_FILE)).unwrap(),
            "{\"a\":1}\n"
        );
        writer.append_events(&["{\"c\":3}".into()]).unwrap();
        assert_eq!(
            fs::read_to_string(out.join(EVENTS_FILE)).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        writer.write(&outputs("{}", Vec::new())).unwrap();
        let mode = fs::metadata(out.join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the state holds agent instance ids");
    }
}
