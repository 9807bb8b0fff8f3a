//! A hostile program file through everything a boot does with it on the host: parse (as an executable, and as any
//! ELF), the span check against guest memory (a file may claim a span of any size: it must be refused before
//! anything is sized by it), the syscall rewrite, loading into 16 MiB of guest memory with page tables, and the
//! rewrite cache's encoding of the result; and, for a shared object, the rewrite of the file that the dynamic loader
//! maps.
#![no_main]

use kiln_abi::layout::PAGE_SIZE;
use kiln_vmm::elf::{ElfImage, ElfKind};
use kiln_vmm::loader::{check_fits, load_program, prepare_program};
use kiln_vmm::memory::{BootAllocator, GuestRam};
use kiln_vmm::{rewrite_cache, shared_object};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 16 << 20;
/// Where the library OS's syscall entry would be.
const ENTRY: u64 = 0x4000_0001_0000;

fuzz_target!(|file: &[u8]| {
    if let Ok(elf) = ElfImage::parse_any(file) {
        let _ = (elf.span(), elf.symbol("kiln_syscall_entry"), elf.symbol_extent("main"));
        if elf.kind == ElfKind::Library {
            let _ = shared_object::rewrite_object(file);
        }
    }
    let Ok(elf) = ElfImage::parse(file) else { return };
    if check_fits(&elf, RAM).is_err() {
        return;
    }
    let Ok(prepared) = prepare_program(&elf, file) else { return };
    let entry = rewrite_cache::encode(&prepared);
    let decoded = rewrite_cache::decode(&entry).expect("an encoded preparation decodes");
    assert_eq!(rewrite_cache::encode(&decoded), entry);
    let mut ram = GuestRam::new(RAM).expect("guest memory");
    let mut alloc = BootAllocator::new(PAGE_SIZE, RAM);
    let pml4 = alloc.alloc(PAGE_SIZE).expect("a page for the page tables' root");
    let _ = load_program(&mut ram, &mut alloc, pml4, (&elf, file), prepared, ENTRY);
});
