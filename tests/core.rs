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
