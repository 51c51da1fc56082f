//! The sender configuration as the agent receives it: a folder (the mounted
//! ConfigMap, one file per key) or the `config` of a feedback response.
//!
//! A ConfigMap volume is updated by the kubelet atomically: the files live in
//! a timestamped folder reached through the `..data` symlink, which is
//! swapped in one rename. The folder is read between two reads of that link;
//! if it moved meanwhile, the read is retried at the next poll.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::agent::report::ConfigHint;

/// The key holding the configuration's version, set by the renderer.
pub const VERSION_KEY: &str = "config-version";

/// One complete configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSnapshot {
    /// The `config-version` key, or the digest when there is none.
    pub version: String,
    /// A hash of every key and content (`fnv1a64:<hex>`).
    pub digest: String,
    /// Key -> content, without [`VERSION_KEY`].
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config folder {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("config key `{0}` is not a plain file name (letters, digits, `.`, `_`, `-`)")]
    BadKey(String),
    #[error("the config folder {0} changed while it was read; read again at the next poll")]
    Moving(PathBuf),
}

/// ConfigMap keys, and nothing that could leave the target folder.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ConfigSnapshot {
    /// A snapshot of these files; `config-version` among them sets the version.
    pub fn from_files(mut files: BTreeMap<String, Vec<u8>>) -> Result<Self, ConfigError> {
        if let Some(bad) = files.keys().find(|k| !is_valid_key(k)) {
            return Err(ConfigError::BadKey(bad.clone()));
        }
        let hash = crate::digest::fnv1a_parts(
            files
                .iter()
                .flat_map(|(key, content)| [key.as_bytes(), content.as_slice()]),
        );
        let digest = format!("fnv1a64:{hash:016x}");
        let version = files
            .remove(VERSION_KEY)
            .map(|v| String::from_utf8_lossy(&v).trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| digest.clone());
        Ok(ConfigSnapshot {
            version,
            digest,
            files,
        })
    }

    /// The configuration carried by a feedback response, when it has files.
    pub fn from_hint(hint: &ConfigHint) -> Option<Result<Self, ConfigError>> {
        let files = hint.files.as_ref()?;
        let mut files: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        files.insert(VERSION_KEY.to_string(), hint.version.clone().into_bytes());
        Some(ConfigSnapshot::from_files(files))
    }
}

/// Reads every visible regular file of `dir` (symlinks followed).
pub fn read_config_dir(dir: &Path) -> Result<ConfigSnapshot, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let link_before = fs::read_link(dir.join("..data")).ok();
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            // A dangling link in the middle of an update.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::Moving(dir.to_path_buf()))
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
        let content = fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        files.insert(name, content);
    }
    if fs::read_link(dir.join("..data")).ok() != link_before {
        return Err(ConfigError::Moving(dir.to_path_buf()));
    }
    ConfigSnapshot::from_files(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Lays out `dir` the way the kubelet does: `..TIMESTAMP/` holding the
    /// files, `..data` -> it, and one symlink per key.
    fn kubelet_write(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
        let data = dir.join(format!("..{stamp}"));
        fs::create_dir_all(&data).unwrap();
        for (k, v) in files {
            fs::write(data.join(k), v).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(format!("..{stamp}"), &tmp).unwrap();
        fs::rename(&tmp, dir.join("..data")).unwrap();
        for (k, _) in files {
            let link = dir.join(k);
            if fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{k}"), &link).unwrap();
            }
        }
    }

    #[test]
    fn reads_a_kubelet_folder_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_write(
            dir.path(),
            "2021_11_05_08_10_00.1",
            &[("config-version", "v7\n"), ("mailfleet_transport", "a b\n")],
        );
        let s = read_config_dir(dir.path()).unwrap();
        assert_eq!(s.version, "v7");
        assert_eq!(s.files.keys().collect::<Vec<_>>(), ["mailfleet_transport"]);
        kubelet_write(
            dir.path(),
            "2021_11_05_08_11_00.2",
            &[("config-version", "v8"), ("mailfleet_transport", "a c\n")],
        );
        let t = read_config_dir(dir.path()).unwrap();
        assert_eq!(
            (
                t.version.as_str(),
                t.files["mailfleet_transport"].as_slice()
            ),
            ("v8", &b"a c\n"[..])
        );
        assert_ne!(s.digest, t.digest);
    }

    #[test]
    fn without_a_version_the_digest_is_the_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.cf"), "x = 1\n").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let s = read_config_dir(dir.path()).unwrap();
        assert!(s.version.starts_with("fnv1a64:") && s.version == s.digest);
        assert!(matches!(
            read_config_dir(&dir.path().join("missing")),
            Err(ConfigError::Read { .. })
        ));
        let hint = ConfigHint {
            version: "v9".into(),
            files: Some(BTreeMap::from([(
                "../etc/passwd".to_string(),
                String::new(),
            )])),
        };
        assert!(matches!(
            ConfigSnapshot::from_hint(&hint),
            Some(Err(ConfigError::BadKey(_)))
        ));
        assert!(ConfigSnapshot::from_hint(&ConfigHint {
            version: "v9".into(),
            files: None
        })
        .is_none());
    }
}
