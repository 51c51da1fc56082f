//! Stopping a process a test started, the way its supervisor would.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// SIGTERM, then up to `grace` for the child to exit, then SIGKILL. The exit
/// status when it stopped on SIGTERM, `None` when it had to be killed.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: signalling a child this test started, by its own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
