//! The boot layout kiln-vmm builds around the embedded library OS, checked in guest memory without KVM: what the page
//! tables map where, with which rights, and what the program finds on its stack.

use crate::run::KERNEL;
use kiln_abi::layout::*;
use kiln_abi::paging::translate;
use kiln_abi::BootInfo;
use kiln_vmm::boot::{self, BootParams};
use kiln_vmm::elf::ElfImage;
use kiln_vmm::loader;
use kiln_vmm::memory::GuestRam;

/// A static ELF with one R+X segment at 0x400000: `mov $60,%eax; xor %edi,%edi; syscall`.
fn tiny_program() -> Vec<u8> {
    let code = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let mut b = vec![0u8; 0x1000];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4..7].copy_from_slice(&[2, 1, 1]);
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&0x400100u64.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut b[64..120];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[16..24].copy_from_slice(&0x400000u64.to_le_bytes());
    ph[32..40].copy_from_slice(&0x1000u64.to_le_bytes());
    ph[40..48].copy_from_slice(&0x1000u64.to_le_bytes());
    b[0x100..0x100 + code.len()].copy_from_slice(&code);
    b
}

struct Ram<'a>(&'a GuestRam);
impl kiln_abi::paging::PhysMemory for Ram<'_> {
    fn read_u64(&self, phys: u64) -> u64 {
        self.0.read_obj(phys).unwrap()
    }
    fn write_u64(&mut self, _: u64, _: u64) {
        unreachable!()
    }
}

#[test]
fn boot_layout_maps_what_the_library_os_and_program_need() {
    let program_file = tiny_program();
    let program = ElfImage::parse(&program_file).unwrap();
    let prepared = loader::prepare_program(&program, &program_file).unwrap();
    let kernel = ElfImage::parse(KERNEL).unwrap();
    let mut ram = GuestRam::new(64 << 20).unwrap();
    let params = BootParams {
        argv: vec!["/tiny".into(), "arg".into()],
        env: vec!["K=V".into()],
        exe_path: "/tiny".into(),
        vcpus: 1,
        trace_syscalls: false,
        random_seed: [1; 32],
        at_random: [2; 16],
        hwcap: 0,
        tsc_hz: 1_000_000_000,
        boot_tsc: 0,
        boot_realtime_ns: 0,
        rootfs: Vec::new(),
        net: None,
        volumes: Vec::new(),
    };
    let state = boot::build(&mut ram, (&kernel, KERNEL), (&program, &program_file, prepared), &params).unwrap();
    let mem = Ram(&ram);
    let t = |v| translate(&mem, state.pml4, v);

    // Page 0: the trampoline, readable and not writable; page 1: the syscall trap, not for CPL 3.
    let tramp = t(TRAMPOLINE_VADDR).unwrap();
    assert!(tramp.user && !tramp.writable);
    assert_eq!(ram.read_vec(tramp.phys, 2).unwrap(), vec![0x90, 0x90]);
    assert!(!t(SYSCALL_TRAP_VADDR).unwrap().user);
    assert!(t(2 * PAGE_SIZE).is_none(), "nothing else is mapped low");

    // The program's code, rewritten: `syscall` became `call *%rax`, and it is not writable.
    let code = t(0x400100).unwrap();
    assert!(code.user && !code.writable);
    assert_eq!(ram.read_vec(code.phys + 7, 2).unwrap(), vec![0xff, 0xd0]);
    assert_eq!(state.program.report.rewritten, vec![0x400107]);

    // All RAM in the direct map, writable; the library OS's entry inside it.
    let last = t(direct_map((64 << 20) - 1)).unwrap();
    assert!(last.writable && last.phys == (64 << 20) - 1);
    assert!(t(direct_map(64 << 20)).is_none());
    let boot_vcpu = state.vcpus[0];
    assert!(boot_vcpu.rip > DIRECT_MAP_BASE && boot_vcpu.rsp > DIRECT_MAP_BASE);

    // The boot info, and the program's stack: argc, argv, envp as given.
    let info_phys = boot_vcpu.rdi - DIRECT_MAP_BASE;
    let info: [u8; std::mem::size_of::<BootInfo>()] =
        ram.read_vec(info_phys, std::mem::size_of::<BootInfo>() as u64).unwrap().try_into().unwrap();
    // SAFETY: BootInfo is plain old data; every bit pattern is a valid value.
    let info: BootInfo = unsafe { std::mem::transmute(info) };
    assert!(info.is_valid());
    assert_eq!(info.app_entry, 0x400100);
    assert!(info.free_phys_start < info.mem_size && info.brk_start >= 0x401000);
    let sp = t(info.app_stack_pointer).unwrap();
    assert!(sp.writable && sp.user);
    assert_eq!(ram.read_obj::<u64>(sp.phys).unwrap(), 2, "argc");
    let argv1 = ram.read_obj::<u64>(sp.phys + 16).unwrap();
    assert_eq!(ram.read_vec(t(argv1).unwrap().phys, 4).unwrap(), b"arg\0");
    assert!(t(STACK_TOP - 1).unwrap().writable && t(STACK_TOP).is_none());
}
