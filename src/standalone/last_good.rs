//! The last set of manifests that loaded and compiled, kept in the output
//! folder so that a restart after a broken push (a reboot, a crash, a
//! package upgrade) still starts the engine: from that set, saying so on
//! `/healthz` and in the log, until the manifests are fixed.
//!
//! Written as the loaded objects themselves (one JSON document per object,
//! which the YAML loader reads), not as a copy of the files, so it is exactly
//! what was in force even when a file changed while it was being read.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::outputs::{write_atomically, WriteError};
use crate::manifests::{self, ManifestError, Manifests};

/// Folder in `--out` holding the last good set.
pub const LAST_GOOD_DIR: &str = "manifests.last-good";
/// Its one file.
const LAST_GOOD_FILE: &str = "fleet.yaml";

pub fn path(out: &Path) -> PathBuf {
    out.join(LAST_GOOD_DIR).join(LAST_GOOD_FILE)
}

/// Keeps `manifests` as the last good set (status left out: it lives in
/// `state.json`). Written only when it differs from what is kept.
pub fn save(out: &Path, manifests: &Manifests) -> Result<(), WriteError> {
    let file = path(out);
    let text = render(manifests);
    if std::fs::read_to_string(&file).is_ok_and(|kept| kept == text) {
        return Ok(());
    }
    let dir = out.join(LAST_GOOD_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| WriteError {
        path: dir.clone(),
        source,
    })?;
    write_atomically(&file, text.as_bytes())
}

/// The kept set, if there is one.
pub fn load(out: &Path) -> Option<Result<Manifests, ManifestError>> {
    let dir = out.join(LAST_GOOD_DIR);
    path(out).exists().then(|| manifests::load_dir(&dir))
}

fn render(manifests: &Manifests) -> String {
    let mut text = String::from(
        "# The last manifests mailfleet standalone loaded and compiled; it starts\n\
         # from these when the manifests folder is broken at start. Not for editing.\n",
    );
    for pool in &manifests.pools {
        let mut pool = pool.clone();
        pool.status = None;
        push_document(&mut text, &pool);
    }
    for route in &manifests.routes {
        let mut route = route.clone();
        route.status = None;
        push_document(&mut text, &route);
    }
    text
}

fn push_document(text: &mut String, object: &impl Serialize) {
    text.push_str("---\n");
    // The CRD types always serialize: they are plain data.
    text.push_str(&serde_json::to_string(object).expect("a manifest object serializes"));
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_loads_back_as_it_was_without_status() {
        let loaded = manifests::load_dir(Path::new("examples/fleet")).unwrap();
        let out = tempfile::tempdir().unwrap();
        assert!(load(out.path()).is_none());
        save(out.path(), &loaded).unwrap();
        let back = load(out.path()).unwrap().unwrap();
        assert_eq!(back.pools.len(), loaded.pools.len());
        assert_eq!(back.routes.len(), loaded.routes.len());
        for (a, b) in back.pools.iter().zip(&loaded.pools) {
            assert_eq!(a.spec, b.spec);
            assert_eq!(a.metadata.name, b.metadata.name);
            assert!(a.status.is_none());
        }
        for (a, b) in back.routes.iter().zip(&loaded.routes) {
            assert_eq!(a.spec, b.spec);
        }
    }

    #[test]
    fn an_unchanged_set_is_not_written_again() {
        let loaded = manifests::load_dir(Path::new("examples/fleet")).unwrap();
        let out = tempfile::tempdir().unwrap();
        save(out.path(), &loaded).unwrap();
        let before = std::fs::metadata(path(out.path()))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        save(out.path(), &loaded).unwrap();
        let after = std::fs::metadata(path(out.path()))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }
}
