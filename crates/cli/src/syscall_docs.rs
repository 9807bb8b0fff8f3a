//! `docs/syscalls.md` is generated from the library OS that `kiln` embeds: which numbers have a handler is read from
//! its `KILN_SYSCALL_TABLE` (the very table the dispatcher indexes), and the notes below say what is partial and what
//! is refused by design. A test fails when the file and the library OS disagree, so the document cannot drift;
//! `KILN_BLESS=1 cargo test -p kiln syscall_docs` rewrites it.

use crate::run::KERNEL;
use kiln_abi::hypercall::SYSCALL_SLOTS;
use kiln_vmm::elf::ElfImage;
use kiln_vmm::syscall_names::syscall_name;

/// What an implemented syscall does not do yet (`partial: ...`), or why an unimplemented one never will (`by design:
/// ...`). An implemented number without a note is complete.
/// Why whole families of syscalls stay ENOSYS.
const MACHINE_ADMIN: &str = "by design: the VM has no kernel modules, swap, reboot, kexec or process accounting";
const HOST_CLOCK: &str = "by design: the guest's clock follows the host's; a program cannot set it";
const PORT_IO: &str = "by design: port I/O and descriptor tables belong to the library OS and the VMM";
const OBSOLETE: &str = "by design: obsolete, or never implemented by Linux on x86-64 either";
const NET_FAMILIES: &str = "partial: AF_INET and AF_INET6 (SOCK_STREAM, SOCK_DGRAM), AF_UNIX (stream, datagram, \
                            seqpacket), AF_NETLINK NETLINK_ROUTE (link and address dumps only); no raw or packet sockets";
const ITIMER_CPU: &str = "partial: ITIMER_VIRTUAL and ITIMER_PROF run at the real clock's rate (the program has its \
     vCPUs to itself); an expiry is noticed at a syscall or by an idle vCPU";
const NO_CHILDREN: &str = "partial: ECHILD: a program never has children (no fork)";
const OWNERS: &str = "partial: accepted and not kept: one user, root";
const TIMES: &str =
    "partial: access and modification times are kept (whole seconds on volumes); the change time reads as the latter";
const INET: &str = "partial: TCP and UDP over IPv4 and IPv6, AF_UNIX sockets, and NETLINK_ROUTE's link and \
                    address dumps";
const LEGACY_TLS: &str = "by design: 32-bit TLS; x86-64 programs use arch_prctl";

const NOTES: &[(u64, &str)] = &[
    (
        2,
        "partial: the in-memory filesystem, volumes, FIFOs and /dev/null|zero|urandom|std*; symbolic links followed \
         (O_NOFOLLOW: ELOOP); O_PATH descriptors name a file without I/O (EBADF); no O_TMPFILE",
    ),
    (7, "partial: no signal interrupts it"),
    (8, "partial: SEEK_SET/CUR/END; no SEEK_DATA/SEEK_HOLE"),
    (
        9,
        "partial: MAP_SHARED of a file on a volume is a copy (ENODEV if writable); past the end of an in-memory \
          file a shared mapping faults with SIGSEGV, not SIGBUS; PROT_NONE reserves without memory",
    ),
    (10, "partial: no NX (PROT_EXEC is not enforced); each change of a page that was accessible costs a VM exit"),
    (11, "partial: unmapped memory the library OS placed stays accessible (zeroed) until mapped again"),
    (
        13,
        "partial: a sent signal's handler runs at the target thread's next syscall exit (no interrupts), a fault's at \
          once; SA_RESTART for read, write, readv, writev, futex",
    ),
    (34, "partial: as on Linux; a program waiting here is never reported as deadlocked"),
    (
        16,
        "partial: FIONBIO, FIONREAD, and on sockets the SIOCGIF* interface queries; no descriptor is a terminal \
         (ENOTTY)",
    ),
    (4, "partial: owners are root's; st_nlink counts hard links"),
    (6, "partial: owners are root's; st_nlink counts hard links"),
    (21, "partial: everyone is root: an existing path is accessible"),
    (74, "partial: the filesystem is in memory: nothing to flush"),
    (75, "partial: the filesystem is in memory: nothing to flush"),
    (82, "partial: no RENAME_* flags"),
    (90, "partial: recorded for stat, not enforced (everyone is root)"),
    (91, "partial: recorded for stat, not enforced (everyone is root)"),
    (257, "partial: as open"),
    (262, "partial: AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, AT_FDCWD and directory descriptors"),
    (268, "partial: recorded for stat, not enforced (everyone is root)"),
    (269, "partial: everyone is root: an existing path is accessible"),
    (306, "partial: the filesystem is in memory: nothing to flush"),
    (316, "partial: flags must be 0"),
    (327, "partial: RWF_* hints are accepted and change nothing (files are in memory); unknown flags are EOPNOTSUPP"),
    (328, "partial: RWF_APPEND appends; RWF_DSYNC/RWF_SYNC write a volume file back before returning; other RWF_* hints change nothing; unknown flags are EOPNOTSUPP"),
    (332, "partial: the basic fields (STATX_BASIC_STATS)"),
    (439, "partial: everyone is root: an existing path is accessible"),
    (25, "partial: anonymous mappings; MREMAP_FIXED refused; moved memory loses its mprotect protection"),
    (28, "partial: MADV_DONTNEED zeroes; other advice is accepted"),
    (26, "partial: nothing to write back (shared mappings are of in-memory files; volumes refuse writable ones)"),
    (86, "partial: within the in-memory tree or one volume (EXDEV across); a symbolic link is linked itself"),
    (265, "partial: as link, AT_SYMLINK_FOLLOW followed; no AT_EMPTY_PATH"),
    (133, "partial: regular files and FIFOs; device nodes and sockets are EPERM (no devices to reach)"),
    (259, "partial: as mknod"),
    (40, "partial: from a regular file to a socket, a pipe or a regular file"),
    (53, "partial: AF_UNIX stream, datagram and seqpacket"),
    (61, NO_CHILDREN),
    (247, NO_CHILDREN),
    (73, "partial: always granted: the program is the only process"),
    (92, OWNERS),
    (93, OWNERS),
    (94, OWNERS),
    (260, OWNERS),
    (132, TIMES),
    (235, TIMES),
    (261, TIMES),
    (280, TIMES),
    (203, "partial: accepted; threads still run on every vCPU"),
    (128, "partial: a signal for the process is taken from what waits at the main thread"),
    (36, ITIMER_CPU),
    (38, ITIMER_CPU),
    (222, "partial: SIGEV_SIGNAL, SIGEV_THREAD_ID, SIGEV_NONE (libcs build SIGEV_THREAD on SIGEV_THREAD_ID)"),
    (41, NET_FAMILIES),
    (42, INET),
    (43, INET),
    (44, INET),
    (45, INET),
    (46, "partial: no ancillary data (msg_control)"),
    (47, "partial: no ancillary data (msg_control); MSG_TRUNC for a datagram cut to the buffer"),
    (48, INET),
    (49, "partial: the VM's own addresses (loopback, the card's) and the unspecified address"),
    (50, "partial: the backlog is capped at 128"),
    (51, INET),
    (52, INET),
    (
        54,
        "partial: SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVBUF, SO_SNDBUF (TCP; from the next connect or backlog socket), \
          SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, SO_LINGER, and 49 integer options kept and validated as Linux \
          does (IP_TTL and IPV6_UNICAST_HOPS set the hop limit, TCP_NODELAY Nagle, SO_REUSEPORT shares a port, \
          IPV6_V6ONLY keeps IPv4 out; the rest are kept only); multicast membership is kept (no group's datagrams \
          arrive); others (SO_BINDTODEVICE, ...) are accepted and change nothing",
    ),
    (
        55,
        "partial: SO_ERROR, SO_TYPE, SO_DOMAIN, SO_PROTOCOL, SO_ACCEPTCONN, SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVBUF, \
          SO_SNDBUF, SO_KEEPALIVE, TCP_KEEP*, SO_LINGER and the kept integer options; others read as 0",
    ),
    (288, INET),
    (307, INET),
    (
        299,
        "partial: with MSG_WAITFORONE or a timeout, only the first message is waited for (the \
          timeout bounds nothing more)",
    ),
    (56, "partial: threads only (CLONE_VM, CLONE_THREAD, CLONE_SIGHAND); process-creating clones are ENOSYS"),
    (57, "by design: one program per VM, no new processes"),
    (58, "by design: one program per VM, no new processes"),
    (59, "by design for now: one program per VM"),
    (62, "partial: to the program itself only"),
    (
        72,
        "partial: F_DUPFD(_CLOEXEC), F_GETFD/SETFD, F_GETFL/SETFL, record locks (F_GETLK/SETLK/SETLKW and F_OFD_*); \
          no leases, F_SETOWN, pipe sizes or seals",
    ),
    (95, "partial: recorded; no files are created yet"),
    (131, "partial: no SS_AUTODISARM (EINVAL)"),
    (97, "partial: RLIMIT_NOFILE is kept and enforced; the others are reported, not enforced"),
    (98, "partial: CPU time is the time since boot; the other counters are 0"),
    (99, "partial: no load averages or swap"),
    (100, "partial: CPU time is the time since boot, as for getrusage"),
    (137, "partial: one tmpfs-like filesystem sized by the VM's RAM"),
    (138, "partial: one tmpfs-like filesystem sized by the VM's RAM"),
    (140, "partial: one nice value for the process, reported, not acted on (no preemption)"),
    (141, "partial: one nice value for the process, reported, not acted on (no preemption)"),
    (142, "partial: priority 0 only"),
    (144, "partial: SCHED_OTHER, SCHED_BATCH and SCHED_IDLE; real-time policies are EPERM (no preemption)"),
    (149, "partial: memory is never paged out, so it is locked already"),
    (150, "partial: memory is never paged out, so it is locked already"),
    (151, "partial: memory is never paged out, so it is locked already"),
    (152, "partial: memory is never paged out, so it is locked already"),
    (162, "partial: the filesystem is in memory: nothing to flush"),
    (221, "partial: files are in memory: every advice is accepted and changes nothing"),
    (105, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (106, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (113, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (114, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (116, "partial: up to 64 groups (EINVAL beyond), recorded and reported, not enforced"),
    (117, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (119, "partial: ids are recorded and reported with Linux's rules, not enforced (one user; no permission checks)"),
    (109, "partial: the process (pid 1) leads its own group; no other group exists"),
    (112, "partial: EPERM, as for any process group leader"),
    (157, "partial: PR_SET/GET_NAME, PR_SET_PDEATHSIG, PR_SET/GET_DUMPABLE, PR_SET/GET_NO_NEW_PRIVS"),
    (160, "partial: RLIMIT_NOFILE is kept and enforced (hard limit at most 65,536); others are checked, not kept"),
    (101, "by design: no debugging of one guest process by another"),
    (158, "partial: ARCH_SET_GS refused (GS belongs to the library OS)"),
    (202, "partial: PI futexes inherit no priority (Kiln has none); WAIT_REQUEUE_PI and CMP_REQUEUE_PI are ENOSYS"),
    (31, "partial: no IPC_INFO, SHM_INFO or SHM_STAT; permission bits are kept, not checked (one user)"),
    (65, "partial: SEM_UNDO is accepted with nothing to undo (the process's exit ends the VM)"),
    (66, "partial: no IPC_INFO, SEM_INFO or SEM_STAT; permission bits are kept, not checked (one user)"),
    (70, "partial: MSG_COPY is ENOSYS, as on Linux without checkpoint/restore"),
    (71, "partial: no IPC_INFO, MSG_INFO or MSG_STAT; permission bits are kept, not checked (one user)"),
    (220, "partial: SEM_UNDO is accepted with nothing to undo (the process's exit ends the VM)"),
    (232, "partial: nested epoll descriptors are refused"),
    (233, "partial: nested epoll descriptors are refused; EPOLLET means: again after the object changed"),
    (270, "partial: the signal mask is ignored; exception sets are never set"),
    (271, "partial: the signal mask is ignored"),
    (281, "partial: the signal mask is ignored"),
    (441, "partial: the signal mask is ignored"),
    (23, "partial: exception sets are never set"),
    (302, "partial: RLIMIT_NOFILE is kept and enforced (hard limit at most 65,536); others are checked, not kept"),
    (310, "by design: one process"),
    (311, "by design: one process"),
    (322, "by design for now: one program per VM"),
    (435, "by design: libcs fall back to clone"),
    (167, MACHINE_ADMIN),
    (168, MACHINE_ADMIN),
    (169, MACHINE_ADMIN),
    (174, MACHINE_ADMIN),
    (175, MACHINE_ADMIN),
    (176, MACHINE_ADMIN),
    (177, MACHINE_ADMIN),
    (178, MACHINE_ADMIN),
    (246, MACHINE_ADMIN),
    (313, MACHINE_ADMIN),
    (320, MACHINE_ADMIN),
    (163, MACHINE_ADMIN),
    (159, HOST_CLOCK),
    (164, HOST_CLOCK),
    (227, HOST_CLOCK),
    (305, HOST_CLOCK),
    (172, PORT_IO),
    (173, PORT_IO),
    (154, PORT_IO),
    (134, OBSOLETE),
    (136, OBSOLETE),
    (139, OBSOLETE),
    (156, OBSOLETE),
    (180, OBSOLETE),
    (181, OBSOLETE),
    (182, OBSOLETE),
    (183, OBSOLETE),
    (184, OBSOLETE),
    (185, OBSOLETE),
    (212, OBSOLETE),
    (214, OBSOLETE),
    (215, OBSOLETE),
    (236, OBSOLETE),
    (205, LEGACY_TLS),
    (211, LEGACY_TLS),
];

/// Numbers the embedded library OS has a handler for, read from `KILN_SYSCALL_TABLE` in its ELF: the table starts with
/// its handlers, `Option<fn>`, 8 bytes each, 0 for none (the argument types follow); in a position-independent image
/// every non-null entry has a relocation.
fn implemented() -> Vec<u64> {
    let elf = ElfImage::parse(KERNEL).expect("the embedded library OS parses");
    let table = elf.symbol("KILN_SYSCALL_TABLE").expect("the library OS exports KILN_SYSCALL_TABLE");
    let end = table + 8 * SYSCALL_SLOTS as u64;
    let mut numbers: Vec<u64> = elf
        .relative_relocations
        .iter()
        .filter(|&&(offset, addend)| (table..end).contains(&offset) && addend != 0)
        .map(|&(offset, _)| (offset - table) / 8)
        .collect();
    numbers.sort_unstable();
    numbers
}

fn status(nr: u64, implemented: bool) -> String {
    let note = NOTES.iter().find(|(n, _)| *n == nr).map(|(_, note)| *note);
    match (implemented, note) {
        (true, None) => "full".into(),
        (true, Some(note)) => note.into(),
        (false, Some(note)) => format!("ENOSYS, {note}"),
        (false, None) => "ENOSYS (not yet)".into(),
    }
}

/// The whole of docs/syscalls.md.
fn render() -> String {
    let have = implemented();
    let highest = 462;
    let mut out = String::from(
        "# Linux syscalls in Kiln\n\n\
         Generated from the library OS's dispatch table by `crates/cli/src/syscall_docs.rs` (a test keeps it in step;\n\
         `KILN_BLESS=1 cargo test -p kiln syscall_docs` rewrites it). Every number without a handler returns `-ENOSYS`\n\
         to the program, is counted, and shows in `kiln run --trace-syscalls`.\n\n",
    );
    out += &format!(
        "{} of {} numbers have a handler.\n\n| nr | syscall | status |\n|---:|---|---|\n",
        have.len(),
        highest + 1
    );
    for nr in 0..=highest {
        let name = syscall_name(nr);
        if name.starts_with("syscall_") {
            continue;
        }
        out += &format!("| {nr} | `{name}` | {} |\n", status(nr, have.contains(&nr)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_docs_match_the_library_os() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/syscalls.md");
        let expected = render();
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("write docs/syscalls.md");
            return;
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "docs/syscalls.md is out of date with the library OS; run `KILN_BLESS=1 cargo test -p kiln syscall_docs`"
        );
    }

    #[test]
    fn the_table_is_read_from_the_binary() {
        let have = implemented();
        for nr in [0, 1, 9, 60, 231, 318] {
            assert!(have.contains(&nr), "{} has a handler", syscall_name(nr));
        }
        assert!(have.contains(&56) && !have.contains(&435), "clone has a handler, clone3 none");
    }

    #[test]
    fn notes_agree_with_the_table() {
        let have = implemented();
        for (nr, note) in NOTES {
            let implemented = have.contains(nr);
            assert_eq!(implemented, note.starts_with("partial"), "note for {}: {note}", syscall_name(*nr));
        }
    }
}
