//! Shared objects (a program's dynamic loader and the libraries it opens) with their `syscall`s rewritten, as files:
//! the dynamic loader maps them with `mmap` wherever the library OS puts them, so everything the rewrite adds must
//! work at any base. The stubs go into one more `PT_LOAD` (read+execute) appended to the file, at the same offset
//! in the file as in memory, after everything else, with a copy of the program headers that names it (and a
//! `PT_PHDR` moved there). The stubs reach their code by relative jumps, and their entry slot holds
//! `SYSCALL_GATEWAY_ENTRY`, a fixed address whose page jumps to the library OS's syscall entry (the page-0 trampoline's
//! code, mapped a second time at `SYSCALL_GATEWAY_VADDR`): nothing in the object depends on where it or the
//! library OS lies, so the rewrite is cached by content, and the library OS maps the file as any other.

use crate::elf::{ElfError, ElfImage};
use crate::rewrite::{
    self, ExecSegment, FunctionSymbol, RewriteInput, RewriteReport, ENTRY_SLOT, RESTART_TABLE_OFFSET,
};
use kiln_abi::layout::{page_align_up, SYSCALL_GATEWAY_ENTRY as GATEWAY_ENTRY};

const PT_LOAD: u32 = 1;
const PT_PHDR: u32 = 6;
const PF_X: u32 = 1;
const PF_R: u32 = 4;
const PHENT: usize = 56;
/// Most zeros the rewrite adds to a file to place its stub segment at the same offset as in memory.
const MAX_PADDING: u64 = 16 << 20;
/// Offsets in the ELF header.
const E_PHOFF: usize = 32;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;

#[derive(Debug, thiserror::Error)]
pub enum SharedObjectError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("rewriting syscall instructions failed")]
    Rewrite(#[source] rewrite::RewriteError),
    #[error("malformed ELF: program headers of {0} bytes each")]
    ProgramHeaders(u64),
}

/// A shared object ready for the guest: its bytes as a file, and how its syscall sites were handled.
#[derive(Debug, Clone)]
pub struct RewrittenObject {
    pub bytes: Vec<u8>,
    pub report: RewriteReport,
}

/// Rewrites the `syscall`s of the shared object (or dynamic loader) `file`; see the module doc. An object without
/// syscall sites comes back unchanged.
pub fn rewrite_object(file: &[u8]) -> Result<RewrittenObject, SharedObjectError> {
    let elf = ElfImage::parse_any(file)?;
    if elf.phent != PHENT as u64 {
        return Err(SharedObjectError::ProgramHeaders(elf.phent));
    }
    let (_, span_end) = elf.span();
    // The added segment lies at the same offset in the file as in memory: the dynamic loader finds its own program
    // headers at its base plus `e_phoff` (glibc's rtld reads them through `__ehdr_start`). Unless that would pad the
    // file by more than `MAX_PADDING` (an object with a large bss: its size is what the ELF claims, and nothing on
    // the host is sized by that); then the segment goes at the end of the file, mapped after the bss, and only a
    // loader that finds its headers through `PT_PHDR` (every one, for the objects it maps itself) reads it right.
    let file_end = page_align_up(file.len() as u64);
    let vaddr = page_align_up(span_end).max(file_end);
    let offset = if vaddr - file_end > MAX_PADDING { file_end } else { vaddr };
    let at = vaddr;
    let phoff = read_u64(file, E_PHOFF) as usize;
    let phnum = elf.phnum as usize;
    let old_table = file.get(phoff..phoff + phnum * PHENT).ok_or(SharedObjectError::ProgramHeaders(elf.phent))?;
    let table_len = (phnum + 1) * PHENT;
    let stub_base = at + table_len.next_multiple_of(16) as u64;

    let mut code: Vec<(u64, u64, Vec<u8>)> = elf
        .segments
        .iter()
        .filter(|s| s.executable && s.file_size != 0)
        .map(|s| (s.vaddr, s.file_offset, file[s.file_offset as usize..][..s.file_size as usize].to_vec()))
        .collect();
    let pieces: Vec<(u64, u64)> = code.iter().map(|(v, _, b)| (*v, v + b.len() as u64)).collect();
    let code_ranges: Vec<(u64, u64)> = elf
        .code_ranges
        .iter()
        .flat_map(|&(start, end)| pieces.iter().map(move |&(lo, hi)| (start.max(lo), end.min(hi))))
        .filter(|(lo, hi)| lo < hi)
        .collect();
    let code_ranges = if elf.code_ranges.is_empty() { pieces } else { code_ranges };
    let functions = elf.functions.iter().map(|&(vaddr, size)| FunctionSymbol { vaddr, size }).collect();
    let segments = code.iter_mut().map(|(vaddr, _, bytes)| ExecSegment { vaddr: *vaddr, bytes }).collect();
    let rewritten = rewrite::rewrite_syscalls(RewriteInput { segments, code_ranges, functions, stub_base })
        .map_err(SharedObjectError::Rewrite)?;
    let report = rewritten.report;
    let mut bytes = file.to_vec();
    for (_, offset, patched) in &code {
        bytes[*offset as usize..][..patched.len()].copy_from_slice(patched);
    }
    if rewritten.stubs.is_empty() {
        return Ok(RewrittenObject { bytes, report });
    }
    let mut stubs = rewritten.stubs;
    stubs[ENTRY_SLOT].copy_from_slice(&GATEWAY_ENTRY.to_le_bytes());
    // The restart table names addresses relative to the stub area, since the object may be mapped anywhere (the
    // library OS adds where it found the area).
    let table = read_u64(&stubs, RESTART_TABLE_OFFSET.start) as usize;
    for word in stubs[table..].chunks_exact_mut(8) {
        let relative = u64::from_le_bytes((&*word).try_into().expect("8 bytes")).wrapping_sub(stub_base);
        word.copy_from_slice(&relative.to_le_bytes());
    }
    let segment_len = (stub_base - at) + stubs.len() as u64;

    // The new table: the old entries (PT_PHDR now naming the new table), the new PT_LOAD after the last PT_LOAD,
    // since a dynamic loader expects them in address order.
    let last_load = (0..phnum).rev().find(|&i| read_u32(old_table, i * PHENT) == PT_LOAD).unwrap_or(phnum - 1);
    let mut table = Vec::with_capacity(table_len);
    for i in 0..phnum {
        let mut entry = old_table[i * PHENT..][..PHENT].to_vec();
        if read_u32(&entry, 0) == PT_PHDR {
            entry[8..48].copy_from_slice(&phdr_words(offset, vaddr, table_len as u64));
        }
        table.extend(entry);
        if i == last_load {
            let mut load = vec![0u8; PHENT];
            load[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            load[4..8].copy_from_slice(&(PF_R | PF_X).to_le_bytes());
            load[8..48].copy_from_slice(&phdr_words(offset, vaddr, segment_len));
            load[48..56].copy_from_slice(&kiln_abi::layout::PAGE_SIZE.to_le_bytes());
            table.extend(load);
        }
    }
    bytes.resize(offset as usize, 0);
    bytes.extend(&table);
    bytes.resize((stub_base - at + offset) as usize, 0);
    bytes.extend(&stubs);
    bytes[E_PHOFF..E_PHOFF + 8].copy_from_slice(&offset.to_le_bytes());
    bytes[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&(PHENT as u16).to_le_bytes());
    bytes[E_PHNUM..E_PHNUM + 2].copy_from_slice(&((phnum + 1) as u16).to_le_bytes());
    Ok(RewrittenObject { bytes, report })
}

/// p_offset, p_vaddr, p_paddr, p_filesz, p_memsz of `len` bytes at `offset` in the file and `vaddr` in memory.
fn phdr_words(offset: u64, vaddr: u64, len: u64) -> [u8; 40] {
    let mut words = [0u8; 40];
    for (i, v) in [offset, vaddr, vaddr, len, len].into_iter().enumerate() {
        words[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    words
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::tests::program;

    #[test]
    fn stubs_go_into_a_segment_of_their_own_at_the_same_offset_and_address() {
        let file = program(0x1000);
        let out = rewrite_object(&file).unwrap();
        assert_eq!(out.report.relocated.len(), 8);
        let elf = ElfImage::parse_any(&out.bytes).unwrap();
        assert_eq!(elf.phnum, 3);
        let added = elf.segments.last().unwrap();
        assert!(added.executable && !added.writable);
        assert_eq!(added.vaddr, added.file_offset);
        assert_eq!(added.file_offset + added.file_size, out.bytes.len() as u64);
        // The program headers are at the start of the added segment, so at base + e_phoff once loaded.
        assert_eq!(read_u64(&out.bytes, E_PHOFF), added.vaddr);
        // The stubs' entry slot names the gateway, not any library OS address.
        let stubs = (added.file_offset as usize + (3 * PHENT).next_multiple_of(16))..out.bytes.len();
        assert_eq!(read_u64(&out.bytes[stubs], 0), GATEWAY_ENTRY);
        // The code was patched: no `syscall` is left where the originals were.
        for &site in &out.report.relocated {
            let off = site as usize - crate::loader::tests::TEXT as usize;
            assert_ne!(&out.bytes[off..off + 2], &[0x0f, 0x05]);
        }
    }
}

#[cfg(test)]
mod big_bss {
    use super::*;
    use crate::loader::tests::program;

    #[test]
    fn a_large_bss_does_not_pad_the_file() {
        // 1 GiB of bss claimed (still within a rel32 of the code): the stub segment goes at the file's end, mapped
        // after the bss, instead of a file padded to 1 GiB.
        let mut file = program(0x1000);
        let data_memsz = 64 + 56 + 40;
        file[data_memsz..data_memsz + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
        let out = rewrite_object(&file).unwrap();
        assert_eq!(out.report.relocated.len(), 8);
        assert!(out.bytes.len() < file.len() + (1 << 20), "{} bytes", out.bytes.len());
        let elf = ElfImage::parse_any(&out.bytes).unwrap();
        let added = elf.segments.last().unwrap();
        assert!(added.executable && added.vaddr > 1 << 30);
        assert_eq!(added.file_offset + added.file_size, out.bytes.len() as u64);
    }
}

#[cfg(test)]
mod host_objects {
    use super::*;

    /// The host's glibc (and OpenSSL, libstdc++, python3), rewritten as `kiln run` rewrites them (each skipped where
    /// the host has none): every site is handled and the result parses with one more segment.
    #[test]
    fn the_hosts_glibc_rewrites() {
        for path in [
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libcrypto.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/bin/python3",
        ] {
            let Ok(file) = std::fs::read(path) else { continue };
            let out = rewrite_object(&file).unwrap();
            let before = ElfImage::parse_any(&file).unwrap();
            let after = ElfImage::parse_any(&out.bytes).unwrap();
            let added = usize::from(!out.report.relocated.is_empty());
            assert_eq!(after.phnum, before.phnum + added as u64, "{path}");
            eprintln!("{path}: {}", out.report.counts());
        }
    }
}
