//! A private Postfix for the tests that need a real one: its own config
//! folder, queue and delivery log under a temporary folder, driven with
//! `postfix -c DIR`, and its daemons reaped once stopped. It needs the Debian
//! Postfix in /usr/sbin and root (queue ownership, postdrop): a missing piece
//! fails the test with the command that installs it, or is a loud skip under
//! MAILFLEET_SKIP_POSTFIX=1.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN_DIR: &str = "/usr/sbin";
pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const POSTMAP: &str = "/usr/sbin/postmap";
pub const POSTCONF: &str = "/usr/sbin/postconf";
pub const POSTQUEUE: &str = "/usr/sbin/postqueue";
pub const SENDMAIL: &str = "/usr/sbin/sendmail";

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Those of `programs` that are not installed.
pub fn missing_programs(programs: &[&str]) -> Vec<String> {
    programs
        .iter()
        .filter(|p| !Path::new(p).exists())
        .map(|p| p.to_string())
        .collect()
}

/// True when nothing is missing. Otherwise `what` (the tests) cannot run: false
/// with a loud SKIPPED line under MAILFLEET_SKIP_POSTFIX=1, else a failure that
/// gives the `install` command.
pub fn nothing_missing(missing: &[String], what: &str, install: &str) -> bool {
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MAILFLEET_SKIP_POSTFIX").as_deref() == Ok("1") {
        eprintln!("\n######## SKIPPED: {what} did NOT run (MAILFLEET_SKIP_POSTFIX=1; missing {missing:?}) ########\n");
        return false;
    }
    panic!(
        "{what} cannot run: {} missing. Install with:\n\n    {install}\n\n\
         or set MAILFLEET_SKIP_POSTFIX=1 to skip these tests.",
        missing.join(", ")
    );
}

/// Postfix's queue and postdrop need root; `why` says which test skips without it.
pub fn running_as_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("\n######## SKIPPED: {why} ########\n");
    }
    root
}

/// Makes this test process adopt the daemons a started Postfix leaves behind,
/// so that [`reap_postfix_daemons`] can collect them.
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts this process's orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// The services every private instance runs; a test adds its own after them.
pub const BASE_MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A complete private Postfix: `root/etc` (config), `root/spool`, `root/data`,
/// and its delivery log `root/maillog`. The queue lives outside the config
/// folder, as Postfix expects. Stopped (and its daemons reaped) when dropped.
/// What Postfix logs for mail the agent's pacer holds (`defer_transports`):
/// not a delivery.
pub const HELD_BY_PACER: &str = "(deferred transport)";

pub struct PrivatePostfix {
    _root: tempfile::TempDir,
    pub root: PathBuf,
    pub etc: PathBuf,
    started: bool,
}

impl PrivatePostfix {
    /// A stopped instance in a temporary folder named after `prefix`, local to
    /// loopback and without inet services; `main_cf` and `master_cf` are
    /// appended to the base files.
    pub fn new(prefix: &str, main_cf: &str, master_cf: &str) -> PrivatePostfix {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        for sub in ["etc", "spool", "data"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let chown = run("chown", &["postfix", root.join("data").to_str().unwrap()]);
        assert!(
            chown.status.success(),
            "chown postfix data: {}",
            String::from_utf8_lossy(&chown.stderr)
        );
        let base_main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {root}/spool\n\
             data_directory = {root}/data\n\
             maillog_file = {root}/maillog\n\
             maillog_file_prefixes = {root}\n\
             mydomain = mailfleet.test\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = loopback-only\n\
             master_service_disable = inet\n",
            root = root.display()
        );
        fs::write(etc.join("main.cf"), format!("{base_main_cf}{main_cf}")).unwrap();
        fs::write(
            etc.join("master.cf"),
            format!("{BASE_MASTER_CF}{master_cf}"),
        )
        .unwrap();
        PrivatePostfix {
            _root: dir,
            root,
            etc,
            started: false,
        }
    }

    pub fn etc(&self) -> &str {
        self.etc.to_str().unwrap()
    }

    pub fn maillog_path(&self) -> PathBuf {
        self.root.join("maillog")
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(self.maillog_path()).unwrap_or_default()
    }

    /// `postfix check` must pass without a warning, and postconf must know every
    /// parameter the configuration sets (it warns about unused ones).
    pub fn check(&self) {
        let out = run(POSTFIX, &["-c", self.etc(), "check"]);
        let log = self.maillog();
        assert!(
            out.status.success(),
            "postfix check failed:\n{log}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !log.contains("warning") && !log.contains("fatal"),
            "postfix check complained:\n{log}"
        );
        let out = run(POSTCONF, &["-c", self.etc(), "-n"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "postconf -n complained:\n{stderr}"
        );
    }

    pub fn start(&mut self) {
        PrivatePostfix::control(&mut [self], "start");
    }

    /// `postfix start` or `stop` on several instances at once (each takes a
    /// second or two).
    pub fn control(instances: &mut [&mut PrivatePostfix], command: &str) {
        let children: Vec<Child> = instances
            .iter()
            .map(|p| {
                Command::new(POSTFIX)
                    .args(["-c", p.etc(), command])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (p, child) in instances.iter_mut().zip(children) {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "postfix {command} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                p.maillog()
            );
            p.started = command == "start";
        }
    }

    /// Submits `message` (headers, blank line, body) from `from` (`<>`: the
    /// null sender) to `to`.
    pub fn send(&self, from: &str, to: &str, message: &str) {
        let mut child = Command::new(SENDMAIL)
            .args(["-C", self.etc(), "-f", from, to])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "sendmail to {to} failed:\n{}",
            self.maillog()
        );
    }

    /// The first delivery log line for `to` that carries a status.
    pub fn wait_for_status(&self, to: &str) -> String {
        let needle = format!("to=<{to}>");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.maillog();
            if let Some(line) = log.lines().find(|l| {
                l.contains(&needle) && l.contains("status=") && !l.contains(HELD_BY_PACER)
            }) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no delivery status for {to} within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Delivery lines (those with a status) in the log.
    pub fn status_lines(&self) -> usize {
        self.maillog()
            .lines()
            .filter(|l| {
                l.contains(" to=<") && l.contains(", status=") && !l.contains(HELD_BY_PACER)
            })
            .count()
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(POSTFIX)
                .args(["-c", self.etc(), "stop"])
                .output();
            reap_postfix_daemons();
        }
    }
}

/// Postfix daemonises: once stopped, its processes are orphans. A test that
/// made itself their subreaper ([`become_subreaper`]) collects them here
/// instead of leaving zombies; only Postfix daemons are reaped, never another
/// test's children.
pub fn reap_postfix_daemons() {
    const DAEMONS: [&str; 16] = [
        "master",
        "pickup",
        "qmgr",
        "cleanup",
        "trivial-rewrite",
        "smtp",
        "bounce",
        "postlogd",
        "error",
        "anvil",
        "scache",
        "proxymap",
        "showq",
        "tlsmgr",
        "flush",
        "postqueue",
    ];
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut alive = 0;
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let mut rest = stat[close + 1..].split_whitespace();
            let (Some(state), Some(ppid)) = (rest.next(), rest.next()) else {
                continue;
            };
            if ppid.parse::<u32>().ok() != Some(me) || !DAEMONS.contains(&comm) {
                continue;
            }
            alive += 1;
            if state == "Z" {
                let mut status = 0;
                // SAFETY: waits for one known zombie child of this process, without blocking.
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            }
        }
        if alive == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
