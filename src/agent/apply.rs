//! Applying a rendered sender configuration to Postfix:
//!
//! 1. every key except `main.cf`, `master.cf` and `config-version` is written
//!    into the Postfix config folder as a file of that name (atomically);
//! 2. `main.cf` and `master.cf` are fragments: each replaces the block between
//!    the mailfleet markers in the sender's own file (appended the first time),
//!    so the image's base configuration stays as it is;
//! 3. `postmap` indexes each written file that a fragment names as an
//!    indexed table (`hash:`, `btree:`, `lmdb:`, `cdb:`, `dbm:`, `sdbm:`);
//! 4. when Postfix runs: `postfix reload`, then `postqueue -f`, so mail that a
//!    block held in the deferred queue is tried again through the new routes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use regex::Regex;

use crate::agent::config::ConfigSnapshot;

pub const BLOCK_BEGIN: &str =
    "# BEGIN mailfleet: written by `mailfleet agent`; edits inside this block are replaced";
pub const BLOCK_END: &str = "# END mailfleet";

const FRAGMENTS: [&str; 2] = ["main.cf", "master.cf"];

/// Where Postfix lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostfixTarget {
    /// `postfix -c` folder (main.cf, master.cf, the maps).
    pub config_dir: PathBuf,
    /// Folder of `postfix`, `postmap`, `postqueue`.
    pub bin_dir: PathBuf,
    /// Where the relay Secrets are mounted (`<dir>/<secret>/username`,
    /// `password`): the relay password map is written from them on every
    /// apply ([`crate::sender::relay_login`]). `None`: no relay logins.
    pub relay_secrets_dir: Option<PathBuf>,
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: Vec<String>,
    pub postmapped: Vec<String>,
    /// False when Postfix was not running (it reads the files when it starts).
    pub reloaded: bool,
    pub flushed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

static INDEXED_TABLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(hash|btree|lmdb|cdb|dbm|sdbm):([^\s,]+)")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// `text` with its mailfleet block replaced by `fragment` (appended when it has none).
pub fn replace_block(text: &str, fragment: &str) -> String {
    let mut out = String::with_capacity(text.len() + fragment.len() + 128);
    let mut lines = text.split_inclusive('\n');
    let mut replaced = false;
    let write_block = |out: &mut String| {
        out.push_str(BLOCK_BEGIN);
        out.push('\n');
        out.push_str(fragment);
        if !fragment.is_empty() && !fragment.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(BLOCK_END);
        out.push('\n');
    };
    while let Some(line) = lines.next() {
        if line.trim_end() == BLOCK_BEGIN && !replaced {
            for inner in lines.by_ref() {
                if inner.trim_end() == BLOCK_END {
                    break;
                }
            }
            write_block(&mut out);
            replaced = true;
        } else {
            out.push_str(line);
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        write_block(&mut out);
    }
    out
}

/// Writes through a temporary file and a rename, so Postfix never reads half a file.
pub(crate) fn write_atomically(path: &Path, content: &[u8]) -> Result<(), ApplyError> {
    let write_error = |source| ApplyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.mailfleet-tmp"));
    let mut file = fs::File::create(&tmp).map_err(write_error)?;
    file.write_all(content).map_err(write_error)?;
    // Postfix distrusts a config file younger than a second and re-reads it
    // until it has aged, which delays `postfix reload` by about two seconds;
    // the file is complete before the rename, so it may look older.
    let settled = std::time::SystemTime::now()
        .checked_sub(std::time::Duration::from_secs(3))
        .unwrap_or(std::time::UNIX_EPOCH);
    file.set_modified(settled).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&tmp, path).map_err(write_error)
}

fn run(program: &Path, args: &[&str]) -> Result<std::process::Output, ApplyError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    Command::new(program)
        .args(args)
        .output()
        .map_err(|source| ApplyError::Spawn { command, source })
}

pub(crate) fn run_ok(program: &Path, args: &[&str]) -> Result<(), ApplyError> {
    let out = run(program, args)?;
    if out.status.success() {
        return Ok(());
    }
    Err(ApplyError::Command {
        command: format!("{} {}", program.display(), args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Files written by the fragments' indexed-table references, with the table type.
fn indexed_tables(snapshot: &ConfigSnapshot) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for fragment in FRAGMENTS.iter().filter_map(|f| snapshot.files.get(*f)) {
        let text = String::from_utf8_lossy(fragment);
        for found in INDEXED_TABLE.captures_iter(&text) {
            let kind = found.get(1).map_or("", |m| m.as_str());
            let file = found
                .get(2)
                .map_or("", |m| m.as_str())
                .rsplit('/')
                .next()
                .unwrap_or("");
            if let Some((name, _)) = snapshot.files.get_key_value(file) {
                if !FRAGMENTS.contains(&file) && !out.iter().any(|(n, _)| *n == name.as_str()) {
                    out.push((name.as_str(), kind.to_string()));
                }
            }
        }
    }
    out
}

impl PostfixTarget {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn config_arg(&self) -> String {
        self.config_dir.display().to_string()
    }

    pub fn is_running(&self) -> Result<bool, ApplyError> {
        Ok(
            run(&self.bin("postfix"), &["-c", &self.config_arg(), "status"])?
                .status
                .success(),
        )
    }

    /// Writes the files, indexes the tables, reloads and flushes.
    pub fn apply(&self, snapshot: &ConfigSnapshot) -> Result<Applied, ApplyError> {
        let mut applied = Applied::default();
        for (name, content) in &snapshot.files {
            // The classifier's files are the agent's, not Postfix's.
            if crate::routing::classifier_files::is_classifier_key(name) {
                continue;
            }
            let path = self.config_dir.join(name);
            if FRAGMENTS.contains(&name.as_str()) {
                let current = match fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                    Err(source) => return Err(ApplyError::Write { path, source }),
                };
                let updated = replace_block(&current, &String::from_utf8_lossy(content));
                if updated != current {
                    write_atomically(&path, updated.as_bytes())?;
                    applied.written.push(name.clone());
                }
            } else if fs::read(&path).ok().as_deref() != Some(content.as_slice()) {
                write_atomically(&path, content)?;
                applied.written.push(name.clone());
            }
        }
        if let Some(secrets) = &self.relay_secrets_dir {
            crate::sender::relay_login::write_password_map(
                snapshot,
                secrets,
                &self.config_dir,
                &self.bin_dir,
            )?;
        }
        let config = self.config_arg();
        for (name, kind) in indexed_tables(snapshot) {
            let table = format!("{kind}:{}", self.config_dir.join(name).display());
            run_ok(&self.bin("postmap"), &["-c", &config, &table])?;
            applied.postmapped.push(name.to_string());
        }
        if !self.is_running()? {
            return Ok(applied);
        }
        run_ok(&self.bin("postfix"), &["-c", &config, "reload"])?;
        applied.reloaded = true;
        run_ok(&self.bin("postqueue"), &["-c", &config, "-f"])?;
        applied.flushed = true;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_block_is_appended_once_then_replaced() {
        let base = "myhostname = sender\ncompatibility_level = 3.6";
        let once = replace_block(
            base,
            "transport_maps = texthash:${config_directory}/mailfleet_transport\n",
        );
        assert_eq!(
            once,
            format!("myhostname = sender\ncompatibility_level = 3.6\n{BLOCK_BEGIN}\ntransport_maps = texthash:${{config_directory}}/mailfleet_transport\n{BLOCK_END}\n")
        );
        let twice = replace_block(&format!("{once}# after\n"), "a = 1");
        assert_eq!(
            twice,
            format!("{base}\n{BLOCK_BEGIN}\na = 1\n{BLOCK_END}\n# after\n")
        );
        assert_eq!(replace_block(&twice, "a = 1"), twice);
    }

    /// Fake postfix/postmap/postqueue that record their arguments.
    fn fake_bin(dir: &Path, running: bool) -> PathBuf {
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let log = dir.join("calls");
        for name in ["postfix", "postmap", "postqueue"] {
            let status = if name == "postfix" && !running {
                "case \"$3\" in status) exit 1;; esac"
            } else {
                ""
            };
            let script = format!(
                "#!/bin/sh\necho \"{name} $*\" >> {}\n{status}\nexit 0\n",
                log.display()
            );
            fs::write(bin.join(name), script).unwrap();
            fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }

    fn snapshot(files: &[(&str, &str)]) -> ConfigSnapshot {
        ConfigSnapshot::from_files(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    #[test]
    fn writes_indexes_reloads_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("main.cf"), "myhostname = sender\n").unwrap();
        let target = PostfixTarget {
            config_dir: etc.clone(),
            bin_dir: fake_bin(dir.path(), true),
            relay_secrets_dir: None,
        };
        let config = snapshot(&[
            ("config-version", "v1"),
            ("main.cf", "transport_maps = hash:${config_directory}/mailfleet_transport\nsmtp_delivery_status_filter = regexp:${config_directory}/mailfleet_status_filter\n"),
            ("master.cf", "mf-x unix - - n - - smtp\n"),
            ("mailfleet_transport", "hotmail.com mf-x:\n"),
            ("mailfleet_status_filter", "/^5(.*)$/ 4$1\n"),
        ]);
        let applied = target.apply(&config).unwrap();
        assert_eq!(
            applied.written,
            [
                "mailfleet_status_filter",
                "mailfleet_transport",
                "main.cf",
                "master.cf"
            ]
        );
        assert_eq!(applied.postmapped, ["mailfleet_transport"]);
        assert!(applied.reloaded && applied.flushed);
        assert!(!etc.join("config-version").exists());
        let main_cf = fs::read_to_string(etc.join("main.cf")).unwrap();
        assert!(
            main_cf.starts_with("myhostname = sender\n# BEGIN mailfleet")
                && main_cf.contains("hash:${config_directory}/mailfleet_transport")
        );
        let calls = fs::read_to_string(dir.path().join("calls")).unwrap();
        let e = etc.display();
        assert_eq!(
            calls,
            format!("postmap -c {e} hash:{e}/mailfleet_transport\npostfix -c {e} status\npostfix -c {e} reload\npostqueue -c {e} -f\n")
        );
        // The same configuration again writes nothing.
        assert!(target.apply(&config).unwrap().written.is_empty());
    }

    #[test]
    fn a_stopped_postfix_is_not_reloaded_and_failures_name_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        let target = PostfixTarget {
            config_dir: etc.clone(),
            bin_dir: fake_bin(dir.path(), false),
            relay_secrets_dir: None,
        };
        let applied = target
            .apply(&snapshot(&[("mailfleet_transport", "x y\n")]))
            .unwrap();
        assert!(!applied.reloaded && !applied.flushed);
        let broken = PostfixTarget {
            config_dir: etc,
            bin_dir: dir.path().join("nowhere"),
            relay_secrets_dir: None,
        };
        let err = broken
            .apply(&snapshot(&[("main.cf", "a = hash:/x/t\n"), ("t", "k v\n")]))
            .unwrap_err();
        assert!(matches!(err, ApplyError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("nowhere/postmap"), "{err}");
    }
}
