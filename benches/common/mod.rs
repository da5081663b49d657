//! What the benchmarks read of a process in `/proc`: CPU time, memory,
//! descriptors. Each bench target includes this module (`mod common;`).

#![allow(dead_code)] // not every bench uses every function

use std::process::Command;

/// CPU time (clock ticks), resident memory and open descriptors.
#[derive(Clone, Copy, Default)]
pub(crate) struct Usage {
    /// User plus system time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// `VmRSS`.
    pub(crate) rss_kib: u64,
    /// Open descriptors.
    pub(crate) fds: u64,
    /// Nanoseconds the process's threads spent runnable but waiting for a
    /// CPU (`run_delay`, the second field of `/proc/PID/task/TID/schedstat`),
    /// summed over the threads alive now.
    pub(crate) run_delay_ns: u64,
    /// Times a thread was switched out while it still could run
    /// (`nonvoluntary_ctxt_switches` of each thread's `status`), summed.
    pub(crate) preempted: u64,
}

/// The usage of `pid` now; `None` once it is gone.
pub(crate) fn proc_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5); the first after ')' is 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_kib = status_kib(pid, "VmRSS:").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let (run_delay_ns, preempted) = sched(pid);
    Some(Usage {
        cpu_ticks: utime + stime,
        rss_kib,
        fds,
        run_delay_ns,
        preempted,
    })
}

/// Run-queue wait (ns) and involuntary context switches of `pid`'s threads.
/// A thread that exits between two readings takes its counts with it; the
/// proxies keep their threads for the whole bench.
fn sched(pid: u32) -> (u64, u64) {
    let (mut delay, mut preempted) = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let dir = task.path();
        if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
            delay += s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
            preempted += s
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (delay, preempted)
}

/// A size in KiB from `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value, if absent).
pub(crate) fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}
