//! Linux signal numbers and names, for reports about how a program ended.

/// "SIGABRT" for 6; real-time signals are "SIG34" and so on.
pub fn signal_name(signal: u32) -> String {
    match kiln_abi::signals::name(signal.into()) {
        Some(name) => name.to_string(),
        None => format!("SIG{signal}"),
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
