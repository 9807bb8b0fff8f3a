//! Linux signal numbers and names, for reports about how a program ended.

const NAMES: [&str; 32] = [
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

/// "SIGABRT" for 6; real-time signals are "SIG34" and so on.
pub fn signal_name(signal: u32) -> String {
    match NAMES.get(signal as usize) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("SIG{signal}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::signal_name(6), "SIGABRT");
        assert_eq!(super::signal_name(11), "SIGSEGV");
        assert_eq!(super::signal_name(31), "SIGSYS");
        assert_eq!(super::signal_name(34), "SIG34");
    }
}
