//! An instance's console: the program's stdout and stderr, and its trace, appended to the instance's log file (as a
//! detached `kiln run -d` process writes them to its stdout and stderr, which are that file).

use kiln_vmm::Console;
use std::fs::File;
use std::io::Write;

pub struct LogConsole {
    log: File,
}

impl LogConsole {
    /// `log` is opened for appending: each write lands at the end, whichever thread makes it.
    pub fn new(log: File) -> Self {
        LogConsole { log }
    }
}

impl Console for LogConsole {
    fn write(&self, _fd: u64, bytes: &[u8]) -> std::io::Result<()> {
        (&self.log).write_all(bytes)
    }

    fn trace(&self, line: &str) {
        let _ = writeln!(&self.log, "[kiln] {line}");
    }
}
