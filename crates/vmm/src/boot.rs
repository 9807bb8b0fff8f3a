//! The boot layout, built entirely on the host: page tables (all RAM in the direct map, the program at its own
//! addresses and its syscall stubs after it, the trampoline at page 0 if some site needs it), GDT and TSS, the library OS and the program, the initial stack and the boot
//! info. When this is done the vCPU only has to start at CPL 3 in the library OS: no guest instruction runs at CPL 0.

use crate::arch::{gdt, trap_page};
use crate::elf::ElfImage;
use crate::link_map::RootfsInRam;
use crate::loader::{self, LoadedProgram, LoaderError, PreparedProgram};
use crate::memory::{BootAllocator, GuestRam, HugePages, MemoryError};
use crate::rootfs_image::{MappedImage, Rootfs};
use crate::stack::{self, ProgramInfo, StackError};
use crate::vdso;
use kiln_abi::boot::{
    BootInfo, NetInfo, RouteInfo, VolumeInfo, BLK_MMIO_SIZE, BOOT_FLAG_POD_NETWORK, BOOT_FLAG_TRACE_SYSCALLS,
    BOOT_MAGIC, BOOT_VERSION, MAX_ROUTES, MAX_VOLUMES, NET_MMIO_SIZE,
};
use kiln_abi::layout::*;
use kiln_abi::paging::{self, PTE_ACCESSED, PTE_USER, PTE_WRITABLE};

/// The library OS's stack for syscalls and its own start-up.
pub const KERNEL_STACK_SIZE: u64 = 64 << 10;
/// Smallest guest RAM Kiln accepts.
pub const MIN_MEMORY: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("guest memory is too small for the library OS and the program")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("the library OS image is broken: {0}")]
    Kernel(&'static str),
    #[error("its dynamic loader is unusable")]
    Interpreter(#[source] crate::elf::ElfError),
    #[error("boot mapping failed at {0:#x}: {1:?}")]
    Map(u64, paging::MapError),
}

/// What the program's boot needs besides the two ELF images.
#[derive(Clone, Debug)]
pub struct BootParams {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// The path `/proc/self/exe` names inside the guest.
    pub exe_path: String,
    /// The directory the program starts in; empty for the root.
    pub workdir: String,
    pub vcpus: u32,
    pub trace_syscalls: bool,
    /// The VM is a container of a pod (`BOOT_FLAG_POD_NETWORK`): its card publishes the ports the program listens on.
    pub pod_network: bool,
    pub random_seed: [u8; 32],
    pub at_random: [u8; 16],
    pub hwcap: u64,
    /// The extended state the vCPUs have enabled (none for a platform layer that enables its own).
    pub xsave: crate::arch::Xsave,
    pub tsc_hz: u64,
    pub boot_tsc: u64,
    pub boot_realtime_ns: u64,
    /// The program's dynamic loader, rewritten (`shared_object`), for a dynamically linked program; empty for none.
    pub interpreter: Vec<u8>,
    /// Whether a shared object the program will map has syscall sites that stayed in place (page 0 is mapped then).
    pub objects_need_page0: bool,
    /// The root filesystem image (`kiln_abi::rootfs`).
    pub rootfs: Rootfs,
    /// The network card's addresses, if the VM has one (its register window is placed by [`build`]).
    pub net: Option<NetInfo>,
    /// The volumes' sizes and mount paths (their register windows are placed by [`build`]); at most
    /// [`MAX_VOLUMES`].
    pub volumes: Vec<VolumeInfo>,
    /// RLIMIT_NOFILE (soft, hard) to start the program with; none for the library OS's own.
    pub nofile: Option<(u64, u64)>,
    /// The network card's routes besides its default ones (a pod's CNI routes); at most [`MAX_ROUTES`].
    pub routes: Vec<RouteInfo>,
}

/// The boot info's route table: `routes` in order (the launch checked that they fit; any beyond are dropped).
fn boot_routes(routes: &[RouteInfo]) -> [RouteInfo; MAX_ROUTES] {
    let mut table = [RouteInfo::default(); MAX_ROUTES];
    for (slot, route) in table.iter_mut().zip(routes) {
        *slot = *route;
    }
    table
}

/// Where a VM with `ram_size` bytes of RAM has its network card's registers: just above RAM, where no memory slot
/// is, so that every access exits to the VMM.
pub const fn net_mmio_phys(ram_size: u64) -> u64 {
    ram_size
}

/// Where volume `index`'s registers are: in the windows after the network card's.
pub const fn volume_mmio_phys(ram_size: u64, index: usize) -> u64 {
    net_mmio_phys(ram_size) + NET_MMIO_SIZE + index as u64 * BLK_MMIO_SIZE
}

/// Where one vCPU starts: %rip, %rsp, and the two arguments in %rdi and %rsi.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuStart {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    /// Guest-physical address of this vCPU's hypercall block.
    pub hypercall_block_phys: u64,
    /// Guest-physical address of this vCPU's TSS, whose page is also its CPL 0 stack (used on hardware KVM only).
    pub tss_phys: u64,
}

/// Where the vCPUs start and what the VMM needs to know afterwards.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BootState {
    pub pml4: u64,
    /// Guest-physical address of the [`BootInfo`].
    pub boot_info_phys: u64,
    pub gdt_phys: u64,
    /// One per vCPU; vCPU 0 starts the program, the others join its scheduler.
    pub vcpus: Vec<VcpuStart>,
    pub stats_phys: u64,
    /// The thread table's description (`kiln_abi::threads::ThreadTable`), guest-physical; 0 if the library OS has none.
    pub threads_phys: u64,
    /// The program's first instruction: its entry, or its loader's for a dynamically linked program.
    pub first_instruction: u64,
    /// Lowest address of the program's main stack.
    pub stack_bottom: u64,
    /// The host-signal page (`BootInfo::host_signals_phys`).
    pub host_signals_phys: u64,
    /// `kiln_fault_entry` (0 if the library OS has none) and the library OS's address range.
    pub fault_entry: u64,
    pub kernel_span: std::ops::Range<u64>,
    /// The vDSO's functions in the library OS: the program's code as far as faults go.
    pub vdso_code: Vec<std::ops::Range<u64>>,
    pub program: LoadedProgram,
    /// Where the root filesystem image lies in guest RAM.
    pub rootfs: RootfsInRam,
    /// The program's auxiliary vector, as its initial stack holds it (for core files).
    pub auxv: Vec<u8>,
}

/// Stack size of the program's main thread: 8 MiB as Linux's default limit, less in small VMs.
pub fn main_stack_size(memory: u64) -> u64 {
    (memory / 8).clamp(256 << 10, 8 << 20)
}

/// Maps a cached root filesystem image into guest RAM and returns its guest-physical address, congruent to its file
/// offset modulo 2 MiB (`rootfs_cache` puts images on 2 MiB boundaries of the file). Where the host's page cache
/// holds the file in 2 MiB folios (ext4 and xfs with large folios; `GuestRam::map_file` asks for them), the host then
/// maps it with 2 MiB entries, and the guest's reads through its 2 MiB direct-map pages cost one shadow fault per
/// 2 MiB instead of one per 4 KiB page: KVM maps no neighbours along with a page the host has read-only, as a file's
/// page is until written.
fn map_rootfs(ram: &GuestRam, alloc: &mut BootAllocator, image: &MappedImage) -> Result<u64, BootError> {
    let len = image.bytes().len() as u64;
    let phys = if len >= HUGE_PAGE_SIZE { alloc.alloc_congruent(len, image.offset())? } else { alloc.alloc(len)? };
    ram.map_file(phys, image.file(), image.offset(), len)?;
    if ram.huge_pages() == HugePages::Yes {
        // The rest of the image's last 2 MiB window is RAM in the host's 4 KiB pages (one host mapping cannot be
        // part file and part huge page): what the library OS allocates first (its heap, page tables) would cost a
        // shadow fault per 4 KiB page there. Skipped, less than 2 MiB of a VM of 256 MiB or more.
        alloc.skip_to_huge_boundary();
    }
    Ok(phys)
}

fn trampoline_page(syscall_entry: u64) -> Vec<u8> {
    let mut page = vec![0x90u8; PAGE_SIZE as usize];
    for jump_at in [TRAMPOLINE_SLIDE_END, TRAMPOLINE_SECOND_JUMP] {
        // jmp *disp32(%rip), reading the dispatcher's address from the end of the page.
        let disp = (TRAMPOLINE_DISPATCH_POINTER - (jump_at + 6)) as u32;
        let at = jump_at as usize;
        page[at..at + 2].copy_from_slice(&[0xff, 0x25]);
        page[at + 2..at + 6].copy_from_slice(&disp.to_le_bytes());
    }
    let ptr = TRAMPOLINE_DISPATCH_POINTER as usize;
    page[TRAMPOLINE_SECOND_JUMP as usize + 6..ptr].fill(0xcc);
    page[ptr..ptr + 8].copy_from_slice(&syscall_entry.to_le_bytes());
    page
}

pub fn build(
    ram: &mut GuestRam,
    kernel: (&ElfImage, &[u8]),
    program: (&ElfImage, &[u8], PreparedProgram),
    params: &BootParams,
) -> Result<BootState, BootError> {
    build_from(ram, PAGE_SIZE, kernel, program, params)
}

/// [`build`], placing everything from guest-physical `first` up (an exported image leaves the first MiBs to firmware
/// and its platform layer: `crate::export`).
pub fn build_from(
    ram: &mut GuestRam,
    first: u64,
    kernel: (&ElfImage, &[u8]),
    program: (&ElfImage, &[u8], PreparedProgram),
    params: &BootParams,
) -> Result<BootState, BootError> {
    // The host-kind probe may still be using the top pages (`arch::host::Probe`).
    let mut alloc = BootAllocator::new(first, ram.size() - crate::arch::host::PROBE_BYTES);
    let pml4 = alloc.alloc(PAGE_SIZE)?;

    for phys in (0..ram.size()).step_by(HUGE_PAGE_SIZE as usize) {
        paging::map_huge_page(ram, &mut alloc, pml4, direct_map(phys), phys, PTE_WRITABLE | PTE_USER)
            .map_err(|e| BootError::Map(direct_map(phys), e))?;
    }

    let vcpus = u64::from(params.vcpus.max(1));
    // Each vCPU has a page with its TSS at the start and its CPL 0 stack (RSP0) above it: two vCPUs taking
    // exceptions at once must not share a stack. KVM loads TR from the special registers, so the GDT's descriptor
    // (vCPU 0's) is only for the record.
    let gdt_phys = alloc.alloc(PAGE_SIZE)?;
    let tss_pages = alloc.alloc(vcpus * PAGE_SIZE)?;
    ram.write(gdt_phys, &gdt::table(direct_map(tss_pages)))?;
    for page in (0..vcpus).map(|i| tss_pages + i * PAGE_SIZE) {
        ram.write(page, &gdt::tss(direct_map(page + PAGE_SIZE)))?;
    }

    // Below the library OS, so that the vDSO's symbols (offsets from it to the library OS's functions) are positive.
    let vdso_phys = alloc.alloc(PAGE_SIZE)?;
    let kernel = loader::load_kernel(ram, &mut alloc, kernel.0, kernel.1)?;
    let sysinfo_ehdr = if kernel.vdso.iter().all(|f| !f.is_empty()) {
        let targets: [u64; vdso::FUNCTIONS.len()] = std::array::from_fn(|i| kernel.vdso[i].start);
        ram.write(vdso_phys, &vdso::image(direct_map(vdso_phys), &targets))?;
        direct_map(vdso_phys)
    } else {
        0
    };
    if kernel.syscall_entry == kernel.entry || kernel.syscall_entry < DIRECT_MAP_BASE {
        return Err(BootError::Kernel("no kiln_syscall_entry symbol"));
    }
    if kernel.secondary_entry < DIRECT_MAP_BASE {
        return Err(BootError::Kernel("no kiln_secondary_start symbol"));
    }
    if kernel.unrewritten_syscall_entry < DIRECT_MAP_BASE {
        return Err(BootError::Kernel("no kiln_unrewritten_syscall_entry symbol"));
    }
    let kernel_stack = alloc.alloc(vcpus * KERNEL_STACK_SIZE)?;
    let hypercall_block = alloc.alloc(vcpus * PAGE_SIZE)?;

    // Page 0 only for sites the rewriter could not relocate: without it, NULL reads fault as on Linux. The same
    // code at the gateway page for the stubs of shared objects (`shared_object`), which a dynamic program has.
    let page0 = !program.2.report.in_place.is_empty() || params.objects_need_page0;
    let gateway = !params.interpreter.is_empty();
    if page0 || gateway {
        let trampoline = alloc.alloc(PAGE_SIZE)?;
        ram.write(trampoline, &trampoline_page(kernel.syscall_entry))?;
        for (vaddr, wanted) in [(TRAMPOLINE_VADDR, page0), (SYSCALL_GATEWAY_VADDR, gateway)] {
            if wanted {
                paging::map_page(ram, &mut alloc, pml4, vaddr, trampoline, PTE_USER | PTE_ACCESSED)
                    .map_err(|e| BootError::Map(vaddr, e))?;
            }
        }
    }
    let trap = alloc.alloc(PAGE_SIZE)?;
    ram.write(trap, &trap_page::build(kernel.unrewritten_syscall_entry))?;
    paging::map_page(ram, &mut alloc, pml4, SYSCALL_TRAP_VADDR, trap, 0)
        .map_err(|e| BootError::Map(SYSCALL_TRAP_VADDR, e))?;

    let loaded = loader::load_program(ram, &mut alloc, pml4, (program.0, program.1), program.2, kernel.syscall_entry)?;
    let interpreter = if gateway {
        let elf = ElfImage::parse_any(&params.interpreter).map_err(BootError::Interpreter)?;
        if elf.kind != crate::elf::ElfKind::StaticPie {
            return Err(BootError::Interpreter(crate::elf::ElfError::NotExecutable("not a dynamic loader".into())));
        }
        loader::check_fits(&elf, ram.size())?;
        Some(loader::load_interpreter(ram, &mut alloc, pml4, (&elf, &params.interpreter), INTERP_BASE)?)
    } else {
        None
    };
    // A dynamic program starts in its loader, which finds the program through the auxiliary vector.
    let start = interpreter.as_ref().map_or(loaded.entry, |i| i.entry);

    let stack_size = main_stack_size(ram.size());
    let stack_bottom = STACK_TOP - stack_size;
    let initial = stack::build(
        STACK_TOP,
        stack_size,
        &ProgramInfo {
            argv: &params.argv,
            envp: &params.env,
            exe_path: &params.exe_path,
            workdir: &params.workdir,
            phdr: loaded.phdr,
            phent: program.0.phent,
            phnum: program.0.phnum,
            entry: loaded.entry,
            base: interpreter.as_ref().map_or(0, |i| i.base),
            hwcap: params.hwcap,
            random: params.at_random,
            sysinfo_ehdr,
        },
    )?;
    let stack_phys = alloc.alloc(stack_size)?;
    ram.write(stack_phys + (initial.stack_pointer - stack_bottom), &initial.bytes)?;
    // Accessed (and dirty, as every writable leaf): the stack grows into these pages without anything mapping them.
    let stack_flags = |_| PTE_USER | PTE_WRITABLE | PTE_ACCESSED;
    loader::map_range(ram, &mut alloc, pml4, stack_bottom, stack_phys, stack_size, stack_flags)?;

    let rootfs_len = params.rootfs.len() as u64;
    let rootfs_phys = match &params.rootfs {
        Rootfs::None => 0,
        Rootfs::Bytes(bytes) => {
            let phys = alloc.alloc(rootfs_len)?;
            ram.write(phys, bytes)?;
            phys
        }
        Rootfs::Mapped(image) => map_rootfs(ram, &mut alloc, image)?,
    };
    let net = match params.net {
        Some(net) => {
            let mmio = net_mmio_phys(ram.size());
            for page in (0..NET_MMIO_SIZE).step_by(PAGE_SIZE as usize) {
                paging::map_page(ram, &mut alloc, pml4, direct_map(mmio + page), mmio + page, PTE_WRITABLE | PTE_USER)
                    .map_err(|e| BootError::Map(direct_map(mmio + page), e))?;
            }
            NetInfo { mmio_phys: mmio, ..net }
        }
        None => NetInfo::default(),
    };
    let mut volumes = [VolumeInfo::default(); MAX_VOLUMES];
    for (i, volume) in params.volumes.iter().enumerate().take(MAX_VOLUMES) {
        let mmio = volume_mmio_phys(ram.size(), i);
        for page in (0..BLK_MMIO_SIZE).step_by(PAGE_SIZE as usize) {
            paging::map_page(ram, &mut alloc, pml4, direct_map(mmio + page), mmio + page, PTE_WRITABLE | PTE_USER)
                .map_err(|e| BootError::Map(direct_map(mmio + page), e))?;
        }
        volumes[i] = VolumeInfo { mmio_phys: mmio, ..*volume };
    }
    let host_signals = alloc.alloc(PAGE_SIZE)?;
    let boot_info_phys = alloc.alloc(PAGE_SIZE)?;
    let info = BootInfo {
        magic: BOOT_MAGIC,
        version: BOOT_VERSION,
        vcpu_count: params.vcpus,
        flags: if params.trace_syscalls { BOOT_FLAG_TRACE_SYSCALLS } else { 0 }
            | if params.pod_network { BOOT_FLAG_POD_NETWORK } else { 0 },
        mem_size: ram.size(),
        // Page tables for the break are allocated later by the library OS, from here on.
        free_phys_start: alloc.next_free(),
        pml4_phys: pml4,
        hypercall_block_phys: hypercall_block,
        kernel_stack_phys: kernel_stack,
        kernel_stack_size: KERNEL_STACK_SIZE,
        app_entry: start,
        app_stack_pointer: initial.stack_pointer,
        app_stack_bottom: stack_bottom,
        app_stack_top: STACK_TOP,
        brk_start: loaded.end,
        brk_mapped_end: loaded.break_mapped_end,
        exe_path_addr: initial.exe_path_addr,
        exe_path_len: initial.exe_path_len,
        workdir_addr: initial.workdir_addr,
        workdir_len: initial.workdir_len,
        tsc_hz: params.tsc_hz,
        boot_tsc: params.boot_tsc,
        boot_realtime_ns: params.boot_realtime_ns,
        random_seed: params.random_seed,
        rootfs_phys,
        rootfs_len,
        host_signals_phys: host_signals,
        net,
        volumes,
        syscall_stubs_start: loaded.stubs.start,
        syscall_stubs_end: loaded.stubs.end,
        nofile_soft: params.nofile.map_or(0, |(soft, _)| soft),
        nofile_hard: params.nofile.map_or(0, |(_, hard)| hard),
        xsave_features: params.xsave.features,
        xsave_size: params.xsave.size,
        routes: boot_routes(&params.routes),
    };
    ram.write(boot_info_phys, boot_info_bytes(&info))?;

    Ok(BootState {
        pml4,
        boot_info_phys,
        gdt_phys,
        vcpus: (0..vcpus)
            .map(|i| VcpuStart {
                rip: if i == 0 { kernel.entry } else { kernel.secondary_entry },
                rsp: direct_map(kernel_stack + (i + 1) * KERNEL_STACK_SIZE),
                rdi: direct_map(boot_info_phys),
                rsi: i,
                hypercall_block_phys: hypercall_block + i * PAGE_SIZE,
                tss_phys: tss_pages + i * PAGE_SIZE,
            })
            .collect(),
        stats_phys: kernel.stats_phys,
        threads_phys: kernel.threads_phys,
        first_instruction: start,
        stack_bottom,
        host_signals_phys: host_signals,
        fault_entry: kernel.fault_entry,
        kernel_span: kernel.span.clone(),
        vdso_code: if sysinfo_ehdr != 0 { kernel.vdso.clone() } else { Vec::new() },
        program: loaded,
        rootfs: RootfsInRam { phys: rootfs_phys, len: rootfs_len },
        auxv: initial.auxv.clone(),
    })
}

fn boot_info_bytes(info: &BootInfo) -> &[u8] {
    // SAFETY: BootInfo is repr(C) of u64/u32 pairs and a byte array, with no padding, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((info as *const BootInfo).cast::<u8>(), std::mem::size_of::<BootInfo>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trampoline_slides_into_jumps_to_the_dispatcher() {
        let page = trampoline_page(0x4000_0000_1ab7);
        assert!(page[..TRAMPOLINE_SLIDE_END as usize].iter().all(|&b| b == 0x90));
        assert!(page[TRAMPOLINE_SECOND_SLIDE as usize..TRAMPOLINE_SECOND_JUMP as usize].iter().all(|&b| b == 0x90));
        for jump in [TRAMPOLINE_SLIDE_END, TRAMPOLINE_SECOND_JUMP] {
            let at = jump as usize;
            assert_eq!(&page[at..at + 2], &[0xff, 0x25]);
            let disp = u32::from_le_bytes(page[at + 2..at + 6].try_into().unwrap()) as u64;
            assert_eq!(jump + 6 + disp, TRAMPOLINE_DISPATCH_POINTER);
        }
        let p = TRAMPOLINE_DISPATCH_POINTER as usize;
        assert_eq!(u64::from_le_bytes(page[p..p + 8].try_into().unwrap()), 0x4000_0000_1ab7);
    }

    #[test]
    fn stack_size_follows_memory() {
        assert_eq!(main_stack_size(64 << 20), 8 << 20);
        assert_eq!(main_stack_size(1 << 30), 8 << 20);
        assert_eq!(main_stack_size(4 << 20), 512 << 10);
    }
}
