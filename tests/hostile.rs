//! Hostile guests: programs that use the library OS's own ways to the VMM (hypercalls, virtio registers, memory)
//! as an attacker inside the guest would, since the program and the library OS share CPL 3 and one address space.
//! Whatever they do, the VM must end (or go on) with a clear `kiln:` line and a defined exit code, within a time
//! bound, and with the `kiln` process's memory bounded by the guest's memory and a fixed overhead.

#[allow(dead_code)]
mod harness;

use harness::store::{kiln_in, scratch};
use harness::{guests, kiln, kvm, Outcome};
use std::time::Duration;

/// The guests' memory, in MiB (they are told it: a program does not know where RAM ends).
const MIB: u64 = 64;
/// What `kiln` may have resident beyond all of the guest's memory touched.
const OVERHEAD_KIB: u64 = 96 << 10;
/// Each run's bound: these guests do little, and a hang is what they must not cause.
const TIME_BOUND: Duration = Duration::from_secs(30);

#[track_caller]
fn bounded(run: &Outcome) {
    assert!(run.elapsed < TIME_BOUND, "took {:?}\n{run}", run.elapsed);
    let limit = (MIB << 10) + OVERHEAD_KIB;
    let rss = run.max_rss_kib.expect("the harness measures a kiln run");
    assert!(rss < limit, "kiln had {rss} KiB resident (limit {limit})\n{run}");
}

/// The one line `kiln` printed on stderr for a VM it ended; the run fails the test unless that is all it printed.
#[track_caller]
fn kiln_line(run: &Outcome) -> String {
    let stderr = run.stderr_text();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("  #")).collect();
    assert!(matches!(lines[..], [line] if line.starts_with("kiln: ")), "one kiln: line wanted\n{run}");
    lines[0].to_string()
}

#[test]
fn hostile_hypercall_arguments_get_errors_and_the_vm_runs_on() {
    if !kvm::available() {
        return;
    }
    let run = kiln().args(["run", "--memory", "64M"]).arg(guests::c("hypercalls")).args(["64", "args"]).run();
    run.assert_code(0).assert_stderr("").assert_stdout(
        "hypercalls: args\n\
         hypercalls: written by the VMM\n\
         good write: 31\n\
         segments beyond RAM: -14\n\
         segments wrapping the address space: -14\n\
         2^62 segments: -22\n\
         257 segments: -22\n\
         a segment across the end of RAM: -14\n\
         a segment wrapping the address space: -14\n\
         a segment of 2^64-1 bytes: -22\n\
         lengths whose sum wraps: -22\n\
         one byte more than a write may move: -22\n\
         fd 3: -9\n\
         fd 2^64-1: -9\n\
         a trace record beyond RAM, unasked: -1\n\
         discard: 2^63 ranges: -22\n\
         discard: the list beyond RAM: -14\n\
         discard: a range wrapping the address space: -22\n\
         discard: a range across the end of RAM: -22\n\
         discard: an unaligned range: -22\n\
         preempt: this vCPU in 584 years: 0\n\
         preempt: no deadline at all: 0\n\
         wait 1 ns, then a look in 584 years: 0\n\
         kick this vCPU: 0\n\
         flush the TLBs: 0\n\
         wait 1 ns: 0\n\
         hypercalls: still running\n",
    );
    bounded(&run);
}

#[test]
fn hypercalls_that_break_the_contract_stop_the_vm_with_why() {
    if !kvm::available() {
        return;
    }
    for (what, code, message) in [
        ("unknown", 125, "kiln: stopped the VM: the guest made an unknown hypercall 19229"),
        ("zero", 125, "kiln: stopped the VM: the guest made an unknown hypercall 0"),
        ("max", 125, "kiln: stopped the VM: the guest made an unknown hypercall 4294967295"),
        ("kick", 125, "kiln: stopped the VM: the guest kicked vCPU 1099511627776, which does not exist"),
        ("preempt", 125, "kiln: stopped the VM: the guest preempted vCPUs 0xffffffffffffffff, of which some do not"),
        ("signal", 125, "kiln: stopped the VM: the guest reported an exit by signal 1000, which does not exist"),
        ("panic", 125, "kiln: stopped the VM: the library OS failed: (message outside guest memory)"),
        ("deadlock", 124, "kiln: program deadlocked: all 18446744073709551615 threads wait"),
        ("deadlock-ok", 124, "kiln: program deadlocked: all 3 threads wait with no deadline, and nothing can wake"),
    ] {
        let run = kiln().args(["run", "--memory", "64M"]).arg(guests::c("hypercalls")).args(["64", "stop", what]).run();
        run.assert_code(code).assert_stdout("hypercalls: stop\n");
        assert!(kiln_line(&run).starts_with(message), "{what}\n{run}");
        bounded(&run);
    }
}

#[test]
fn hand_built_transmit_queues_are_checked_frame_by_frame() {
    if !kvm::available() {
        return;
    }
    // (case, what the device returned, frames sent, frames dropped); the card's counts come from --stats.
    for (case, used, out, dropped) in [
        ("good", 1, 1, 0),
        ("outside", 1, 0, 1),
        ("wrap", 1, 0, 1),
        ("huge", 1, 0, 1),
        ("loop", 1, 0, 1),
        ("selfloop", 1, 0, 1),
        ("badnext", 1, 0, 1),
        ("rings", 0, 0, 0),
        ("storm", 1, 1, 0),
    ] {
        let run =
            kiln().args(["run", "--stats", "--memory", "64M"]).arg(guests::c("virtqueue")).args(["64", "net", case]);
        let run = run.run();
        run.assert_code(0).assert_stdout(&format!("virtqueue: net {case}\nvirtqueue: used {used}, length 0\n"));
        let stats = format!("network: {out} frames out");
        assert!(run.stderr_text().contains(&stats), "{case}: {stats}\n{run}");
        assert!(run.stderr_text().contains(&format!("{dropped} dropped out,")), "{case}\n{run}");
        bounded(&run);
    }
    for case in ["badhead", "ahead"] {
        let run = kiln().args(["run", "--memory", "64M"]).arg(guests::c("virtqueue")).args(["64", "net", case]).run();
        run.assert_code(125).assert_stdout(&format!("virtqueue: net {case}\n"));
        let line = kiln_line(&run);
        assert!(line.starts_with("kiln: stopped the VM: the guest broke the network card's virtio-net transmit queue"));
        bounded(&run);
    }
}

#[test]
fn hand_built_disk_queues_are_checked_request_by_request() {
    if !kvm::available() {
        return;
    }
    let home = scratch("hostile-homes", "disk-queues");
    // (case, what the guest sees: used index, length, status (0xff: not written), exit code)
    for (case, result) in [
        ("good", "used 1, length 513, status 0"),
        ("outside", "used 1, length 1, status 0x1"),
        ("wrap", "used 1, length 1, status 0x1"),
        ("huge", "used 1, length 0, status 0xff"),
        ("loop", "used 1, length 0, status 0xff"),
        ("selfloop", "used 1, length 0, status 0xff"),
        ("badnext", "used 1, length 0, status 0xff"),
        ("rings", "used 0, length 0, status 0xff"),
        ("storm", "used 1, length 513, status 0"),
    ] {
        // A volume each: the guest ends without detaching it cleanly (it took the disk from the library OS).
        kiln_in(&home).args(["volume", "create", case, "--size", "4M"]).run().assert_code(0);
        let volume = format!("{case}:/data");
        let run = kiln_in(&home).args(["run", "--memory", "64M", "-v", &volume]).arg(guests::c("virtqueue"));
        let run = run.args(["64", "blk", case]).run();
        run.assert_code(0).assert_stdout(&format!("virtqueue: blk {case}\nvirtqueue: {result}\n")).assert_stderr("");
        bounded(&run);
    }
    for case in ["badhead", "ahead"] {
        kiln_in(&home).args(["volume", "create", case, "--size", "4M"]).run().assert_code(0);
        let volume = format!("{case}:/data");
        let run = kiln_in(&home).args(["run", "--memory", "64M", "-v", &volume]).arg(guests::c("virtqueue"));
        let run = run.args(["64", "blk", case]).run();
        run.assert_code(125).assert_stdout(&format!("virtqueue: blk {case}\n"));
        let line = kiln_line(&run);
        assert!(line.starts_with(&format!("kiln: stopped the VM: the guest broke volume {case}'s virtio-blk queue")));
        bounded(&run);
    }
}

/// A run that ended because the guest wrecked itself: by a signal (128 + n) or stopped by the VMM (125).
#[track_caller]
fn ended_defined(run: &Outcome) {
    let line = kiln_line(run);
    let code = run.code.unwrap_or_else(|| panic!("kiln died of a signal\n{run}"));
    assert!(code == 125 || (129..=128 + 64).contains(&code), "exit code {code}\n{run}");
    let by_signal = line.starts_with("kiln: program crashed: ") || line.starts_with("kiln: program killed by ");
    assert!(by_signal || line.starts_with("kiln: stopped the VM: "), "{line}\n{run}");
    bounded(run);
}

#[test]
fn a_guest_that_corrupts_the_library_os_ends_with_a_kiln_line() {
    if !kvm::available() {
        return;
    }
    let run = kiln().args(["run", "--memory", "64M"]).arg(guests::c("scribble")).args(["64", "percpu"]).run();
    run.assert_stdout("scribble: percpu\n");
    ended_defined(&run);
    // Over all of RAM, from the top: it wrecks its page tables, the library OS and itself, in some order.
    for seed in ["1", "2", "0x5eed", "0xdeadbeef"] {
        let run = kiln().args(["run", "--memory", "64M"]).arg(guests::c("scribble")).args(["64", "ram", seed]).run();
        assert!(run.stdout_text().starts_with("scribble: ram\nscribble: 64 MiB left\n"), "{run}");
        ended_defined(&run);
    }
}

#[test]
fn a_guest_that_overwrites_its_root_filesystem_changes_no_host_file() {
    if !kvm::available() {
        return;
    }
    let dir = scratch("hostile-homes", "rootfs");
    let file = dir.join("data.txt");
    std::fs::write(&file, "hello from the host\n").unwrap();
    let spec = format!("{}:/data.txt", file.display());
    // Twice: the second run maps the cached image the first one wrote over in guest memory.
    for _ in 0..2 {
        let run = kiln().args(["run", "--memory", "64M", "--file", &spec]).arg(guests::c("scribble"));
        let run = run.args(["64", "rootfs", "/data.txt"]).run();
        run.assert_code(0).assert_stderr("").assert_stdout(
            "scribble: rootfs\n\
             scribble: 1 images overwritten\n\
             scribble: open ok, read 20: hello from the host\n\
             scribble: still running\n",
        );
        bounded(&run);
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello from the host\n");
}
