//! The gdb stub (`kiln run --gdb ADDR`): Debian's `gdb` in batch mode against guests built from source with DWARF,
//! each command's output checked (the function a breakpoint stops in, a variable's value, the threads, a fault as a
//! signal) along with the program's own output and exit code. Skipped, saying so, where gdb is not installed
//! (`scripts/setup.sh` installs it).

#[allow(dead_code)]
mod harness;

use harness::{guests, kiln, kvm};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long kiln may take to listen, and gdb and the program to finish.
const DEADLINE: Duration = Duration::from_secs(90);

fn gdb_available() -> bool {
    let found = Command::new("gdb").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        eprintln!("skipped: gdb is not installed (scripts/setup.sh installs it)");
        return false;
    }
    true
}

/// A free TCP port on the host's loopback (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one debugging session printed.
struct Session {
    gdb: String,
    kiln_stdout: String,
    kiln_stderr: String,
    kiln_code: Option<i32>,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- gdb:\n{}\n--- kiln exit {:?}, stdout:\n{}\n--- kiln stderr:\n{}",
            self.gdb, self.kiln_code, self.kiln_stdout, self.kiln_stderr
        )
    }
}

/// Runs `program` under `kiln run --gdb` and `gdb -batch` with `commands` against it.
fn debug(program: &Path, commands: &[&str]) -> Session {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = kiln().args(["run", "--gdb", &addr]).arg(program).into_command().spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (listening_tx, listening) = mpsc::channel();
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("waiting for gdb") {
                let _ = listening_tx.send(());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    let stdout_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });
    let started = Instant::now();
    let gdb = if listening.recv_timeout(DEADLINE).is_ok() {
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex", "set pagination off", "-ex", &format!("target remote {addr}")]);
        for c in commands {
            gdb.args(["-ex", c]);
        }
        let gdb = gdb.arg(program).stdin(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&gdb.stdout).into_owned() + &String::from_utf8_lossy(&gdb.stderr)
    } else {
        "(kiln never listened)".to_string()
    };
    let kiln_code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Session { gdb, kiln_stdout: stdout_reader.join().unwrap(), kiln_stderr: stderr_reader.join().unwrap(), kiln_code }
}

#[test]
fn gdb_breaks_in_a_function_and_shows_its_stack_variables_and_threads() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let s = debug(
        &guests::c("debuggee"),
        &[
            "break compute",
            "continue",
            "bt",
            "print depth",
            "set var shared_counter = 100",
            "info threads",
            "thread apply all bt",
            "thread 1",
            "next",
            "next",
            "print local",
            "stepi",
            "info registers rip",
            "continue",
        ],
    );
    let g = &s.gdb;
    assert!(g.contains("Breakpoint 1, compute (depth=6) at"), "no stop in compute\n{s}");
    assert!(g.contains("debuggee.c:13"), "the breakpoint is not after compute's prologue\n{s}");
    assert!(g.lines().any(|l| l.starts_with("#1 ") && l.contains(" in main () at ")), "bt lacks main\n{s}");
    assert!(g.contains("$1 = 6"), "print depth\n{s}");
    // Both threads: the main one in the program's code, the worker blocked in its read, shown in libc's syscall code
    // (not in Kiln's stub area).
    assert!(g.contains("Thread 1.1 (debuggee, running on vCPU 0)"), "info threads: the main thread\n{s}");
    assert!(g.contains("Thread 1.2 (debuggee, blocked)"), "info threads: the worker\n{s}");
    let worker_bt = g.split("Thread 2 (Thread 1.2").nth(1).unwrap_or_default();
    let worker_top = worker_bt.lines().find(|l| l.starts_with("#0")).unwrap_or_default();
    assert!(!worker_top.contains("?? ()"), "the blocked thread's frame is not in the program's code\n{s}");
    assert!(g.contains("$2 = 42"), "print local after two nexts\n{s}");
    assert!(g.contains("rip            0x"), "info registers\n{s}");
    assert!(g.contains("exited with code 03"), "gdb did not see the exit code\n{s}");
    assert_eq!(s.kiln_stdout, "result 43 counter 142\n", "the program's output (the counter gdb set, plus 42)\n{s}");
    assert_eq!(s.kiln_code, Some(3), "{s}");
}

#[test]
fn gdb_sees_a_fault_as_a_signal_and_the_program_ends_of_it() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let s = debug(&guests::c("backtrace"), &["continue", "bt", "print line[0]", "continue"]);
    let g = &s.gdb;
    assert!(g.contains("received signal SIGSEGV"), "the fault was not reported as SIGSEGV\n{s}");
    for function in ["parse_header", "handle_request", "main"] {
        assert!(g.lines().any(|l| l.starts_with('#') && l.contains(function)), "bt lacks {function}\n{s}");
    }
    assert!(g.contains("$1 = 80 'P'"), "print line[0]\n{s}");
    assert!(g.contains("terminated with signal SIGSEGV"), "gdb did not see the program die\n{s}");
    assert_eq!(s.kiln_code, Some(139), "{s}");
}

#[test]
fn gdb_single_steps_and_continues_past_a_breakpoint_it_keeps() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // The breakpoint stays inserted: continuing from it steps over it first (gdb takes it out, steps, puts it back).
    let s = debug(
        &guests::c("debuggee"),
        &["break compute", "continue", "stepi", "stepi", "info registers rip", "continue"],
    );
    let g = &s.gdb;
    let rips: Vec<&str> = g.lines().filter(|l| l.starts_with("rip ")).collect();
    assert_eq!(rips.len(), 1, "{s}");
    assert!(rips[0].contains("<compute+"), "stepi left compute\n{s}");
    assert!(g.contains("exited with code 03"), "{s}");
    assert_eq!(s.kiln_stdout, "result 43 counter 42\n", "{s}");
    assert_eq!(s.kiln_code, Some(3), "{s}");
}

#[test]
fn a_gdb_address_that_cannot_be_bound_is_one_line_and_exit_125() {
    if !kvm::available() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = kiln().args(["run", "--gdb", &addr]).arg(guests::c("hello")).run();
    out.assert_code(125);
    assert!(out.stderr_text().contains(&format!("--gdb {addr}: cannot listen there")), "{out}");
}
