//! A private rbldnsd on 127.0.0.1 serving the zone files a test gives, killed
//! when dropped (also when a test panics).

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailfleet::probe::dnsbl::{encode_query, QueryType};

pub struct Rbldnsd {
    child: Child,
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rbldnsd_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/rbldnsd");
    if fixed.exists() {
        return Some(fixed.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("rbldnsd"))
        .find(|p| p.exists())
}

/// Starts rbldnsd with `files` (name, content) and `zones` (rbldnsd's
/// `zone:type:file` arguments); `ready_query` is a name it must answer before
/// the test goes on. `None`: rbldnsd is missing and MAILFLEET_SKIP_RBLDNSD=1
/// asked to skip.
pub fn start(
    test: &str,
    files: &[(&str, &str)],
    zones: &[&str],
    ready_query: &str,
) -> Option<Rbldnsd> {
    let Some(binary) = rbldnsd_binary() else {
        if std::env::var("MAILFLEET_SKIP_RBLDNSD").as_deref() == Ok("1") {
            eprintln!(
                "\n*** SKIPPED {test}: rbldnsd is not installed and MAILFLEET_SKIP_RBLDNSD=1 ***\n"
            );
            return None;
        }
        panic!(
            "rbldnsd is not installed (looked for /usr/sbin/rbldnsd and in PATH). Install it with \
             `sudo apt-get install -y rbldnsd` (or run scripts/ensure-tools.sh), or set \
             MAILFLEET_SKIP_RBLDNSD=1 to skip the rbldnsd tests"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    // rbldnsd started as root drops to its own user, which must read the data.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut last_log = String::new();
    for _ in 0..5 {
        let port = free_udp_port();
        let log_path = dir.path().join(format!("rbldnsd-{port}.log"));
        let log = fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&binary)
            .args(["-n", "-b", &format!("127.0.0.1/{port}"), "-t", "60", "-w"])
            .arg(dir.path())
            .args(zones)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if answers(address, ready_query) {
                return Some(Rbldnsd {
                    child,
                    address,
                    _dir: dir,
                });
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        last_log = fs::read_to_string(&log_path).unwrap_or_default();
    }
    panic!("rbldnsd did not start; its last log:\n{last_log}");
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn answers(address: SocketAddr, name: &str) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let query = encode_query(4242, name, QueryType::A).unwrap();
    if socket.send_to(&query, address).is_err() {
        std::thread::sleep(Duration::from_millis(100));
        return false;
    }
    let mut buf = [0u8; 512];
    socket.recv_from(&mut buf).is_ok()
}
