//! The VM process's console: the program's stdout and stderr are the process's own (containerd's FIFOs, or the
//! terminal's pty), and so is its stdin when the task has one (a pipe the shim fills from containerd's stdin FIFO,
//! or the terminal), relayed by the VMM (`kiln_vmm::stdin`).

use kiln_vmm::stdin::StdinSource;
use kiln_vmm::{Console, StdioConsole};
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct ShimConsole {
    /// Whether the process's stdin is the program's (taken once).
    stdin: AtomicBool,
    terminal: bool,
}

impl ShimConsole {
    /// A console whose stdin is the process's own if `stdin` (else the program reads end of file).
    pub fn new(stdin: bool) -> ShimConsole {
        ShimConsole { stdin: AtomicBool::new(stdin), terminal: false }
    }

    /// A console whose standard streams are the process's own, a terminal.
    pub fn terminal() -> ShimConsole {
        ShimConsole { stdin: AtomicBool::new(true), terminal: true }
    }
}

impl Console for ShimConsole {
    fn write(&self, fd: u64, bytes: &[u8]) -> std::io::Result<()> {
        StdioConsole.write(fd, bytes)
    }

    fn trace(&self, line: &str) {
        StdioConsole.trace(line)
    }

    fn take_stdin(&self) -> Option<StdinSource> {
        if !self.stdin.swap(false, Ordering::SeqCst) {
            return None;
        }
        // The copy is made here, on the thread that runs the VM, before the relay's thread is confined.
        let own = std::io::stdin().as_fd().try_clone_to_owned().map(std::fs::File::from);
        Some(Box::new(move || Ok(Box::new(own?) as Box<dyn std::io::Read + Send>)))
    }

    fn terminal_fd(&self) -> Option<RawFd> {
        self.terminal.then_some(1)
    }
}
