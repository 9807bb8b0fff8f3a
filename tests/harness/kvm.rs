//! Whether tests that boot a VM can run here, and a ledger of which did.
//!
//! A KVM test starts with `if !kvm::available() { return; }`. Where `/dev/kvm` cannot be opened read-write, that prints
//! `skipped: /dev/kvm not available (...)` straight to the terminal (past the test harness's output capture) and the
//! test passes without booting anything; `KILN_TEST_REQUIRE_KVM=1` turns a skip into a failure instead. Every KVM test
//! also leaves a file `<test name>.ran` or `<test name>.skipped` in the ledger directory (`$KILN_TEST_LEDGER`, else
//! `<target>/tmp/kvm-ledger`), which `.ci/run` counts. `KILN_TEST_PRETEND_NO_KVM=1` exercises the skip path on a
//! machine that has KVM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// `Ok` when `/dev/kvm` opens read-write, else why not.
fn probe() -> &'static Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        if std::env::var("KILN_TEST_PRETEND_NO_KVM").is_ok_and(|v| v == "1") {
            return Err("KILN_TEST_PRETEND_NO_KVM=1".into());
        }
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "/dev/kvm does not exist: no KVM on this host".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "no permission to open /dev/kvm read-write: add this user to the `kvm` group".to_string()
            }
            _ => format!("cannot open /dev/kvm: {e}"),
        })
    })
}

/// True when `/dev/kvm` opens read-write; unlike [`available`], records and prints nothing.
pub fn usable() -> bool {
    probe().is_ok()
}

/// True when this test can boot VMs. Otherwise reports the skip (or fails under `KILN_TEST_REQUIRE_KVM=1`).
pub fn available() -> bool {
    let test = std::thread::current().name().unwrap_or("unnamed").replace("::", "-");
    match probe() {
        Ok(()) => {
            record(&test, "ran");
            true
        }
        Err(why) => skip(&format!("/dev/kvm not available ({why})")),
    }
}

/// Reports that this test cannot run here and why (or fails under `KILN_TEST_REQUIRE_KVM=1`); false.
pub fn skip(why: &str) -> bool {
    let test = std::thread::current().name().unwrap_or("unnamed").replace("::", "-");
    if std::env::var("KILN_TEST_REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!("KILN_TEST_REQUIRE_KVM=1 but {why}");
    }
    record(&test, "skipped");
    // Written to the process's stderr directly, so `cargo test` shows it even though it captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
    false
}

fn record(test: &str, what: &str) {
    let dir = std::env::var_os("KILN_TEST_LEDGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvm-ledger"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::remove_file(dir.join(format!("{test}.ran")));
    let _ = std::fs::remove_file(dir.join(format!("{test}.skipped")));
    let _ = std::fs::write(dir.join(format!("{test}.{what}")), b"");
}
