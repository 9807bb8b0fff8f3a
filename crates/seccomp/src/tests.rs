use super::*;

#[test]
fn every_kind_compiles_in_both_modes() {
    for kind in Kind::ALL.into_iter().chain([Kind::Vcpu(3)]) {
        for mode in [Mode::Trap, Mode::Log] {
            let program = build(kind, mode).unwrap();
            assert!(!program.is_empty() && program.len() < 4096, "{kind:?}: {} instructions", program.len());
        }
    }
}

#[test]
fn the_vcpu_list_stays_small() {
    // The aim: at most 60 syscalls for the vCPU threads.
    let vcpu = allowed_syscalls(Kind::Vcpu(0));
    assert!(vcpu.len() <= 60, "{} syscalls", vcpu.len());
    for nr in [libc::SYS_ioctl, libc::SYS_write, libc::SYS_pwrite64, libc::SYS_futex, libc::SYS_exit_group] {
        assert!(vcpu.contains(&nr), "{nr}");
    }
    for nr in
        [libc::SYS_execve, libc::SYS_open, libc::SYS_openat, libc::SYS_socket, libc::SYS_clone, libc::SYS_mprotect]
    {
        assert!(!vcpu.contains(&nr), "vCPUs may make {nr}");
    }
}

#[test]
fn no_thread_may_start_a_program_or_change_its_privileges() {
    for kind in Kind::ALL {
        let allowed = allowed_syscalls(kind);
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_mprotect,
            libc::SYS_setuid,
            libc::SYS_mount,
            libc::SYS_seccomp,
            libc::SYS_prctl,
            libc::SYS_rt_sigaction,
            libc::SYS_kill,
        ] {
            assert!(!allowed.contains(&nr), "{kind:?} may make {nr}");
        }
    }
}

#[test]
fn the_kvm_ioctl_numbers_are_the_kernels() {
    let number = |name| KVM_VCPU_IOCTLS.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(number("KVM_RUN"), 0xae80);
    assert_eq!(number("KVM_GET_REGS"), 0x8090_ae81);
    assert_eq!(number("KVM_SET_REGS"), 0x4090_ae82);
    assert_eq!(number("KVM_GET_SREGS"), 0x8138_ae83);
    assert_eq!(number("KVM_SET_SREGS"), 0x4138_ae84);
    assert_eq!(number("KVM_GET_VCPU_EVENTS"), 0x8040_ae9f);
    assert_eq!(number("KVM_SET_VCPU_EVENTS"), 0x4040_aea0);
    assert_eq!(number("KVM_GET_XSAVE"), 0x9000_aea4);
    assert_eq!(number("KVM_SET_XSAVE"), 0x5000_aea5);
}

#[test]
fn list_sizes_for_the_docs() {
    // docs/security.md gives these: `cargo test -p kiln-seccomp list_sizes -- --nocapture`.
    for kind in Kind::ALL {
        let allowed = allowed_syscalls(kind);
        let names: Vec<_> = allowed.iter().map(|&nr| kiln_abi::syscall_names::name(nr as u64).unwrap_or("?")).collect();
        println!("{}: {} syscalls: {}", kind.name(), allowed.len(), names.join(", "));
        assert!(!allowed.is_empty());
    }
}

#[test]
fn the_debugger_thread_receives_and_talks_but_never_opens_or_accepts() {
    let allowed = allowed_syscalls(Kind::Debugger);
    for nr in [libc::SYS_recvmsg, libc::SYS_recvfrom, libc::SYS_sendto, libc::SYS_poll] {
        assert!(allowed.contains(&nr), "{nr}");
    }
    for nr in [
        libc::SYS_socket,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_open,
        libc::SYS_openat,
    ] {
        assert!(!allowed.contains(&nr), "the debugger thread may make {nr}");
    }
}
