//! `mailfleet_build_info` and the standard `process_*` series.
//!
//! prometheus-client has no process collector. The crates that have one
//! (`prometheus`'s, on `procfs`) belong to the other Prometheus client
//! library and would bring a second metrics stack and a large /proc parser
//! for five numbers, so they are read here from /proc/self: `stat` (CPU time,
//! start time), `statm` (memory), `fd/` (open files) and the file limit.
//! Elsewhere than Linux the series are left out, not faked.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::catalogue::BUILD_INFO;
use super::{single, Families, Kind};

/// `mailfleet_build_info{version,os,arch} 1`.
pub struct BuildInfo;

impl Families for BuildInfo {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        BUILD_INFO.write(
            out,
            [(
                [
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::OS,
                    std::env::consts::ARCH,
                ],
                1i64,
            )],
        )
    }
}

/// The `process_*` series of the running process, read at each scrape.
pub struct ProcessStats;

impl Families for ProcessStats {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let Some(stats) = read() else {
            return Ok(());
        };
        single(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            stats.cpu_seconds,
        )?;
        single(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            stats.resident_bytes,
        )?;
        single(
            out,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            stats.virtual_bytes,
        )?;
        single(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
            stats.start_time_seconds,
        )?;
        if let Some(open) = stats.open_fds {
            single(
                out,
                "process_open_fds",
                "Number of open file descriptors.",
                Kind::Gauge,
                open,
            )?;
        }
        if let Some(max) = stats.max_fds {
            single(
                out,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
                max,
            )?;
        }
        Ok(())
    }
}

/// One reading of /proc/self.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// The process's figures, or `None` where /proc cannot be read.
pub fn read() -> Option<Stats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let fields = parse(&stat, &statm, &boot, ticks, page)?;
    Some(Stats {
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64),
        max_fds: max_fds(),
        ..fields
    })
}

/// The figures of `/proc/self/stat`, `/proc/self/statm` and `/proc/stat`
/// (its `btime`), with the clock tick rate and page size.
fn parse(stat: &str, statm: &str, proc_stat: &str, ticks: i64, page: i64) -> Option<Stats> {
    if ticks <= 0 || page <= 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces, so
    // the fields are counted from the last `)`: state is field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    let mut statm = statm.split_whitespace();
    let virtual_pages: u64 = statm.next()?.parse().ok()?;
    let resident_pages: u64 = statm.next()?.parse().ok()?;
    let boot: u64 = proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let (ticks, page) = (ticks as f64, page as u64);
    Some(Stats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: resident_pages * page,
        virtual_bytes: virtual_pages * page,
        start_time_seconds: boot as f64 + start as f64 / ticks,
        open_fds: None,
        max_fds: None,
    })
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_after_a_command_name_with_spaces_and_parentheses() {
        // Fields 14, 15 (utime, stime) = 250, 50 ticks; 22 (starttime) = 1000 ticks.
        let stat = "4242 (mail (fleet) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 123 456";
        let stats = parse(
            stat,
            "5000 300 100 1 0 200 0\n",
            "cpu 1 2\nbtime 1700000000\n",
            100,
            4096,
        )
        .unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.resident_bytes, 300 * 4096);
        assert_eq!(stats.virtual_bytes, 5000 * 4096);
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse("4242 (x) S 1", "1 2", "btime 1\n", 100, 4096), None);
        assert_eq!(parse("", "", "", 100, 4096), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let stats = read().expect("/proc/self is readable on Linux");
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds.unwrap_or(0) > 0);
        assert!(stats.start_time_seconds > 1_600_000_000.0);
    }
}
