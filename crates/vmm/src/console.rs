//! The console every launcher gives a VM: the program's fd 1 and 2 are this process's stdout and stderr.

use std::io::Write as _;

use crate::vm::Console;

/// Writes the program's stdout (flushed after each write, so a pipe or containerd's FIFO sees it as it comes) and
/// stderr to this process's own, and `--trace-syscalls` lines to stderr. Trace lines a closed stderr cannot take are
/// dropped (`kiln run --trace-syscalls ... 2>&1 | head`).
pub struct StdioConsole;

impl Console for StdioConsole {
    fn write(&self, fd: u64, bytes: &[u8]) -> std::io::Result<()> {
        if fd == 1 {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        } else {
            std::io::stderr().lock().write_all(bytes)
        }
    }

    fn trace(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "[kiln] {line}");
    }
}
