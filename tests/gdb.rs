//! The gdb stub (`kiln run --gdb ADDR`): Debian's `gdb` in batch mode against guests built from source with DWARF,
//! each command's output checked (the function a breakpoint stops in, a variable's value, the threads, a fault as a
//! signal) along with the program's own output and exit code; and `kiln debug` attaching gdb to a running instance. Skipped, saying so, where gdb is not installed
//! (`scripts/setup.sh` installs it).

#[allow(dead_code)]
mod harness;

use harness::store::{kiln_in, scratch};
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
fn gdb_watches_a_variable_with_a_software_watchpoint() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // Hardware watchpoints do not fire on kvm_pvm (docs/debugging.md): gdb single-steps and compares instead.
    let s = debug(
        &guests::c("debuggee"),
        &[
            "break compute",
            "continue",
            "set can-use-hw-watchpoints 0",
            "watch shared_counter",
            "continue",
            "bt",
            "delete",
            "continue",
        ],
    );
    let g = &s.gdb;
    assert!(g.contains("Watchpoint 2: shared_counter"), "{s}");
    assert!(g.contains("Old value = 0\nNew value = 42"), "the write was not caught\n{s}");
    assert!(g.lines().any(|l| l.starts_with("#0  compute (depth=6) at ")), "stopped outside compute\n{s}");
    assert!(g.contains("exited with code 03"), "{s}");
    assert_eq!(s.kiln_stdout, "result 43 counter 42\n", "{s}");
}

#[test]
fn gdb_reads_and_writes_the_sse_and_x87_registers_of_a_thread_on_a_vcpu() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // The write goes to the vCPU when the thread resumes (stepi), and is read back from it at the next stop.
    let s = debug(
        &guests::c("debuggee"),
        &[
            "break compute",
            "continue",
            "info registers xmm0",
            "print $fctrl",
            "set var $xmm1.v4_int32 = {1, 2, 3, 4}",
            "stepi",
            "print $xmm1.v4_int32",
            "print/x (int)$mxcsr & 0xffc0",
            "set var $mxcsr = 0x1f00",
            "stepi",
            "print/x (int)$mxcsr & 0xffc0",
            "set var $mxcsr = 0x1f80",
            "continue",
        ],
    );
    let g = &s.gdb;
    assert!(g.contains("xmm0           {v8_bfloat16 = "), "info registers xmm0\n{s}");
    assert!(g.contains("$1 = 895"), "the x87 control word (0x37f)\n{s}");
    assert!(g.contains("$2 = {1, 2, 3, 4}"), "xmm1 did not keep what gdb wrote\n{s}");
    // MXCSR as the program has it (every exception masked), not KVM_GET_FPU's 0 on kvm_pvm; a write takes.
    assert!(g.contains("$3 = 0x1f80"), "MXCSR\n{s}");
    assert!(g.contains("$4 = 0x1f00"), "MXCSR did not keep what gdb wrote\n{s}");
    assert!(g.contains("exited with code 03"), "{s}");
}

#[test]
fn gdb_names_the_frames_in_a_dynamic_programs_libc() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // A PIE linked against glibc: gdb places it and finds the loader's list of objects through the auxiliary vector.
    let s = debug(&guests::c("qsortcrash"), &["break compare_orders", "continue", "bt", "info sharedlibrary", "kill"]);
    let g = &s.gdb;
    assert!(g.contains("Breakpoint 1, compare_orders ("), "{s}");
    assert!(g.lines().any(|l| l.starts_with('#') && l.contains("qsort")), "bt does not name qsort in libc\n{s}");
    assert!(g.lines().any(|l| l.starts_with('#') && l.contains(" in main ()")), "bt lacks main\n{s}");
    assert!(g.lines().any(|l| l.contains("Yes") && l.ends_with("/libc.so.6")), "info sharedlibrary\n{s}");
    assert!(s.kiln_stderr.contains("gdb killed the program"), "{s}");
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

/// Runs `gdb -batch` with `commands` against a stub on `addr`; what it printed.
fn gdb_batch(program: &Path, addr: &str, commands: &[&str]) -> String {
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex", "set pagination off", "-ex", &format!("target remote {addr}")]);
    for c in commands {
        gdb.args(["-ex", c]);
    }
    let gdb = gdb.arg(program).stdin(Stdio::null()).output().unwrap();
    String::from_utf8_lossy(&gdb.stdout).into_owned() + &String::from_utf8_lossy(&gdb.stderr)
}

/// `kiln debug INSTANCE` in `home` with gdb's `commands`: (gdb's output, kiln debug's exit code and stderr).
fn attach(home: &Path, instance: &str, program: &Path, commands: &[&str]) -> (String, Option<i32>, String) {
    let mut child = kiln_in(home).args(["debug", instance]).into_command().spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("waiting for gdb on") {
        said += &std::mem::take(&mut line);
    }
    said += &line;
    let addr = line.split("waiting for gdb on ").nth(1).and_then(|rest| rest.split_whitespace().next());
    let gdb = match addr {
        Some(addr) => gdb_batch(program, addr, commands),
        None => "(kiln debug never listened)".to_string(),
    };
    let _ = stderr.read_to_string(&mut said);
    let code = child.wait().unwrap().code();
    (gdb, code, said)
}

/// Polls `kiln logs` until it holds `text`.
fn wait_for_log(home: &Path, name: &str, text: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = kiln_in(home).args(["logs", name]).run().stdout_text();
        if log.contains(text) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the test's instances however it ends.
struct Instances(std::path::PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        kiln_in(&self.0).args(["rm", "-f", "counter"]).run();
    }
}

#[test]
fn kiln_debug_attaches_gdb_to_a_running_instance_twice_and_the_program_runs_on() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let home = scratch("gdb", "attach").join("home");
    let _instances = Instances(home.clone());
    let counter = guests::c("counter");
    kiln_in(&home).args(["run", "-d", "--name", "counter"]).arg(&counter).run().assert_code(0);
    let log = wait_for_log(&home, "counter", "counter: started\n");
    assert_eq!(log, "counter: started\n");

    // The first debugger stops it wherever it is, breaks in tick, looks around and leaves: the program runs on.
    let first = ["break tick", "continue", "bt", "print n", "print count", "info threads", "detach"];
    let (g, code, said) = attach(&home, "counter", &counter, &first);
    let session = format!("--- gdb:\n{g}\n--- kiln debug (exit {code:?}):\n{said}");
    assert_eq!(code, Some(0), "{session}");
    assert!(said.contains("kiln: gdb attached to instance counter"), "{session}");
    assert!(g.contains("Breakpoint 1, tick (n="), "no stop in tick\n{session}");
    assert!(g.lines().any(|l| l.starts_with("#1 ") && l.contains(" in main () at ")), "bt lacks main\n{session}");
    let n: i64 = g.split("$1 = ").nth(1).and_then(|r| r.lines().next()?.trim().parse().ok()).unwrap_or(0);
    assert!(n > 1, "print n: the program had counted before gdb came\n{session}");
    assert!(g.contains(&format!("$2 = {}", n - 1)), "print count: tick has not stored n yet\n{session}");
    assert!(g.contains("Thread 1.1 (counter, running on vCPU 0)"), "info threads\n{session}");
    assert!(g.contains("[Inferior 1 (process 1) detached]"), "{session}");

    // The program counts on without a debugger; a second one attaches, makes it stop counting, and leaves.
    std::thread::sleep(Duration::from_millis(100));
    let second = ["print count", "set var done = 1", "detach"];
    let (g, code, said) = attach(&home, "counter", &counter, &second);
    let session = format!("--- gdb:\n{g}\n--- kiln debug (exit {code:?}):\n{said}");
    assert_eq!(code, Some(0), "{session}");
    let later: i64 = g.split("$1 = ").nth(1).and_then(|r| r.lines().next()?.trim().parse().ok()).unwrap_or(0);
    assert!(later > n, "the program did not count on after the first detach ({n} then {later})\n{session}");

    let log = wait_for_log(&home, "counter", "stopped by gdb");
    assert!(log.starts_with("counter: started\ncounter: stopped by gdb after "), "{log}");
    let deadline = Instant::now() + DEADLINE;
    let record = loop {
        let inspected = kiln_in(&home).args(["inspect", "counter"]).run().stdout_text();
        if inspected.contains("\"exited\"") || Instant::now() > deadline {
            break inspected;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(record.contains("\"exit_code\": 0"), "the program did not exit normally: {record}");

    // Nothing to attach to any more: one line.
    let out = kiln_in(&home).args(["debug", "counter"]).run();
    assert_eq!(out.assert_kiln_error(), "kiln: instance counter is not running");
}

#[test]
fn gdb_reads_and_writes_the_avx_registers_of_a_thread_on_a_vcpu() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // ymm0 as the program loaded it, its upper half from the vCPU's XSAVE state (gdb's AVX feature in the target
    // description); a write of its top quadword reaches the vCPU when the thread resumes.
    let s = debug(
        &guests::c("ymmload"),
        &[
            "break ymm_loaded",
            "continue",
            "info registers ymm0",
            "print/x $ymm0.v4_int64",
            "print/x $ymm0h",
            "set var $ymm0.v4_int64[3] = 0x5555aaaa5555aaaa",
            "continue",
        ],
    );
    if s.kiln_stdout.contains("no AVX") {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    let g = &s.gdb;
    assert!(g.contains("ymm0           {v16_bfloat16 = "), "info registers ymm0\n{s}");
    assert!(
        g.contains("$1 = {0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444}"),
        "ymm0 as the program loaded it\n{s}"
    );
    assert!(g.contains("$2 = 0x44444444444444443333333333333333"), "ymm0's upper half\n{s}");
    assert_eq!(
        s.kiln_stdout, "ymmload: 1111111111111111 2222222222222222 3333333333333333 5555aaaa5555aaaa\n",
        "ymm0 did not keep what gdb wrote\n{s}"
    );
}
