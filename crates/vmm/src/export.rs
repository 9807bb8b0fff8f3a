//! `kiln export --format pvh`: the boot layout Kiln's VMM would build for a run (`boot::build_from`, above the
//! first MiBs), the platform layer (`kernel/pvh`) below it, and a [`Handoff`] telling the platform layer what the VMM
//! would have put in the vCPU, written as one ELF whose PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) QEMU's `-kernel`,
//! Firecracker and Cloud Hypervisor boot. This is the host side's one module that knows about other hypervisors.

use crate::boot::{self, BootError, BootParams, MIN_MEMORY};
use crate::elf::{ElfError, ElfImage};
use crate::loader;
use crate::memory::{BootAllocator, GuestRam, HugePages, MemoryError};
use crate::vm::{self, VmConfig, VmError};
use kiln_abi::boot::{BootInfo, VolumeInfo, MAX_VOLUMES, MOUNT_PATH_MAX};
use kiln_abi::layout::{DIRECT_MAP_BASE, HUGE_PAGE_SIZE, PAGE_SIZE};
use kiln_abi::pvh::{Handoff, HANDOFF_MAGIC, LAYOUT_PHYS, PLATFORM_PHYS, UEFI_PLATFORM_PHYS, XEN_ELFNOTE_PHYS32_ENTRY};

/// `AT_HWCAP` of an exported program: CPUID.1:EDX as every x86-64 CPU has it (FPU, TSC, CX8, CMOV, MMX, FXSR, SSE,
/// SSE2 and their kin), since the CPU it will boot on is not known; libc asks CPUID itself for the rest.
const BASELINE_HWCAP: u64 = 0x0789_8b7f & 0x0781_abff;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{0} cannot be exported yet: an exported image has {1}")]
    Unsupported(&'static str, &'static str),
    #[error("the platform layer image is broken: {0}")]
    Platform(&'static str),
    #[error("the platform layer image is not a usable ELF")]
    PlatformElf(#[source] ElfError),
    #[error("the platform layer ({size} bytes) does not fit below the boot layout")]
    PlatformTooBig { size: u64 },
    #[error("guest memory is too small for the library OS and the program")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("the mount path {0} is longer than {MOUNT_PATH_MAX} bytes")]
    MountTooLong(String),
}

/// Who boots an exported image, which decides where it lies in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// A PVH loader (QEMU `-kernel`, Firecracker, Cloud Hypervisor): from 1 MiB, as Linux's PVH entry lies.
    Pvh,
    /// Kiln's UEFI loader (`kiln export --format raw|qcow2`): from 16 MiB, above the memory UEFI firmware keeps low.
    Uefi,
}

impl Loader {
    /// Where the platform layer goes; the boot layout starts 1 MiB above it.
    fn platform_phys(self) -> u64 {
        match self {
            Self::Pvh => PLATFORM_PHYS,
            Self::Uefi => UEFI_PLATFORM_PHYS,
        }
    }
}

/// The exported image's bytes: `kernel` (the library OS) and `program` booted as `config` says, by `platform` (the
/// platform layer's ELF) on `loader`, with volumes mounted at `volume_mounts` (absolute, normalised paths), whose
/// virtio-blk devices the platform layer finds at boot, in the same order. Under [`Loader::Uefi`] the image's memory
/// is `config.memory` above where it starts (15 MiB higher than a PVH loader's), so the program gets as much.
pub fn pvh(
    kernel_elf: &[u8],
    program_elf: &[u8],
    platform_elf: &[u8],
    config: VmConfig,
    volume_mounts: &[String],
    loader: Loader,
) -> Result<Vec<u8>, ExportError> {
    let platform_base = loader.platform_phys();
    let layout_base = platform_base + (LAYOUT_PHYS - PLATFORM_PHYS);
    if config.cpus == 0 || config.cpus > vm::MAX_VCPUS {
        return Err(VmError::Cpus(config.cpus).into());
    }
    if config.net.is_some() {
        return Err(ExportError::Unsupported("a network card", "no network yet (use --net none)"));
    }
    if !config.volumes.is_empty() {
        return Err(ExportError::Unsupported("an attached volume", "only mount paths (the host attaches the disks)"));
    }
    if volume_mounts.len() > MAX_VOLUMES {
        return Err(VmError::TooManyVolumes.into());
    }
    if let Some(long) = volume_mounts.iter().find(|m| m.len() > MOUNT_PATH_MAX) {
        return Err(ExportError::MountTooLong(long.clone()));
    }
    if config.trace_syscalls {
        return Err(ExportError::Unsupported("--trace-syscalls", "no host to trace to"));
    }
    if config.memory < MIN_MEMORY + LAYOUT_PHYS {
        return Err(VmError::MemoryTooSmall { requested: config.memory, minimum: MIN_MEMORY + LAYOUT_PHYS }.into());
    }
    let memory = (config.memory + platform_base - PLATFORM_PHYS).div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
    let (kernel, program, prepared) = vm::prepare(
        kernel_elf,
        program_elf,
        memory,
        config.rewrite_cache.as_deref(),
        config.prepared.as_deref(),
        config.program_identity.as_deref(),
    )?;
    if let Some(interp) = program.interpreter.as_ref().filter(|_| config.interpreter.is_empty()) {
        return Err(VmError::Program(ElfError::Dynamic(interp.clone())).into());
    }
    let platform = ElfImage::parse(platform_elf).map_err(ExportError::PlatformElf)?;
    let mut ram = GuestRam::with_huge_pages(memory, HugePages::No)?;

    let mut below = BootAllocator::new(platform_base, layout_base);
    let placed = loader::load_kernel(&ram, &mut below, &platform, platform_elf).map_err(|e| match e {
        loader::LoaderError::Memory(_) => ExportError::PlatformTooBig { size: platform_size(&platform) },
        other => ExportError::Boot(other.into()),
    })?;
    let platform_phys = |name: &'static str| {
        let at = platform.symbol(name).ok_or(ExportError::Platform(name))?;
        Ok::<u64, ExportError>(
            placed.span.start - DIRECT_MAP_BASE + (at - kiln_abi::layout::page_align_down(platform.span().0)),
        )
    };
    let entry32 = platform_phys("kiln_pvh_start32")?;
    let handoff_phys = platform_phys("KILN_PVH_HANDOFF")?;
    if entry32 >= 1 << 32 {
        return Err(ExportError::Platform("kiln_pvh_start32 above 4 GiB"));
    }

    let at_random: [u8; 16] = vm::host_random()?;
    let params = BootParams {
        argv: config.argv,
        env: config.env,
        exe_path: config.exe_path,
        workdir: config.workdir,
        // The platform layer starts as many as the machine has, up to these, and tells the library OS how many.
        vcpus: config.cpus,
        trace_syscalls: false,
        pod_network: false,
        // Replaced at boot by the platform layer (fresh entropy, the CPU's TSC and the RTC).
        random_seed: vm::host_random()?,
        at_random,
        hwcap: BASELINE_HWCAP,
        xsave: Default::default(),
        tsc_hz: 0,
        boot_tsc: 0,
        boot_realtime_ns: 0,
        rootfs: config.rootfs,
        interpreter: config.interpreter,
        objects_need_page0: config.objects_need_page0,
        net: None,
        volumes: Vec::new(),
        nofile: config.nofile,
        routes: Vec::new(),
    };
    let state =
        boot::build_from(&mut ram, layout_base, (&kernel, kernel_elf), (&program, program_elf, prepared), &params)?;
    // The volumes' mount paths, without register windows: the platform layer fills those in with what it finds.
    for (i, mount) in volume_mounts.iter().enumerate() {
        let entry = state.boot_info_phys
            + std::mem::offset_of!(BootInfo, volumes) as u64
            + (i * std::mem::size_of::<VolumeInfo>()) as u64;
        ram.write(entry + std::mem::offset_of!(VolumeInfo, mount_len) as u64, &(mount.len() as u32).to_le_bytes())?;
        ram.write(entry + std::mem::offset_of!(VolumeInfo, mount) as u64, mount.as_bytes())?;
    }
    let vcpu = &state.vcpus[0];
    let vdso = state.vdso_code.iter().fold(None, |span: Option<(u64, u64)>, f| match span {
        Some((s, e)) => Some((s.min(f.start), e.max(f.end))),
        None => Some((f.start, f.end)),
    });
    let mut handoff = Handoff {
        magic: HANDOFF_MAGIC,
        boot_info_phys: state.boot_info_phys,
        pml4_phys: state.pml4,
        gdt_phys: state.gdt_phys,
        tss_phys: vcpu.tss_phys,
        hypercall_block_phys: vcpu.hypercall_block_phys,
        entry: vcpu.rip,
        stack_pointer: vcpu.rsp,
        fault_entry: state.fault_entry,
        kernel_start: state.kernel_span.start,
        kernel_end: state.kernel_span.end,
        vdso_start: vdso.map_or(0, |v| v.0),
        vdso_end: vdso.map_or(0, |v| v.1),
        lstar: crate::arch::trap_page::LSTAR,
        at_random_phys: 0,
        layout_phys: layout_base,
        secondary_entry: state.vcpus.get(1).map_or(0, |v| v.rip),
    };
    let image = ram.read_vec(platform_base, memory - platform_base)?;
    handoff.at_random_phys = find(&image, &at_random).map_or(0, |at| platform_base + at as u64);
    let mut image = image;
    let off = (handoff_phys - platform_base) as usize;
    image[off..off + std::mem::size_of::<Handoff>()].copy_from_slice(handoff_bytes(&handoff));
    Ok(write_elf(platform_base, &image, entry32 as u32))
}

fn platform_size(elf: &ElfImage) -> u64 {
    let (start, end) = elf.span();
    end - start
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn handoff_bytes(h: &Handoff) -> &[u8] {
    // SAFETY: Handoff is repr(C) and made of u64 fields only (no padding), so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts((h as *const Handoff).cast::<u8>(), std::mem::size_of::<Handoff>()) }
}

/// The page runs of `image` (guest-physical from `base`) that hold something: each becomes a PT_LOAD segment whose
/// file bytes end at its last non-zero byte and whose memory size reaches the next run, so that the loader zeroes
/// the gaps (firmware may have left bytes there) and the file carries no zero pages.
fn runs(image: &[u8]) -> Vec<(usize, usize, usize)> {
    let page = PAGE_SIZE as usize;
    let used: Vec<bool> = image.chunks(page).map(|p| p.iter().any(|&b| b != 0)).collect();
    let mut starts = Vec::new();
    for (i, &u) in used.iter().enumerate() {
        if u && (i == 0 || !used[i - 1]) {
            starts.push(i * page);
        }
    }
    let end_of_data = used.iter().rposition(|&u| u).map_or(0, |i| (i + 1) * page);
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let next = starts.get(k + 1).copied().unwrap_or(end_of_data);
            let data = image[start..next].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            (start, data, next - start)
        })
        .collect()
}

/// An ELF64 executable: one PT_LOAD per run (physical = virtual = guest-physical address), and a PT_NOTE with the
/// PVH entry. Written by hand: a few fixed-size headers, which a general ELF writer would need spelled out field by
/// field all the same.
fn write_elf(base: u64, image: &[u8], entry32: u32) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let runs = runs(image);
    let phnum = runs.len() + 1;
    let note_at = EHDR + phnum * PHDR;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&entry32.to_le_bytes());
    let mut data_at = (note_at + note.len()).next_multiple_of(16);

    let mut out = vec![0u8; EHDR];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    let put16 = |out: &mut Vec<u8>, at: usize, v: u16| out[at..at + 2].copy_from_slice(&v.to_le_bytes());
    put16(&mut out, 16, 2); // ET_EXEC
    put16(&mut out, 18, 62); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&u64::from(entry32).to_le_bytes());
    out[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    put16(&mut out, 52, EHDR as u16);
    put16(&mut out, 54, PHDR as u16);
    put16(&mut out, 56, phnum as u16);
    put16(&mut out, 58, 64); // e_shentsize, with no sections
    let phdr = |kind: u32, flags: u32, offset: u64, addr: u64, filesz: u64, memsz: u64, align: u64| {
        let mut p = Vec::with_capacity(PHDR);
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        for v in [offset, addr, addr, filesz, memsz, align] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    };
    let mut bodies = Vec::new();
    for &(start, len, memsz) in &runs {
        out.extend(phdr(1, 7, data_at as u64, base + start as u64, len as u64, memsz as u64, 16));
        bodies.push((data_at, &image[start..start + len]));
        data_at = (data_at + len).next_multiple_of(16);
    }
    out.extend(phdr(4, 4, note_at as u64, 0, note.len() as u64, note.len() as u64, 4));
    out.extend_from_slice(&note);
    for (at, bytes) in bodies {
        out.resize(at, 0);
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_zero_pages_and_cover_the_gaps() {
        let page = PAGE_SIZE as usize;
        let mut image = vec![0u8; 6 * page];
        image[10] = 1;
        image[page + 5] = 2;
        image[4 * page + 7] = 3;
        assert_eq!(runs(&image), vec![(0, page + 6, 4 * page), (4 * page, 8, page)]);
    }

    #[test]
    fn elf_has_the_pvh_note_and_the_segments() {
        let page = PAGE_SIZE as usize;
        let mut image = vec![0u8; 3 * page];
        image[0] = 0xaa;
        image[2 * page] = 0xbb;
        let elf = write_elf(PLATFORM_PHYS, &image, 0x10_0040);
        assert_eq!(&elf[..4], b"\x7fELF");
        let phnum = u16::from_le_bytes([elf[56], elf[57]]) as usize;
        assert_eq!(phnum, 3);
        let ph = |i: usize, field: usize| {
            let at = 64 + i * 56 + field;
            u64::from_le_bytes(elf[at..at + 8].try_into().unwrap())
        };
        // The first segment: one byte at 1 MiB, reaching the second run.
        assert_eq!((ph(0, 16), ph(0, 32), ph(0, 40)), (PLATFORM_PHYS, 1, 2 * PAGE_SIZE));
        assert_eq!(elf[ph(0, 8) as usize], 0xaa);
        assert_eq!(elf[ph(1, 8) as usize], 0xbb);
        let note = ph(2, 8) as usize;
        assert_eq!(u32::from_le_bytes(elf[note + 8..note + 12].try_into().unwrap()), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&elf[note + 12..note + 16], b"Xen\0");
        assert_eq!(u32::from_le_bytes(elf[note + 16..note + 20].try_into().unwrap()), 0x10_0040);
    }
}
