//! Test harness for the boot tests: builds the guest programs ([`guests`]), decides whether KVM tests can run
//! ([`kvm`]), crafts bad inputs ([`inputs`]) and runs `kiln` as a whole process with a time limit ([`Kiln`]).

/// Used by the container image tests only.
#[allow(dead_code)]
pub mod container;
pub mod guests;
pub mod inputs;
pub mod kvm;
/// Used by the network tests only.
#[allow(dead_code)]
pub mod netns;
/// Used by the network and HTTP tests only.
#[allow(dead_code)]
pub mod tcp;
// The store tests' helpers (images, volumes).
#[allow(dead_code)]
pub mod store;

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long one `kiln run` may take before the test kills it and fails: a hang must fail the test, not stall CI.
/// `KILN_TEST_TIMEOUT_SECS` overrides it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait, once `kiln` is gone, for its output pipes to close.
const GRACE: Duration = Duration::from_secs(5);

/// A host environment variable set on every `kiln` process; the guest must never see it (its environment is only the
/// `--env` flags).
pub const HOST_ONLY_VAR: &str = "KILN_TEST_HOST_ONLY";

/// A `kiln` command line being built.
pub struct Kiln {
    cmd: Command,
    shown: Vec<String>,
}

/// Starts a `kiln` command line: the binary built from this workspace, or `$KILN_TEST_BIN` when set (to test an
/// installed or release build with the same tests).
pub fn kiln() -> Kiln {
    let binary = std::env::var_os("KILN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kiln").into());
    let mut cmd = Command::new(binary);
    // Keep kiln's cache (rewritten programs) inside the target directory, away from the user's home.
    cmd.env("KILN_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-home"));
    cmd.env(HOST_ONLY_VAR, "leaked").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Kiln { cmd, shown: vec!["kiln".into()] }
}

impl Kiln {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let shown = arg.as_ref().to_string_lossy();
        let plain = !shown.is_empty() && !shown.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"');
        self.shown.push(if plain { shown.into_owned() } else { format!("{shown:?}") });
        self.cmd.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, args: I) -> Self {
        args.into_iter().fold(self, Kiln::arg)
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// The command itself, for tests that drive the process by hand (e.g. close its stdout early).
    pub fn into_command(self) -> Command {
        self.cmd
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs `kiln` to completion (or kills it at the time limit and fails the test) and returns what it did.
    // The child is reaped by `reap`'s wait4 (which also reports its peak memory), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    pub fn run(mut self) -> Outcome {
        let command = self.shown.join(" ");
        let timeout = std::env::var("KILN_TEST_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let start = Instant::now();
        let mut child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let stdout = drain(child.stdout.take().expect("stdout is piped"));
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let (status, max_rss_kib) = loop {
            if let Some(reaped) = reap(child.id()) {
                break reaped;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let grace = Instant::now() + GRACE;
                panic!(
                    "`{command}` did not finish within {timeout:?}; killed it.\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    excerpt(&stderr.collect(grace)),
                    excerpt(&stdout.collect(grace))
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = start.elapsed();
        let grace = Instant::now() + GRACE;
        Outcome {
            command,
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            max_rss_kib: Some(max_rss_kib),
            stdout: stdout.collect(grace),
            stderr: stderr.collect(grace),
            elapsed,
        }
    }
}

/// The exit status of child `pid` and the most memory it had resident (KiB), once it has ended.
fn reap(pid: u32) -> Option<(std::process::ExitStatus, u64)> {
    let mut raw = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is a child of this process that nothing else waits for; both out-pointers are valid.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut raw, libc::WNOHANG, &mut usage) };
    if r == pid as libc::pid_t {
        let status = std::os::unix::process::ExitStatusExt::from_raw(raw);
        return Some((status, usage.ru_maxrss as u64));
    }
    assert!(r == 0, "wait for kiln: {}", std::io::Error::last_os_error());
    None
}

/// Reads a pipe to its end on a thread of its own.
struct Drain {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: thread::JoinHandle<()>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> Drain {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&bytes);
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => sink.lock().expect("output buffer").extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    Drain { bytes, reader }
}

impl Drain {
    /// Everything read once the pipe closed, or what was read by `deadline`: a process `kiln` left behind may hold
    /// the pipe open, and the test must not wait for it.
    fn collect(self, deadline: Instant) -> Vec<u8> {
        while !self.reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        std::mem::take(&mut *self.bytes.lock().expect("output buffer"))
    }
}

/// The beginning and end of a long output, for failure messages.
fn excerpt(bytes: &[u8]) -> String {
    const KEEP: usize = 2048;
    if bytes.len() <= 2 * KEEP {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "{}\n[... {} bytes left out ...]\n{}",
        String::from_utf8_lossy(&bytes[..KEEP]),
        bytes.len() - 2 * KEEP,
        String::from_utf8_lossy(&bytes[bytes.len() - KEEP..])
    )
}

/// What one `kiln` process did.
pub struct Outcome {
    pub command: String,
    /// The exit code, or `None` when `kiln` itself was killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The most memory `kiln` had resident (its VmHWM), in KiB, where the harness waited for it.
    pub max_rss_kib: Option<u64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Fails the test unless `kiln` exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "wrong exit code\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stdout(&self, expected: &str) -> &Self {
        assert!(self.stdout == expected.as_bytes(), "wrong stdout; expected:\n{expected}\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr(&self, expected: &str) -> &Self {
        assert!(self.stderr == expected.as_bytes(), "wrong stderr; expected:\n{expected}\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(self.stderr_text().contains(needle), "stderr does not mention {needle:?}\n{self}");
        self
    }

    /// Fails the test unless this is how `kiln` rejects bad input: a clean non-zero exit (not a crash code, not a
    /// panic, not killed by a signal) with exactly one line on stderr that starts with `kiln: `. Returns that line.
    #[track_caller]
    pub fn assert_kiln_error(&self) -> String {
        let code = self.code.unwrap_or_else(|| panic!("kiln was killed by signal {:?}\n{self}", self.signal));
        assert_ne!(code, 0, "bad input was accepted\n{self}");
        assert!(![132, 136, 139].contains(&code), "bad input got a program-crash exit code\n{self}");
        assert_ne!(code, 101, "exit code 101 is a Rust panic\n{self}");
        let stderr = self.stderr_text();
        assert!(!stderr.contains("panicked"), "kiln panicked\n{self}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected a one-line error on stderr\n{self}");
        assert!(lines[0].starts_with("kiln: "), "the error line does not start with `kiln: `\n{self}");
        assert!(self.stdout.is_empty(), "nothing belongs on stdout for bad input\n{self}");
        lines[0].to_string()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- command: {}", self.command)?;
        let (code, signal, took, rss) = (self.code, self.signal, self.elapsed, self.max_rss_kib);
        writeln!(f, "--- exit code: {code:?}, signal: {signal:?}, took {took:?}, peak memory {rss:?} KiB")?;
        writeln!(f, "--- stderr ({} bytes):\n{}", self.stderr.len(), excerpt(&self.stderr))?;
        write!(f, "--- stdout ({} bytes):\n{}", self.stdout.len(), excerpt(&self.stdout))
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
