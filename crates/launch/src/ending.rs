//! How a run ended, in every launcher's terms: the exit code (`kiln run`'s, an instance's, a container's) and, in
//! words, why. What each launcher prints about it (crash reports, statistics) stays its own.

use kiln_vmm::Outcome;

/// Exit code for Kiln's own failures (as `docker run` uses 125), distinct from the program's codes.
pub const KILN_ERROR: u8 = 125;
/// Exit code of a program that deadlocked (as `timeout` reports a command it had to stop).
pub const DEADLOCK_EXIT: u8 = 124;

/// The exit code and the reason a record keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub code: u8,
    pub reason: String,
}

/// 128 + the signal, as shells report a process a signal ended.
fn signalled(signal: u32) -> u8 {
    (128 + signal.min(127)) as u8
}

pub fn ending(outcome: &Outcome) -> Ending {
    let (code, reason) = match outcome {
        Outcome::Exited(code) => (*code as u8, "exited".to_string()),
        Outcome::Killed(signal) => {
            (signalled(*signal), format!("killed by {}", kiln_vmm::signal::signal_name(*signal)))
        }
        Outcome::Deadlocked { threads, waits } => {
            let who =
                if *threads == 1 { "its only thread waits".to_string() } else { format!("all {threads} threads wait") };
            let waits = if waits.is_empty() { String::new() } else { format!(" ({waits})") };
            (DEADLOCK_EXIT, format!("deadlocked: {who} with no deadline, and nothing can wake them{waits}"))
        }
        Outcome::Crashed(crash) => (crash.signal.exit_code() as u8, format!("crashed: {crash}")),
        Outcome::SignalUntaken { signal, grace } => {
            let name = kiln_vmm::signal::signal_name(*signal);
            (signalled(*signal), format!("did not take {name} within {} s", grace.as_secs()))
        }
        Outcome::Stopped(why) => (KILN_ERROR, format!("kiln failed: stopped the VM: {why}")),
        Outcome::Snapshotted(path) => (0, format!("snapshotted to {}", path.display())),
    };
    Ending { code, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_shells_and_dockers() {
        assert_eq!(ending(&Outcome::Exited(3)), Ending { code: 3, reason: "exited".into() });
        assert_eq!(ending(&Outcome::Killed(9)), Ending { code: 137, reason: "killed by SIGKILL".into() });
        let untaken = Outcome::SignalUntaken { signal: 15, grace: std::time::Duration::from_secs(2) };
        assert_eq!(ending(&untaken), Ending { code: 143, reason: "did not take SIGTERM within 2 s".into() });
        assert_eq!(ending(&Outcome::Stopped("bad queue".into())).code, KILN_ERROR);
        let one = ending(&Outcome::Deadlocked { threads: 1, waits: String::new() });
        assert_eq!(
            (one.code, one.reason.as_str()),
            (124, "deadlocked: its only thread waits with no deadline, and nothing can wake them")
        );
    }
}
