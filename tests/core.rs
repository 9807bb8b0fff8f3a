//! Core files (`kiln run --core FILE`, and a detached instance's in its folder): a crashing program's core opened by Debian's `gdb` in batch mode, which must
//! show the faulting frame, every thread and a variable's value, and for a dynamically linked program find its
//! shared objects. Skipped, saying so, where gdb is not installed (`scripts/setup.sh` installs it).

#[allow(dead_code)]
mod harness;

use harness::store::kiln_in;
use harness::{guests, kiln, kvm};
use std::path::Path;
use std::process::{Command, Stdio};

fn gdb_available() -> bool {
    let found = Command::new("gdb").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        eprintln!("skipped: gdb is not installed (scripts/setup.sh installs it)");
        return false;
    }
    true
}

/// gdb's output for `commands` on `program` and its `core`.
fn gdb(program: &Path, core: &Path, commands: &[&str]) -> String {
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex", "set pagination off"]);
    for c in commands {
        gdb.args(["-ex", c]);
    }
    let out = gdb.arg(program).arg(core).output().expect("run gdb");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("core-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn gdb_opens_the_core_of_a_crashed_program_with_its_threads_and_memory() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let dir = scratch("threads");
    let core = dir.join("core");
    let program = guests::c("corethreads");
    let run = kiln().args(["run", "--core"]).arg(&core).arg(&program).run();
    run.assert_code(139).assert_stdout("corethreads: crashing\n");
    run.assert_stderr_contains(&format!("kiln: core dumped to {}", core.display()));
    let out = gdb(
        &program,
        &core,
        &["bt", "info threads", "print total", "print/x $xmm7.v2_int64[0]", "print/x (int)$mxcsr & 0xffc0"],
    );
    let source = std::fs::read_to_string(guests::repo_root().join("tests/guests/c/corethreads.c")).unwrap();
    let line = 1 + source.lines().position(|l| l.contains("/* the crash */")).unwrap();
    assert!(out.contains("Program terminated with signal SIGSEGV"), "{out}");
    assert!(out.contains("#0  0x") && out.contains(" in record_total ("), "the faulting frame\n{out}");
    assert!(out.contains(&format!("corethreads.c:{line}")), "the faulting line\n{out}");
    assert!(out.contains("in main ("), "its caller\n{out}");
    // `info threads`' rows: `* 1    LWP 1    0x... in record_total ...`.
    let row =
        |l: &&str| l.trim_start_matches(['*', ' ']).starts_with(|c: char| c.is_ascii_digit()) && l.contains(" LWP ");
    let threads = out.lines().filter(row).count();
    assert_eq!(threads, 4, "the main thread and three waiting on the barrier\n{out}");
    assert!(out.contains("$1 = 4242"), "a local variable's value from the core's memory\n{out}");
    assert!(out.contains("$2 = 0x1122334455667788"), "xmm7 from the crashed thread's FP note\n{out}");
    assert!(out.contains("$3 = 0x1f80"), "MXCSR from the crashed thread's FP note\n{out}");
    // Sparse: the guest's untouched memory costs no disk.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&core).unwrap();
    assert!(meta.blocks() * 512 < meta.len() / 4, "{} bytes on disk of {}", meta.blocks() * 512, meta.len());

    // A dynamically linked program: gdb finds libc.so.6 through the loader's list in the core's memory.
    let core = dir.join("core-dynamic");
    let program = guests::c("qsortcrash");
    kiln().args(["run", "--core"]).arg(&core).arg(&program).run().assert_code(139);
    let out = gdb(&program, &core, &["bt", "info sharedlibrary"]);
    assert!(out.contains(" in compare_orders (") && out.contains(" in sort_orders ("), "{out}");
    assert!(out.contains("qsort"), "the frames in libc are named\n{out}");
    assert!(out.contains("libc.so.6"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_crashed_instance_leaves_its_core_in_its_folder_with_seccomp_on() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let home = scratch("instance").join("home");
    let program = guests::c("corethreads");
    kiln_in(&home).args(["run", "-d", "--name", "crashy"]).arg(&program).run().assert_code(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let inspected = loop {
        let out = kiln_in(&home).args(["inspect", "crashy"]).run().stdout_text();
        if out.contains("\"exited\"") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let record: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let record = &record[0];
    assert_eq!(record["exit_code"], 139, "{inspected}");
    let core = Path::new(record["core"].as_str().unwrap_or_else(|| panic!("no core in {inspected}"))).to_path_buf();
    assert!(core.starts_with(&home) && core.ends_with("core"), "{}", core.display());
    let log = kiln_in(&home).args(["logs", "crashy"]).run().stdout_text();
    assert!(log.contains(&format!("kiln: core dumped to {}", core.display())), "{log}");
    assert!(!log.contains("seccomp"), "the instance ran under its seccomp lists\n{log}");
    let out = gdb(&program, &core, &["bt", "info threads"]);
    assert!(out.contains("Program terminated with signal SIGSEGV"), "{out}");
    assert!(out.contains(" in record_total ("), "the faulting frame\n{out}");
    kiln_in(&home).args(["rm", "crashy"]).run().assert_code(0);
    assert!(!core.exists(), "the core goes with the instance");
}

#[test]
fn a_core_file_in_a_missing_directory_is_refused_before_boot() {
    let run = kiln().args(["run", "--core", "/nonexistent-kiln-dir/core", "/bin/true"]).run();
    run.assert_code(2);
    run.assert_stderr_contains("is not a file name in a directory that exists");
}

/// The instance's record once it has exited (or at the deadline).
fn exited_record(home: &Path, name: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = kiln_in(home).args(["inspect", name]).run().stdout_text();
        let record: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if record[0]["state"] == "exited" || std::time::Instant::now() > deadline {
            return record[0].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until `pid` has a thread named `name` (the VM's threads are started, its signal forwarding with them).
fn wait_thread(pid: u32, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        if tasks.into_iter().any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("process {pid} has no thread {name}");
}

/// gdb finds in a core the crash, its frame and all four threads of corethreads.
fn assert_corethreads_core(program: &Path, core: &Path) {
    let out = gdb(program, core, &["bt", "info threads", "print total"]);
    assert!(out.contains("Program terminated with signal SIGSEGV"), "{out}");
    assert!(out.contains(" in record_total (") && out.contains("in main ("), "the faulting frames\n{out}");
    let row =
        |l: &&str| l.trim_start_matches(['*', ' ']).starts_with(|c: char| c.is_ascii_digit()) && l.contains(" LWP ");
    assert_eq!(out.lines().filter(row).count(), 4, "the main thread and three waiting on the barrier\n{out}");
    assert!(out.contains("$1 = 4242"), "{out}");
}

/// A VM restored from a snapshot gets a core file on a crash as a booted one does: a restored detached instance in its
/// own folder, `kiln restore --core FILE` at FILE, with the seccomp lists on.
#[test]
fn a_restored_vm_that_crashes_leaves_its_core() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    let dir = scratch("restored");
    let home = dir.join("home");
    let program = guests::c("corethreads");
    kiln_in(&home).args(["run", "-d", "--name", "c1"]).arg(&program).arg("wait").run().assert_code(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !kiln_in(&home).args(["logs", "c1"]).run().stdout_text().contains("corethreads: waiting") {
        assert!(std::time::Instant::now() < deadline, "corethreads did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let snap = dir.join("c.snap");
    kiln_in(&home).args(["snapshot", "c1"]).arg(&snap).run().assert_code(0);

    kiln_in(&home).args(["restore", "-d", "--name", "c2"]).arg(&snap).run().assert_code(0);
    kiln_in(&home).args(["stop", "c2"]).run();
    let record = exited_record(&home, "c2");
    assert_eq!(record["exit_code"], 139, "{record}");
    let core = Path::new(record["core"].as_str().unwrap_or_else(|| panic!("no core in {record}"))).to_path_buf();
    assert!(core.starts_with(home.join("instances")) && core.ends_with("core"), "{}", core.display());
    let log = kiln_in(&home).args(["logs", "c2"]).run().stdout_text();
    assert!(log.contains(&format!("kiln: core dumped to {}", core.display())), "{log}");
    assert!(!log.contains("seccomp"), "{log}");
    assert_corethreads_core(&program, &core);

    // In the foreground, with --core.
    let file = dir.join("restored.core");
    let child = kiln_in(&home).args(["restore", "--core"]).arg(&file).arg(&snap).into_command().spawn().unwrap();
    wait_thread(child.id(), "host-signals");
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(139), "{stderr}");
    assert!(stderr.contains(&format!("kiln: core dumped to {}", file.display())), "{stderr}");
    assert!(!stderr.contains("seccomp"), "{stderr}");
    assert_corethreads_core(&program, &file);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A jailed VM's core file: written by the jailed process into a file opened before the jail closed, named by the
/// jail's parent outside it (`kiln run --jail --core FILE`, and a jailed instance's in its folder).
#[test]
fn a_jailed_vm_that_crashes_leaves_its_core() {
    if !kvm::available() || !gdb_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        kvm::skip("--jail needs root");
        return;
    }
    let dir = scratch("jailed");
    let program = guests::c("corethreads");
    let file = dir.join("jailed.core");
    let run = kiln().args(["run", "--jail", "--core"]).arg(&file).arg(&program).run();
    run.assert_code(139);
    run.assert_stderr_contains(&format!("kiln: core dumped to {}", file.display()));
    assert!(!run.stderr_text().contains("seccomp"), "{run}");
    assert_corethreads_core(&program, &file);

    let home = dir.join("home");
    kiln_in(&home).args(["run", "-d", "--jail", "--name", "j"]).arg(&program).run().assert_code(0);
    let record = exited_record(&home, "j");
    assert_eq!(record["exit_code"], 139, "{record}");
    let core = Path::new(record["core"].as_str().unwrap_or_else(|| panic!("no core in {record}"))).to_path_buf();
    assert_corethreads_core(&program, &core);
    std::fs::remove_dir_all(&dir).unwrap();
}
