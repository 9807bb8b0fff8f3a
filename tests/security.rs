//! The VMM's defences (docs/security.md): every VMM thread under its seccomp allow-list, so that a forbidden call
//! stops the VM with one line naming the thread and the call and a defined exit code; `--seccomp=off` for debugging;
//! `--jail`, a real boot inside new namespaces, an empty root and an unprivileged uid, with a volume and a tap, and
//! detached (`-d --jail`).

#[allow(dead_code)]
mod harness;

use harness::netns::{NetNs, TAP};
use harness::{guests, kiln, kvm};
use std::path::PathBuf;

/// `kiln_seccomp::FORBIDDEN_EXIT`: 128 + SIGSYS.
const FORBIDDEN_EXIT: i32 = 159;

/// Whether the binary under test has the test hook (`KILN_SECCOMP_TEST_FORBIDDEN`): debug builds only.
fn has_test_hook() -> bool {
    if std::env::var_os("KILN_TEST_BIN").is_some() {
        kvm::skip("seccomp's test hook is in debug builds only, and KILN_TEST_BIN may be a release build");
        return false;
    }
    true
}

fn hello() -> PathBuf {
    guests::c("hello")
}

#[test]
fn a_forbidden_syscall_on_any_vmm_thread_stops_the_vm_with_a_line() {
    if !kvm::available() || !has_test_hook() {
        return;
    }
    // The user-mode network's relay starts with the VM when seccomp is on; `-p` makes sure of it.
    for (kind, thread) in
        [("vcpu", "vcpu0"), ("main", "main"), ("host-signals", "host-signals"), ("usernet", "usernet")]
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let run = kiln()
            .env("KILN_SECCOMP_TEST_FORBIDDEN", kind)
            .args(["run", "-p", &format!("127.0.0.1:{port}:80")])
            .arg(hello())
            .run();
        run.assert_code(FORBIDDEN_EXIT);
        run.assert_stderr_contains(&format!("kiln: seccomp: thread {thread} made forbidden syscall getppid (110)"));
    }
}

#[test]
fn a_forbidden_syscall_on_a_later_vcpu_names_it() {
    if !kvm::available() || !has_test_hook() {
        return;
    }
    let run = kiln().env("KILN_SECCOMP_TEST_FORBIDDEN", "vcpu").args(["run", "--cpus", "3"]).arg(hello()).run();
    run.assert_code(FORBIDDEN_EXIT);
    let line = run.stderr_text();
    assert!(
        line.contains("kiln: seccomp: thread vcpu") && line.contains("made forbidden syscall getppid (110)"),
        "{run}"
    );
}

#[test]
fn seccomp_off_warns_and_lets_the_call_through() {
    if !kvm::available() || !has_test_hook() {
        return;
    }
    let run =
        kiln().env("KILN_SECCOMP_TEST_FORBIDDEN", "vcpu").args(["run", "--seccomp=off"]).arg(hello()).args(["3"]).run();
    run.assert_code(3);
    run.assert_stderr_contains("kiln: --seccomp=off: the VMM's threads run without their syscall allow-lists");
}

/// Ctrl-Z then `fg` (SIGSTOP, SIGCONT) on `kiln run`: every VMM thread waiting with a timeout (parked vCPUs, the
/// host-signal forwarder's poll, the relay's epoll) is resumed by the kernel through `restart_syscall`, which the
/// allow-lists did not have, so the VMM died of SIGSYS. The VM now counts on from where it stopped.
#[test]
fn a_stopped_and_continued_vm_runs_on() {
    use std::io::{BufRead, BufReader};
    if !kvm::available() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = kiln()
        .args(["run", "--cpus", "2", "-p", &format!("127.0.0.1:{port}:80")])
        .arg(guests::c("ticker"))
        .into_command()
        .spawn()
        .expect("start kiln");
    let pid = child.id() as i32;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut tick = || {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a tick");
        line.trim().strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("{line:?}"))
    };
    tick();
    for _ in 0..3 {
        // SAFETY: kill(2) on the child's pid, which is alive (it has not been waited for).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let before = tick();
        // Ticks come every 20 ms: a few more show the VM runs on.
        let after = (0..5).map(|_| tick()).last().unwrap();
        assert_eq!(after, before + 5, "the ticks after a stop");
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr is piped"), &mut stderr).unwrap();
    child.wait().unwrap();
    assert!(!stderr.contains("seccomp"), "{stderr}");
}

#[test]
fn a_bad_seccomp_mode_is_refused() {
    let run = kiln().args(["run", "--seccomp=maybe"]).arg(hello()).run();
    assert_eq!(run.code, Some(2), "{run}");
    let run = kiln().env("KILN_SECCOMP", "maybe").args(["run"]).arg(hello()).run();
    run.assert_kiln_error();
}

/// Whether `--jail` can run here (it needs root), saying why not.
fn jail_possible() -> bool {
    if !kvm::available() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        kvm::skip("--jail needs root");
        return false;
    }
    true
}

#[test]
fn a_jailed_hello_prints_and_exits_with_its_code() {
    if !jail_possible() {
        return;
    }
    let binary = hello();
    let run = kiln().args(["run", "--jail"]).arg(&binary).args(["7"]).run();
    run.assert_code(7).assert_stderr("hello: this line goes to stderr\n");
    assert!(run.stdout_text().starts_with("hello from kiln\nargc=2\n"), "{run}");
    // The same through the user-mode network (the host's network namespace kept) and with a uid given.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:80");
    let run = kiln().args(["run", "--jail", "--jail-uid", "4000123:4000124", "-p", &publish]).arg(&binary).run();
    run.assert_code(0);
}

/// The jailed process while its program waits: its uid, its root, its namespaces and limits, seen from the host.
#[test]
fn a_jailed_vmm_runs_as_its_own_uid_in_an_empty_root_and_new_namespaces() {
    use std::io::{BufRead, BufReader};
    if !jail_possible() {
        return;
    }
    let mut command = kiln()
        .args(["run", "--jail", "--net", "none", "--cpus", "2"])
        .arg(guests::c("waiter"))
        .arg("graceful")
        .into_command();
    let mut parent = command.spawn().expect("start kiln");
    let mut stdout = BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "waiter: ready\n");
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.id())).unwrap();
    let child: u32 = children.split_whitespace().next().expect("the jailed process").parse().unwrap();
    // The thread that started the VM confines itself once every thread of the VM is started: soon after the
    // program's first line, on a loaded machine perhaps just after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
        if status.contains("\nSeccomp:\t2\n") || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let id = 2_000_000_000 + child;
    assert!(status.contains(&format!("\nUid:\t{id}\t{id}\t{id}\t{id}\n")), "{status}");
    assert!(status.contains(&format!("\nGid:\t{id}\t{id}\t{id}\t{id}\n")), "{status}");
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    assert!(status.contains("\nSeccomp:\t2\n"), "the main thread has no seccomp filter:\n{status}");
    assert!(
        status.contains("\nNSpid:\t") && status.contains(&format!("{child}\t1\n")),
        "not pid 1 of its own:\n{status}"
    );
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{child}/root")).unwrap().collect();
    assert!(root.is_empty(), "the jail's root is not empty: {root:?}");
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{child}/ns/{ns}")).unwrap();
        assert_ne!(mine, its, "the jailed process shares the {ns} namespace");
    }
    // With --net none, the empty network namespace such jails share, made by the first (kiln_jail::netns).
    use std::os::unix::fs::MetadataExt;
    let shared = std::fs::metadata("/run/kiln/netns/none").expect("the shared network namespace was not made");
    let its = std::fs::read_link(format!("/proc/{child}/ns/net")).unwrap();
    assert_eq!(its.to_str(), Some(format!("net:[{}]", shared.ino()).as_str()), "not in the shared network namespace");
    let limits = std::fs::read_to_string(format!("/proc/{child}/limits")).unwrap();
    assert!(limits.lines().any(|l| l.starts_with("Max processes") && l.contains(" 10 ")), "{limits}");
    // A stop signal to the parent reaches the program, which ends as it likes.
    // SAFETY: kill sends SIGTERM to the kiln this test started.
    unsafe { libc::kill(parent.id() as i32, libc::SIGTERM) };
    let status = parent.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("stopped by signal 15"), "{rest}");
}

#[test]
fn a_jailed_vm_writes_a_volume_the_next_run_reads() {
    if !jail_possible() {
        return;
    }
    let home = harness::store::scratch("security-homes", "jailed-volume");
    let kiln_in = harness::store::kiln_in;
    kiln_in(&home).args(["volume", "create", "data", "--size", "64M"]).run().assert_code(0);
    let guest = guests::c("volume");
    let write = kiln_in(&home).args(["run", "--jail", "-v", "data:/data"]).arg(&guest).args(["write", "/data"]).run();
    write.assert_code(0);
    assert!(write.stdout_text().ends_with("0 failures\n"), "{write}");
    let read = kiln_in(&home).args(["run", "-v", "data:/mnt"]).arg(&guest).args(["read", "/mnt"]).run();
    read.assert_code(0);
    assert!(read.stdout_text().ends_with("0 failures\n"), "{read}");
}

#[test]
fn a_jailed_vm_reaches_a_host_server_through_its_tap() {
    use std::io::{Read, Write};
    if !jail_possible() {
        return;
    }
    let Some(ns) = NetNs::with_tap("10.0.9.1/24") else { return };
    let listener = ns.enter(|| std::net::TcpListener::bind("10.0.9.1:9000").expect("bind in the namespace"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).unwrap();
        }
    });
    let tap = format!("tap:{TAP}");
    kiln()
        .netns(&ns)
        .args(["run", "--jail", "--net", &tap, "--ip", "10.0.9.2/24"])
        .arg(guests::c("netpeer"))
        .args(["fetch", "10.0.9.1", "9000", "1000000"])
        .run()
        .assert_code(0)
        .assert_stdout("fetched 1000000 of 1000000 bytes, 0 wrong\n");
    server.join().unwrap();
}

/// The instance records `kiln ps -a -o json` shows for `home`.
fn instances(home: &std::path::Path) -> Vec<serde_json::Value> {
    let run = harness::store::kiln_in(home).args(["ps", "-a", "-o", "json"]).run();
    match serde_json::from_slice(&run.stdout) {
        Ok(serde_json::Value::Array(all)) => all,
        _ => panic!("ps -o json printed no array\n{run}"),
    }
}

/// Waits (60 s at most) for the record named `name` to satisfy `done`, and returns it.
fn wait_for_record(home: &std::path::Path, name: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all = instances(home);
        let record = all.iter().find(|i| i["name"] == name).cloned();
        match record {
            Some(r) if done(&r) => return r,
            _ if std::time::Instant::now() > deadline => panic!("instance {name} never got there: {all:?}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// `kiln run -d --jail`: the instance's process stays outside as the jail's parent (recorded with its pid, signalled
/// by `kiln stop`), its VM runs in the jailed child, and the parent records how the program ended, since the child
/// cannot reach the store from its empty root.
#[test]
fn a_detached_instance_runs_jailed_and_its_end_is_recorded() {
    if !jail_possible() {
        return;
    }
    let home = harness::store::scratch("security-homes", "jailed-detached");
    let kiln_in = harness::store::kiln_in;
    let waiter = guests::c("waiter");
    let run = kiln_in(&home).args(["run", "-d", "--jail", "--net", "none", "--name", "w"]).arg(&waiter).arg("graceful");
    run.run().assert_code(0);
    let record = wait_for_record(&home, "w", |r| r["state"] == "running");
    let parent = record["pid"].as_u64().expect("a pid") as u32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !kiln_in(&home).args(["logs", "w"]).run().stdout_text().contains("waiter: ready\n") {
        assert!(std::time::Instant::now() < deadline, "the waiter never said it was ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap();
    let child: u32 = children.split_whitespace().next().expect("the jailed process").parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let id = 2_000_000_000 + child;
    assert!(status.contains(&format!("\nUid:\t{id}\t{id}\t{id}\t{id}\n")), "{status}");
    assert!(status.contains(&format!("{child}\t1\n")), "not pid 1 of its own:\n{status}");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{child}/root")).unwrap().collect();
    assert!(root.is_empty(), "the jail's root is not empty: {root:?}");
    // kiln stop's SIGTERM goes to the parent, which passes it on; the program ends as it likes, and the parent
    // records that.
    kiln_in(&home).args(["stop", "w"]).run().assert_code(0);
    let record = wait_for_record(&home, "w", |r| r["state"] == "exited");
    assert_eq!((record["exit_code"].as_i64(), record["reason"].as_str()), (Some(0), Some("exited")), "{record}");
    let log = kiln_in(&home).args(["logs", "w"]).run().stdout_text();
    assert!(log.ends_with("waiter: stopped by signal 15\n"), "{log}");
    // A program that ends by itself: its code, recorded.
    kiln_in(&home).args(["run", "-d", "--jail", "--name", "h"]).arg(guests::c("hello")).arg("7").run().assert_code(0);
    let record = wait_for_record(&home, "h", |r| r["state"] == "exited");
    assert_eq!(record["exit_code"].as_i64(), Some(7), "{record}");
    assert!(!record["reason"].as_str().unwrap().contains("without saying why"), "{record}");
    // What needs kilnd (which supervises jailed instances too: tests/kilnd.rs) is refused while none answers.
    let line =
        kiln_in(&home).args(["run", "-d", "--jail", "--restart", "always"]).arg(&waiter).run().assert_kiln_error();
    assert!(line.contains("need kilnd, and none answers"), "{line}");
}
