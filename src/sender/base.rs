//! The base settings a sender pod's Postfix needs, whatever its routes: written
//! with `postconf` into the image's own main.cf and master.cf before Postfix
//! starts, so the image's other settings stay as Debian ships them.

use std::path::Path;
use std::process::Command;

use crate::agent::apply::ApplyError;

/// main.cf settings, in order; `extra` (from `--postconf`) comes last and wins.
pub fn main_cf_settings(log: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let log_dir = log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let mut settings: Vec<(String, String)> = [
        // The agent follows this file; the kubelet's log is stderr.
        ("maillog_file", log.display().to_string()),
        ("maillog_file_prefixes", log_dir.display().to_string()),
        // The pool Service and the route Services reach the pod on its own address.
        ("inet_interfaces", "all".to_string()),
        // A sender delivers nothing locally: every recipient is relayed.
        ("mydestination", String::new()),
        ("alias_maps", String::new()),
        ("alias_database", String::new()),
        ("local_recipient_maps", String::new()),
        ("biff", "no".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in extra {
        settings.retain(|(k, _)| k != key);
        settings.push((key.clone(), value.clone()));
    }
    settings
}

/// `KEY=VALUE` of `--postconf`.
pub fn parse_setting(text: &str) -> Result<(String, String), SettingSyntaxError> {
    match text.split_once('=') {
        Some((key, value))
            if !key.trim().is_empty()
                && key
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !value.contains('\n') =>
        {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(SettingSyntaxError {
            text: text.to_string(),
        }),
    }
}

/// A `--postconf` argument that is not `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not KEY=VALUE of a main.cf parameter, such as queue_directory=/var/spool/postfix"
)]
pub struct SettingSyntaxError {
    pub text: String,
}

fn postconf(bin_dir: &Path, config_dir: &Path, args: &[String]) -> Result<(), ApplyError> {
    let program = bin_dir.join("postconf");
    let mut full = vec!["-c".to_string(), config_dir.display().to_string()];
    full.extend(args.iter().cloned());
    let command = format!("{} {}", program.display(), full.join(" "));
    let out = Command::new(&program)
        .args(&full)
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(ApplyError::Command {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Writes the base settings: main.cf parameters, the `postlog` service that
/// writes `maillog_file`, and no chroot (the chroot would need copies of
/// /etc files that nothing in the container keeps up to date). The intake
/// parameters the rendered fragment sets are removed from the image's own
/// main.cf first: set twice, every Postfix daemon warns of the override at
/// each start, and with `maillog_file` those warnings can fill the `postlog`
/// socket until Postfix hangs. The sender configuration is applied right
/// after; until then Postfix's defaults relay for no one.
pub fn write_base(
    bin_dir: &Path,
    config_dir: &Path,
    settings: &[(String, String)],
) -> Result<(), ApplyError> {
    let mut remove = vec!["-X".to_string()];
    remove.extend(
        crate::routing::sender_settings::SenderSettings::INTAKE_PARAMETERS
            .iter()
            .map(|p| p.to_string()),
    );
    postconf(bin_dir, config_dir, &remove)?;
    let mut args = vec!["-e".to_string()];
    args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    postconf(bin_dir, config_dir, &args)?;
    postconf(
        bin_dir,
        config_dir,
        &[
            "-M".to_string(),
            "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd".to_string(),
        ],
    )?;
    postconf(
        bin_dir,
        config_dir,
        &["-F".to_string(), "*/*/chroot=n".to_string()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_path_sets_the_log_and_its_prefix_and_extras_win() {
        let settings = main_cf_settings(
            Path::new("/var/log/postfix/maillog"),
            &[("inet_interfaces".into(), "198.18.10.2".into())],
        );
        let get = |k: &str| {
            settings
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("maillog_file"), Some("/var/log/postfix/maillog"));
        assert_eq!(get("maillog_file_prefixes"), Some("/var/log/postfix"));
        assert_eq!(get("inet_interfaces"), Some("198.18.10.2"));
        assert_eq!(get("mydestination"), Some(""));
        assert_eq!(
            settings
                .iter()
                .filter(|(k, _)| k == "inet_interfaces")
                .count(),
            1
        );
        assert_eq!(
            parse_setting("queue_directory=/q").unwrap(),
            ("queue_directory".into(), "/q".into())
        );
        assert!(parse_setting("no equals").is_err());
        assert!(parse_setting("bad key=1")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
    }
}
