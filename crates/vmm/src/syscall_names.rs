//! Names of the Linux x86-64 syscalls, for `--trace-syscalls` and the summary (the table is `kiln_abi`'s).

/// The syscall's name, or its number where it has none.
pub fn syscall_name(nr: u64) -> String {
    match kiln_abi::syscall_names::name(nr) {
        Some(name) => name.to_string(),
        None => format!("syscall_{nr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_abi() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(231), "exit_group");
        assert_eq!(syscall_name(999), "syscall_999");
    }
}
