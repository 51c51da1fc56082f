//! The relay password map (`mailfleet_sasl_passwd`): for every relay the
//! sender's routes use with a `credentialsSecret`, one line
//! `[host]:port username:password`, read from the Secret mounted at
//! `<secrets dir>/<secret name>/{username,password}`. The password never
//! enters the ConfigMap; the map is written next to the rendered files and
//! indexed with `postmap` whenever the configuration is applied.
//!
//! A Secret that is missing or lacks a key leaves its relay out of the map
//! and is reported: that relay then refuses the session, which the relay
//! transport's status filter defers, so mail waits and is never bounced.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::agent::apply::ApplyError;
use crate::agent::config::ConfigSnapshot;
use crate::routing::sender_config::{parse_document, SENDER_JSON_KEY};
use crate::routing::sender_settings::SASL_PASSWORD_FILE;

/// What is wrong with one relay's credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsProblem {
    #[error("relay {relay}: Secret {secret} has no readable key `{key}` under {dir} ({reason}); create the Secret with keys username and password in the pool's namespace; mail for this relay is deferred meanwhile")]
    Missing {
        relay: String,
        secret: String,
        key: &'static str,
        dir: String,
        reason: String,
    },
    #[error("relay {relay}: Secret {secret} key `{key}` holds a line break or is empty; store the value alone")]
    Malformed {
        relay: String,
        secret: String,
        key: &'static str,
    },
}

/// The map's key for a relay: the next hop as the transport map writes it.
pub fn relay_key(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[ipv6:{v6}]:{port}"),
        _ => format!("[{host}]:{port}"),
    }
}

/// The map's text for the relays named in `sender.json`, with the problems
/// of those left out. `read` gives the content of `secret`'s `key`.
pub fn password_map(
    snapshot: &ConfigSnapshot,
    read: impl Fn(&str, &str) -> io::Result<String>,
    dir: &Path,
) -> (String, Vec<CredentialsProblem>) {
    let mut text =
        String::from("# relay logins (mailfleet sender, from mounted Secrets); generated\n");
    let mut problems = Vec::new();
    let Some(document) = snapshot
        .files
        .get(SENDER_JSON_KEY)
        .and_then(|raw| parse_document(&String::from_utf8_lossy(raw)).ok())
    else {
        return (text, problems);
    };
    let mut seen = std::collections::BTreeSet::new();
    for route in &document.routes {
        let (Some(host), Some(port), Some(secret)) =
            (&route.host, route.port, &route.credentials_secret)
        else {
            continue;
        };
        if route.action != "relay" {
            continue;
        }
        let key = relay_key(host, port);
        if !seen.insert(key.clone()) {
            continue;
        }
        let mut values = Vec::new();
        for name in ["username", "password"] {
            match read(secret, name) {
                Ok(value) => {
                    let value = value.strip_suffix('\n').unwrap_or(&value).to_string();
                    if value.is_empty() || value.contains(['\n', '\r']) {
                        problems.push(CredentialsProblem::Malformed {
                            relay: key.clone(),
                            secret: secret.clone(),
                            key: name,
                        });
                    } else {
                        values.push(value);
                    }
                }
                Err(e) => problems.push(CredentialsProblem::Missing {
                    relay: key.clone(),
                    secret: secret.clone(),
                    key: name,
                    dir: dir.join(secret).display().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        if let [username, password] = values.as_slice() {
            text.push_str(&format!("{key}\t{username}:{password}\n"));
        }
    }
    (text, problems)
}

/// `text` with, for each relay whose Secret has a problem now, its line of
/// the `previous` map: a Secret deleted or half rewritten leaves the last
/// good login in use (the pool condition `RelayCredentialsValid` says what
/// to fix) instead of failing that relay's mail from then on.
pub fn keep_last_good(mut text: String, problems: &[CredentialsProblem], previous: &str) -> String {
    let mut kept = std::collections::BTreeSet::new();
    for problem in problems {
        let relay = match problem {
            CredentialsProblem::Missing { relay, .. }
            | CredentialsProblem::Malformed { relay, .. } => relay,
        };
        if !kept.insert(relay.clone()) {
            continue;
        }
        let prefix = format!("{relay}\t");
        if let Some(line) = previous.lines().find(|l| l.starts_with(&prefix)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Writes the map into `config_dir` (mode 0600) when it changed and indexes it
/// with `postmap`. Returns the problems found (each already logged).
pub fn write_password_map(
    snapshot: &ConfigSnapshot,
    secrets_dir: &Path,
    config_dir: &Path,
    bin_dir: &Path,
) -> Result<Vec<CredentialsProblem>, ApplyError> {
    let read = |secret: &str, key: &str| fs::read_to_string(secrets_dir.join(secret).join(key));
    let (text, problems) = password_map(snapshot, read, secrets_dir);
    for problem in &problems {
        tracing::error!("{problem}; the last good login for this relay stays in use");
    }
    let path = config_dir.join(SASL_PASSWORD_FILE);
    let previous = fs::read_to_string(&path).unwrap_or_default();
    let text = keep_last_good(text, &problems, &previous);
    let indexed = config_dir.join(format!("{SASL_PASSWORD_FILE}.db"));
    if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) && indexed.exists() {
        return Ok(problems);
    }
    let write_error = |source| ApplyError::Write {
        path: path.clone(),
        source,
    };
    let tmp = config_dir.join(format!(".{SASL_PASSWORD_FILE}.mailfleet-tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&tmp, &path).map_err(write_error)?;
    let program = bin_dir.join("postmap");
    let args = [
        "-c".to_string(),
        config_dir.display().to_string(),
        format!("hash:{}", path.display()),
    ];
    let command = format!("{} {}", program.display(), args.join(" "));
    let out = Command::new(&program)
        .args(&args)
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ApplyError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn snapshot(routes: &str) -> ConfigSnapshot {
        let json = format!("{{\"schema\":\"mailfleet.io/sender-config/v1\",\"namespace\":\"mail\",\"pool\":\"bulk\",\"ip\":\"203.0.113.10\",\"routes\":[{routes}]}}");
        ConfigSnapshot::from_files(BTreeMap::from([(
            SENDER_JSON_KEY.to_string(),
            json.into_bytes(),
        )]))
        .unwrap()
    }

    fn relay(host: &str, secret: Option<&str>) -> String {
        format!("{{\"namespace\":\"mail\",\"name\":\"r\",\"provider\":\"microsoft\",\"pool\":\"bulk\",\"mode\":\"Relay\",\"action\":\"relay\",\"transport\":null,\"hourly_cap\":null,\"rate_delay_seconds\":null,\"host\":\"{host}\",\"port\":587,\"credentials_secret\":{}}}",
            secret.map_or("null".to_string(), |s| format!("\"{s}\"")))
    }

    #[test]
    fn relays_with_secrets_get_a_line_and_missing_keys_are_named() {
        let s = snapshot(
            &[
                relay("smtp.relay.example", Some("relay-credentials")),
                relay("2001:db8::25", Some("v6")),
                relay("anonymous.example", None),
                relay("broken.example", Some("half")),
            ]
            .join(","),
        );
        let read = |secret: &str, key: &str| match (secret, key) {
            ("relay-credentials", "username") => Ok("mailfleet\n".to_string()),
            ("relay-credentials", "password") => Ok("s3cret pass".to_string()),
            ("v6", _) => Ok(format!("{key}6")),
            ("half", "username") => Ok("x".to_string()),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        let (text, problems) = password_map(&s, read, Path::new("/etc/mailfleet/relay"));
        assert!(
            text.contains("\n[smtp.relay.example]:587\tmailfleet:s3cret pass\n"),
            "{text}"
        );
        assert!(
            text.contains("\n[ipv6:2001:db8::25]:587\tusername6:password6\n"),
            "{text}"
        );
        assert!(
            !text.contains("anonymous") && !text.contains("broken"),
            "{text}"
        );
        assert_eq!(problems.len(), 1);
        let message = problems[0].to_string();
        assert!(
            message.contains(
                "Secret half has no readable key `password` under /etc/mailfleet/relay/half"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_relay_whose_secret_broke_keeps_its_last_good_login() {
        let problem = CredentialsProblem::Missing {
            relay: "[relay.example.net]:587".into(),
            secret: "relay-credentials".into(),
            key: "password",
            dir: "/etc/mailfleet/relay/relay-credentials".into(),
            reason: "No such file or directory".into(),
        };
        let previous =
            "# relay logins\n[relay.example.net]:587\tmailer:s3cret\n[other.example.net]:25\tx:y\n";
        let text = keep_last_good(
            "# relay logins\n".into(),
            &[problem.clone(), problem],
            previous,
        );
        assert_eq!(
            text,
            "# relay logins\n[relay.example.net]:587\tmailer:s3cret\n"
        );
        assert_eq!(
            keep_last_good("# relay logins\n".into(), &[], previous),
            "# relay logins\n"
        );
    }
}
