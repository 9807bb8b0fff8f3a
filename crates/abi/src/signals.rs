//! Linux's names of the standard signals (1-31), for reports of how a program ended, on both sides of the boundary.

/// `NAMES[n]` is signal n's name; index 0 is no signal, and real-time signals (32 and up) have no name here.
pub const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// Signal `signal`'s name, if it is a standard signal (1-31).
pub fn name(signal: u64) -> Option<&'static str> {
    NAMES.get(usize::try_from(signal).ok()?).copied().filter(|n| !n.is_empty())
}
