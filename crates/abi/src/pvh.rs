//! PVH boot of an exported image (`kiln export --format pvh`): the Xen/PVH start-of-day structures a PVH loader
//! (QEMU's `-kernel`, Firecracker, Cloud Hypervisor) hands the image, and the [`Handoff`] through which the host's
//! export tells the image's platform layer (`kernel/pvh`) what Kiln's VMM would have set up in the vCPU.

/// ELF note type of the 32-bit physical entry point (`XEN_ELFNOTE_PHYS32_ENTRY`), in a note named "Xen".
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info::magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// `hvm_memmap_table_entry::type`: usable RAM (the e820 numbering).
pub const MEMMAP_RAM: u32 = 1;

/// Where the platform layer is loaded (guest-physical): past the first MiB, which firmware, the PVH loader's option
/// ROM and the start info use, and which PC machines do not fill with RAM (the VGA hole).
pub const PLATFORM_PHYS: u64 = 1 << 20;
/// First guest-physical byte of the boot layout (`kiln_vmm::boot`); the platform layer fits below it.
pub const LAYOUT_PHYS: u64 = 2 << 20;
/// Where the platform layer of a UEFI disk image's payload is loaded (`kiln export --format raw|qcow2`), the boot
/// layout 1 MiB above: past what OVMF keeps below 16 MiB for itself (its SEC and PEI work areas at 8 MiB, ACPI NVS
/// when the machine has S3), which a UEFI loader may not overwrite.
pub const UEFI_PLATFORM_PHYS: u64 = 16 << 20;

/// `Handoff::magic`: "KILNPVH1".
pub const HANDOFF_MAGIC: u64 = u64::from_le_bytes(*b"KILNPVH1");

/// The start of day a PVH loader passes in `%ebx` (Xen's `hvm_start_info`, version 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// Version 1 and later.
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// One entry of the start info's memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

/// What the export built and the platform layer needs to start the library OS as Kiln's VMM starts it, at the
/// platform layer's `KILN_PVH_HANDOFF` symbol. Addresses are guest-physical unless they say otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Handoff {
    pub magic: u64,
    pub boot_info_phys: u64,
    pub pml4_phys: u64,
    pub gdt_phys: u64,
    /// vCPU 0's TSS (its page holds nothing else the platform layer needs).
    pub tss_phys: u64,
    pub hypercall_block_phys: u64,
    /// Virtual: the library OS's `_start`, and its first stack pointer.
    pub entry: u64,
    pub stack_pointer: u64,
    /// Virtual: `kiln_fault_entry`, the library OS's span and the vDSO's functions' span inside it (the program's
    /// code as far as faults go).
    pub fault_entry: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
    pub vdso_start: u64,
    pub vdso_end: u64,
    /// Virtual: where `syscall` goes (LSTAR), the supervisor page's code for unrewritten syscalls.
    pub lstar: u64,
    /// Guest-physical address of the 16 `AT_RANDOM` bytes on the program's initial stack (0 if not found): the
    /// export's bytes would be the same at every boot, so the platform layer mixes fresh ones in.
    pub at_random_phys: u64,
    /// Guest-physical: the boot layout's first byte (the RAM the library OS gets grows from there).
    pub layout_phys: u64,
    /// Virtual: the library OS's `kiln_secondary_start`, where vCPUs 1.. enter it (`%rdi` = the boot info, `%rsi` =
    /// their index, `%rsp` = the top of their kernel stack in the boot info's `kernel_stack_phys` array).
    pub secondary_entry: u64,
}

impl Handoff {
    pub fn is_valid(&self) -> bool {
        self.magic == HANDOFF_MAGIC
    }
}
