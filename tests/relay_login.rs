//! Relay login against a relay that demands STARTTLS and AUTH (aiosmtpd on
//! 127.0.0.1, an ephemeral port): a real Postfix with the rendered `mf-relay`
//! transport and the password map the sender writes from a mounted Secret.
//! The right password: the relay accepts the mail. A wrong password, or a
//! Secret without its password: the mail is deferred, never bounced.
//!
//! Needs root, Postfix, libsasl2-modules and target/venv (`make tools`).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mailfleet::agent::config::ConfigSnapshot;
use mailfleet::routing::sender_config::SENDER_JSON_KEY;
use mailfleet::routing::sender_settings::{
    relay_status_filter, relay_transport, RELAY_STATUS_FILTER_FILE,
};
use mailfleet::sender::relay_login::write_password_map;
use support::postfix::{
    become_subreaper, missing_programs, nothing_missing, running_as_root, PrivatePostfix, BIN_DIR,
    POSTFIX,
};

const PYTHON: &str = "target/venv/bin/python";

/// A relay that requires STARTTLS, then AUTH PLAIN/LOGIN as mailfleet/s3cret.
const RELAY: &str = r#"
import ssl, sys, signal, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
cert, key, out, port_file = sys.argv[1:5]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
def check(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"mailfleet" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a") as f:
            f.write(" ".join(envelope.rcpt_tos) + "\n")
        return "250 2.0.0 stored"
import socket
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context,
               require_starttls=True, auth_required=True, authenticator=check,
               auth_require_tls=True)
c.start()
with open(port_file, "w") as f:
    f.write(str(port))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
c.stop()
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sender_json(port: u16) -> String {
    format!("{{\"schema\":\"mailfleet.io/sender-config/v1\",\"namespace\":\"mail\",\"pool\":\"bulk\",\"ip\":\"127.0.0.1\",\"routes\":[{{\"namespace\":\"mail\",\"name\":\"microsoft\",\"provider\":\"microsoft\",\"pool\":\"bulk\",\"mode\":\"Relay\",\"action\":\"relay\",\"transport\":null,\"hourly_cap\":null,\"rate_delay_seconds\":null,\"host\":\"127.0.0.1\",\"port\":{port},\"credentials_secret\":\"relay-credentials\"}}]}}")
}

fn reload(postfix: &PrivatePostfix) {
    let out = Command::new(POSTFIX)
        .args(["-c", postfix.etc(), "reload"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_of(postfix: &PrivatePostfix, to: &str) -> String {
    let line = postfix.wait_for_status(to);
    line.split("status=")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_relay_accepts_the_right_login_and_a_wrong_one_defers() {
    if !running_as_root("the relay login test needs root (a private Postfix)") {
        return;
    }
    let missing = missing_programs(&[POSTFIX, PYTHON]);
    if !nothing_missing(&missing, "the relay login test", "scripts/ensure-tools.sh") {
        return;
    }
    become_subreaper();
    let work = tempfile::Builder::new()
        .prefix("mf10-relay")
        .tempdir()
        .unwrap();
    let dir = work.path();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let received = dir.join("received");
    let port_file = dir.join("port");
    fs::write(dir.join("relay.py"), RELAY).unwrap();
    let _relay = Killed(
        Command::new(PYTHON)
            .arg(dir.join("relay.py"))
            .args([
                dir.join("cert.pem"),
                dir.join("key.pem"),
                received.clone(),
                port_file.clone(),
            ])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let port: u16 = loop {
        if let Some(port) = fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            break port;
        }
        assert!(Instant::now() < deadline, "the relay did not start");
        std::thread::sleep(Duration::from_millis(100));
    };

    let main_cf =
        format!("default_transport = mf-relay:[127.0.0.1]:{port}\nsmtp_tls_loglevel = 1\n");
    // tlsmgr as Debian's master.cf has it: the relay transport requires TLS.
    let master_cf = format!(
        "tlsmgr unix - - n 1000? 1 tlsmgr\n{}",
        relay_transport("${config_directory}")
    );
    let mut postfix = PrivatePostfix::new("mf10-relay-pf", &main_cf, &master_cf);
    fs::write(
        postfix.etc.join(RELAY_STATUS_FILTER_FILE),
        relay_status_filter(),
    )
    .unwrap();
    let secrets = dir.join("secrets");
    let secret = secrets.join("relay-credentials");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("username"), "mailfleet\n").unwrap();
    fs::write(secret.join("password"), "s3cret\n").unwrap();
    let snapshot = ConfigSnapshot::from_files(BTreeMap::from([(
        SENDER_JSON_KEY.to_string(),
        sender_json(port).into_bytes(),
    )]))
    .unwrap();
    let write = |postfix: &PrivatePostfix| {
        write_password_map(&snapshot, &secrets, &postfix.etc, Path::new(BIN_DIR)).unwrap()
    };
    assert!(write(&postfix).is_empty());
    postfix.check();
    postfix.start();

    postfix.send(
        "app@example.org",
        "good@example.net",
        "Subject: 1\n\nhello\n",
    );
    assert_eq!(
        status_of(&postfix, "good@example.net"),
        "sent",
        "{}",
        postfix.maillog()
    );
    assert_eq!(
        fs::read_to_string(&received).unwrap().trim(),
        "good@example.net"
    );

    // A wrong password: deferred, never bounced.
    fs::write(secret.join("password"), "wrong\n").unwrap();
    assert!(write(&postfix).is_empty());
    reload(&postfix);
    postfix.send(
        "app@example.org",
        "wrong@example.net",
        "Subject: 2\n\nhello\n",
    );
    assert_eq!(
        status_of(&postfix, "wrong@example.net"),
        "deferred",
        "{}",
        postfix.maillog()
    );

    // A Secret without its password: named, and the mail is deferred.
    fs::remove_file(secret.join("password")).unwrap();
    let problems = write(&postfix);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().contains("`password`"),
        "{}",
        problems[0]
    );
    reload(&postfix);
    postfix.send(
        "app@example.org",
        "nokey@example.net",
        "Subject: 3\n\nhello\n",
    );
    assert_eq!(
        status_of(&postfix, "nokey@example.net"),
        "deferred",
        "{}",
        postfix.maillog()
    );
    assert!(
        !postfix.maillog().contains("status=bounced"),
        "{}",
        postfix.maillog()
    );
    assert_eq!(fs::read_to_string(&received).unwrap().lines().count(), 1);
}
