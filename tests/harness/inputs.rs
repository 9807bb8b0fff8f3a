//! Bad inputs for `kiln run`, written to a scratch directory of this test process.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A fresh file path in this process's scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir.join(name)
}

fn write_executable(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch(name);
    std::fs::write(&path, bytes).expect("write a scratch file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod a scratch file");
    path
}

/// An executable text file (a shell script): not an ELF.
pub fn text_file() -> PathBuf {
    write_executable("script.sh", b"#!/bin/sh\necho this is not an ELF file\n")
}

/// A well-formed 64-bit little-endian ELF executable for AArch64 (e_machine 183): one PT_LOAD segment of `ret`.
pub fn aarch64_elf() -> PathBuf {
    const BASE: u64 = 0x40_0000;
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let code: [u8; 4] = 0xd65f_03c0u32.to_le_bytes(); // ret
    let entry = BASE + EHDR + PHDR;
    let size = EHDR + PHDR + code.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV
    f.extend_from_slice(&[0; 8]); // padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&183u16.to_le_bytes()); // e_machine: EM_AARCH64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&entry.to_le_bytes()); // e_entry
    f.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len() as u64, EHDR);
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R X
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    f.extend_from_slice(&size.to_le_bytes()); // p_filesz
    f.extend_from_slice(&size.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(&code);
    write_executable("aarch64-ret", &f)
}

/// A 24 KiB static x86-64 executable that exits with 7, whose loadable segments span `span` bytes: its code segment
/// runs on as `span` bytes of executable bss (`code_bss`), or a writable page lies `span` bytes above its start.
pub fn wide_elf(span: u64, code_bss: bool) -> PathBuf {
    const BASE: u64 = 0x40_0000;
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    const FILE: u64 = 24 << 10;
    // mov $60, %eax; mov $7, %edi; syscall
    let code = [0xb8, 60, 0, 0, 0, 0xbf, 7, 0, 0, 0, 0x0f, 0x05];
    let entry = BASE + EHDR + 2 * PHDR;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[64, 0, 0, 0, 0, 0]); // e_shentsize, e_shnum, e_shstrndx
    let (code_mem, far) = if code_bss { (span - 0x1000, span - 0x1000) } else { (FILE, span - 0x1000) };
    // (flags, offset, vaddr, filesz, memsz): the code (headers included), then a writable page.
    for (flags, offset, vaddr, filesz, memsz) in [(5u32, 0, BASE, FILE, code_mem), (6, 0, BASE + far, 0x1000, 0x1000)] {
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f.extend_from_slice(&flags.to_le_bytes());
        for v in [offset, vaddr, vaddr, filesz, memsz, 0x1000u64] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    f.extend_from_slice(&code);
    f.resize(FILE as usize, 0);
    let kind = if code_bss { "code" } else { "far" };
    write_executable(&format!("wide-{kind}-{}m", span >> 20), &f)
}

/// A path that does not exist.
pub fn missing_file() -> PathBuf {
    scratch("no-such-program")
}
