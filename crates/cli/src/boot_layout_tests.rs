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

/// `mov $60,%eax; xor %edi,%edi; syscall`: the rewriter can move it to a stub.
const EXIT: [u8; 9] = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
/// `jmp .+2; syscall; ret`: a branch before the site, a `ret` after it: no room for a `jmp` to a stub.
const CRAMPED: [u8; 5] = [0xeb, 0x00, 0x0f, 0x05, 0xc3];

/// A static ELF with one R+X segment at 0x400000 and `code` at 0x400100, its entry point.
fn tiny_program(code: &[u8]) -> Vec<u8> {
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
    b[0x100..0x100 + code.len()].copy_from_slice(code);
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

fn boot(code: &[u8]) -> (GuestRam, boot::BootState) {
    let program_file = tiny_program(code);
    let program = ElfImage::parse(&program_file).unwrap();
    let prepared = loader::prepare_program(&program, &program_file).unwrap();
    let kernel = ElfImage::parse(KERNEL).unwrap();
    let mut ram = GuestRam::new(64 << 20).unwrap();
    let params = BootParams {
        argv: vec!["/tiny".into(), "arg".into()],
        env: vec!["K=V".into()],
        exe_path: "/tiny".into(),
        workdir: String::new(),
        vcpus: 1,
        trace_syscalls: false,
        pod_network: false,
        random_seed: [1; 32],
        at_random: [2; 16],
        hwcap: 0,
        xsave: Default::default(),
        tsc_hz: 1_000_000_000,
        boot_tsc: 0,
        boot_realtime_ns: 0,
        rootfs: kiln_vmm::rootfs_image::Rootfs::None,
        interpreter: Vec::new(),
        objects_need_page0: false,
        net: None,
        volumes: Vec::new(),
        nofile: None,
        routes: Vec::new(),
    };
    let state = boot::build(&mut ram, (&kernel, KERNEL), (&program, &program_file, prepared), &params).unwrap();
    (ram, state)
}

fn boot_info(ram: &GuestRam, state: &boot::BootState) -> BootInfo {
    let info_phys = state.vcpus[0].rdi - DIRECT_MAP_BASE;
    let info: [u8; std::mem::size_of::<BootInfo>()] =
        ram.read_vec(info_phys, std::mem::size_of::<BootInfo>() as u64).unwrap().try_into().unwrap();
    // SAFETY: BootInfo is plain old data; every bit pattern is a valid value.
    unsafe { std::mem::transmute(info) }
}

#[test]
fn boot_layout_maps_what_the_library_os_and_program_need() {
    let (ram, state) = boot(&EXIT);
    let mem = Ram(&ram);
    let t = |v| translate(&mem, state.pml4, v);

    // No page 0: every site went to a stub, so NULL reads fault. Page 1: the syscall trap, not for CPL 3.
    assert!(t(TRAMPOLINE_VADDR).is_none());
    assert!(!t(SYSCALL_TRAP_VADDR).unwrap().user);
    assert!(t(2 * PAGE_SIZE).is_none(), "nothing else is mapped low");

    // The program's code, rewritten: the site's window became `jmp stub`, and it is not writable.
    let code = t(0x400100).unwrap();
    assert!(code.user && !code.writable);
    assert_eq!(state.program.report.relocated, vec![0x400107]);
    assert!(state.program.report.in_place.is_empty());
    let window = ram.read_vec(code.phys, 16).unwrap();
    let at = window.iter().position(|&b| b == 0xe9).expect("a jmp rel32 to the stub");
    let rel = i32::from_le_bytes(window[at + 1..at + 5].try_into().unwrap());
    let stub_addr = (0x400100 + at as u64 + 5).wrapping_add_signed(rel.into());

    // The stub area: after the program, read+execute, its first word the library OS's syscall entry, and the
    // stub calling through it.
    let stubs = state.program.stubs.clone();
    assert!(stubs.start >= 0x401000 && stubs.contains(&stub_addr));
    let area = t(stubs.start).unwrap();
    assert!(area.user && !area.writable);
    let entry = ram.read_obj::<u64>(area.phys).unwrap();
    assert!(state.kernel_span.contains(&entry));
    let stub = ram.read_vec(t(stub_addr).unwrap().phys, 32).unwrap();
    let call = stub.windows(2).position(|w| w == [0xff, 0x15]).expect("call *disp32(%rip)");
    let disp = i32::from_le_bytes(stub[call + 2..call + 6].try_into().unwrap());
    assert_eq!((stub_addr + call as u64 + STUB_CALL_LEN).wrapping_add_signed(disp.into()), stubs.start);
    let info = boot_info(&ram, &state);
    assert_eq!((info.syscall_stubs_start, info.syscall_stubs_end), (stubs.start, stubs.end));

    // All RAM in the direct map, writable; the library OS's entry inside it.
    let last = t(direct_map((64 << 20) - 1)).unwrap();
    assert!(last.writable && last.phys == (64 << 20) - 1);
    assert!(t(direct_map(64 << 20)).is_none());
    let boot_vcpu = state.vcpus[0];
    assert!(boot_vcpu.rip > DIRECT_MAP_BASE && boot_vcpu.rsp > DIRECT_MAP_BASE);

    // The boot info, and the program's stack: argc, argv, envp as given.
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

#[test]
fn page_0_is_mapped_only_for_sites_that_stay_in_place() {
    let (ram, state) = boot(&CRAMPED);
    let mem = Ram(&ram);
    let t = |v| translate(&mem, state.pml4, v);
    assert_eq!(state.program.report.in_place, vec![0x400102]);
    assert!(state.program.report.relocated.is_empty() && state.program.stubs.is_empty());
    // `syscall` became `call *%rax`, into the trampoline: page 0, readable and not writable.
    assert_eq!(ram.read_vec(t(0x400100).unwrap().phys, 5).unwrap(), vec![0xeb, 0x00, 0xff, 0xd0, 0xc3]);
    let tramp = t(TRAMPOLINE_VADDR).unwrap();
    assert!(tramp.user && !tramp.writable);
    assert_eq!(ram.read_vec(tramp.phys, 2).unwrap(), vec![0x90, 0x90]);
    let info = boot_info(&ram, &state);
    assert_eq!(info.syscall_stubs_start, info.syscall_stubs_end);
}
