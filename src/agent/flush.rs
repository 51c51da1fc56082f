//! Asks Postfix's flush service to deliver one queued message now: what
//! `postqueue -i <id>` does, without a process per message.
//!
//! The pacer releases each window's budget by queue id. At 100,000/h one
//! replica releases about 28 messages a second; one `postqueue` process each
//! (exec, reading main.cf, then the same request) cost most of a core on a
//! loaded machine and made a window's releases run into the next one. The
//! request is a few bytes on the flush service's public socket, so the agent
//! sends it itself. No crate speaks Postfix's local IPC; the part used here is
//! one request and one reply of null-terminated attributes (Postfix's
//! `attr_print0`): `name\0value\0` for each attribute, then `\0`.
//!
//! A socket that cannot be reached (the flush service turned off, a queue
//! directory not readable) is not fatal: the caller falls back to `postqueue -i`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The flush service's socket under the queue directory.
const FLUSH_SOCKET: &str = "public/flush";
/// How long one request may take; the flush service answers after renaming
/// one queue file.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest reply read: `status\0<int>\0\0` is a dozen bytes.
const MAX_REPLY: usize = 256;

/// What the flush service answered (Postfix's `FLUSH_STAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStatus {
    /// Scheduled for delivery (also when the message was no longer queued).
    Ok,
    /// The queue id was refused as malformed.
    BadQueueId,
    /// Any other status the service gave.
    Other(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot reach Postfix's flush service at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the flush service at {path} did not answer: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the flush service at {path} answered something unexpected: {reply:?}")]
    Reply { path: PathBuf, reply: String },
}

/// The flush service of one Postfix instance.
#[derive(Debug, Clone)]
pub struct FlushService {
    socket: PathBuf,
}

impl FlushService {
    /// The service of the instance whose queue directory is `queue_directory`.
    pub fn in_queue_directory(queue_directory: &Path) -> FlushService {
        FlushService {
            socket: queue_directory.join(FLUSH_SOCKET),
        }
    }

    /// Asks for the delivery of `queue_id` now, whatever `defer_transports` says
    /// (the flush service moves the file to the incoming queue and tells the
    /// queue manager to scan it once without deferring transports).
    pub fn send_file(&self, queue_id: &str) -> Result<FlushStatus, FlushError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| FlushError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let io_error = |source| FlushError::Io {
            path: self.socket.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(io_error)?;
        stream
            .write_all(&send_file_request(queue_id))
            .map_err(io_error)?;
        let mut reply = Vec::with_capacity(32);
        let mut chunk = [0u8; 64];
        loop {
            let n = stream.read(&mut chunk).map_err(io_error)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
            if reply_status(&reply).is_some() || reply.len() > MAX_REPLY {
                break;
            }
        }
        reply_status(&reply).ok_or_else(|| FlushError::Reply {
            path: self.socket.clone(),
            reply: String::from_utf8_lossy(&reply[..reply.len().min(MAX_REPLY)]).into_owned(),
        })
    }
}

/// `request=send_file`, `queue_id=<id>`, end of attributes.
fn send_file_request(queue_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + queue_id.len());
    for (name, value) in [("request", "send_file"), ("queue_id", queue_id)] {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

/// The status of a complete reply (`status\0<int>\0\0`), `None` until it is
/// complete or when it is something else.
fn reply_status(reply: &[u8]) -> Option<FlushStatus> {
    let mut fields = reply.split(|b| *b == 0);
    let (name, value, end) = (fields.next()?, fields.next()?, fields.next()?);
    if name != b"status" || !end.is_empty() || !reply.ends_with(&[0, 0]) {
        return None;
    }
    let status: i64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some(match status {
        0 => FlushStatus::Ok,
        3 => FlushStatus::BadQueueId,
        other => FlushStatus::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_request_is_two_null_terminated_attributes_and_an_end() {
        assert_eq!(
            send_file_request("4XyZ2"),
            b"request\0send_file\0queue_id\x004XyZ2\0\0".to_vec()
        );
    }

    #[test]
    fn only_a_whole_status_reply_is_read_as_one() {
        assert_eq!(reply_status(b"status\x000\0\0"), Some(FlushStatus::Ok));
        assert_eq!(
            reply_status(b"status\x003\0\0"),
            Some(FlushStatus::BadQueueId)
        );
        assert_eq!(
            reply_status(b"status\0-1\0\0"),
            Some(FlushStatus::Other(-1))
        );
        assert_eq!(reply_status(b"status\x000\0"), None, "not ended yet");
        assert_eq!(reply_status(b"stat"), None);
        assert_eq!(reply_status(b"other\x000\0\0"), None);
        assert_eq!(reply_status(b"status\0zero\0\0"), None);
    }

    #[test]
    fn a_service_is_asked_and_its_answer_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("public")).unwrap();
        let listener = UnixListener::bind(dir.path().join(FLUSH_SOCKET)).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = vec![0u8; send_file_request("4XyZ2").len()];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(b"status\x000\0\0").unwrap();
            request
        });
        let service = FlushService::in_queue_directory(dir.path());
        assert_eq!(service.send_file("4XyZ2").unwrap(), FlushStatus::Ok);
        assert_eq!(server.join().unwrap(), send_file_request("4XyZ2"));
    }

    #[test]
    fn no_service_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let error = FlushService::in_queue_directory(dir.path())
            .send_file("4XyZ2")
            .unwrap_err();
        assert!(error.to_string().contains("public/flush"), "{error}");
    }
}
