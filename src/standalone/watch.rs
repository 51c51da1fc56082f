//! Noticing that the manifest folder changed, by polling: the names, sizes and
//! modification times of its YAML files, so a changed, new or removed file
//! shows. Polling works on every file system, mounted ones included.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the folder looked like; equal fingerprints mean nothing to reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// Reads `path` (a folder, searched recursively, or one file). An
    /// unreadable entry is part of the fingerprint too, so it shows as a change.
    pub fn of(path: &Path) -> Fingerprint {
        let mut entries = Vec::new();
        collect(path, &mut entries);
        entries.sort();
        Fingerprint(entries)
    }
}

/// Folders deeper than this are not looked into (the loader refuses them).
const MAX_DEPTH: usize = 16;

fn collect(path: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
    collect_at(path, 0, out);
}

fn collect_at(path: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
    let meta = fs::metadata(path);
    let modified = meta.as_ref().ok().and_then(|m| m.modified().ok());
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let is_dir = meta.as_ref().is_ok_and(|m| m.is_dir());
    if !is_dir {
        out.push((path.to_path_buf(), size, modified));
        return;
    }
    // A folder's own time changes with any file in it (editor swap files
    // too); its YAML files are what matter, and they are listed one by one.
    out.push((path.to_path_buf(), 0, None));
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        // The same walk as the loader's: hidden names (a mounted ConfigMap's
        // `..data`) skipped, links to folders never followed.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let child = entry.path();
        let yaml = matches!(
            child.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if real_dir || yaml {
            collect_at(&child, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_added_or_removed_yaml_file_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pool.yaml");
        fs::write(&file, "a: 1\n").unwrap();
        let first = Fingerprint::of(dir.path());
        assert_eq!(first, Fingerprint::of(dir.path()));
        fs::write(&file, "a: 22\n").unwrap();
        let second = Fingerprint::of(dir.path());
        assert_ne!(first, second);
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(second, Fingerprint::of(dir.path()));
        fs::create_dir(dir.path().join("more")).unwrap();
        fs::write(dir.path().join("more/route.yml"), "b: 1\n").unwrap();
        let third = Fingerprint::of(dir.path());
        assert_ne!(second, third);
        fs::remove_file(dir.path().join("more/route.yml")).unwrap();
        assert_ne!(third, Fingerprint::of(dir.path()));
    }
}
