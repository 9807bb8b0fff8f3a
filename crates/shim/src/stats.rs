//! Stats of a task: its VM process's CPU time, resident memory (guest memory the guest touched, and the VMM's own)
//! and threads (one per vCPU and the VMM's few), read from `/proc`, as cgroup v1 metrics (what `ctr task metrics`
//! and the kubelet read). The VM process has no cgroup of its own: these are exactly its figures.

use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};

/// The metrics of process `pid`, with `memory_limit` (the guest's memory) as the memory limit; None once it is gone.
pub fn metrics(pid: u32, memory_limit: u64) -> Option<Metrics> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (user_ticks, kernel_ticks, threads) = parse_stat(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000 / ticks_per_sec);
    let rss = status_kib(&status, "VmRSS:").unwrap_or_default() * 1024;
    let peak = status_kib(&status, "VmHWM:").unwrap_or_default() * 1024;
    let usage = CPUUsage {
        total: ns(user_ticks + kernel_ticks),
        kernel: ns(kernel_ticks),
        user: ns(user_ticks),
        ..Default::default()
    };
    let memory_usage = MemoryEntry { usage: rss, max: peak, limit: memory_limit, ..Default::default() };
    Some(Metrics {
        pids: Some(PidsStat { current: threads, ..Default::default() }).into(),
        cpu: Some(CPUStat { usage: Some(usage).into(), ..Default::default() }).into(),
        memory: Some(MemoryStat { rss, usage: Some(memory_usage).into(), ..Default::default() }).into(),
        ..Default::default()
    })
}

/// utime, stime and num_threads from `/proc/PID/stat` (the fields after the command name, which may hold spaces
/// and parentheses, so the split is at its last `)`).
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15, num_threads 20.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(20)?))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_past_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1234 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((7, 3, 5)));
        assert_eq!(parse_stat("42 (x"), None);
    }

    #[test]
    fn this_process_has_metrics() {
        let m = metrics(std::process::id(), 1 << 30).unwrap();
        assert!(m.memory.usage.usage > 0 && m.memory.usage.limit == 1 << 30);
        assert!(m.pids.current >= 1);
        assert_eq!(metrics(u32::MAX, 0).map(|_| ()), None);
    }
}
