//! The vDSO: the ELF shared object whose address Linux passes in `AT_SYSINFO_EHDR`, and in which libc and Go's runtime
//! look up `__vdso_clock_gettime` and friends to read the clock without a syscall.
//!
//! Kiln's clock functions are compiled into the library OS (`kernel/src/vdso.rs`), which shares the program's
//! address space, so the image built here holds no code: only what a dynamic-symbol lookup reads (the headers, a
//! dynamic section, a SysV hash table, the symbols and their `LINUX_2.6` version), with each symbol's value pointing
//! at the library OS's function relative to the image's load address. musl, glibc and Go all find a symbol as
//! "load address + st_value" after checking its type, binding, section and version, as they do on Linux.

/// The symbols Linux's x86-64 vDSO exports, each also under its plain name as a weak alias, and the library OS
/// function behind each.
pub const FUNCTIONS: [(&str, &str); 5] = [
    ("clock_gettime", "kiln_vdso_clock_gettime"),
    ("gettimeofday", "kiln_vdso_gettimeofday"),
    ("time", "kiln_vdso_time"),
    ("getcpu", "kiln_vdso_getcpu"),
    ("clock_getres", "kiln_vdso_clock_getres"),
];

const SONAME: &str = "linux-vdso.so.1";
const VERSION: &str = "LINUX_2.6";

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SYM_SIZE: usize = 24;
const VERDEF_SIZE: usize = 20;
const VERDAUX_SIZE: usize = 8;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PF_X: u32 = 1;
const PF_R: u32 = 4;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const STT_FUNC: u8 = 2;
/// Any defined section will do for the lookups (there are no section headers); Linux's vDSO has .text at 12-ish.
const TEXT_SECTION: u16 = 1;
const VER_FLG_BASE: u16 = 1;
/// Version index of `LINUX_2.6` (1 is the base definition, the object itself).
const VERSION_INDEX: u16 = 2;

const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_SONAME: u64 = 14;
const DT_VERSYM: u64 = 0x6fff_fff0;
const DT_VERDEF: u64 = 0x6fff_fffc;
const DT_VERDEFNUM: u64 = 0x6fff_fffd;

/// The SysV ELF hash of a symbol or version name.
pub fn elf_hash(name: &str) -> u32 {
    name.bytes().fold(0u32, |h, b| {
        let h = (h << 4).wrapping_add(u32::from(b));
        let high = h & 0xf000_0000;
        (h ^ (high >> 24)) & !high
    })
}

/// A string table under construction.
#[derive(Default)]
struct Strings(Vec<u8>);

impl Strings {
    fn add(&mut self, s: &str) -> u32 {
        if self.0.is_empty() {
            self.0.push(0);
        }
        let at = self.0.len() as u32;
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        at
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The vDSO image for a load address of `base`: `targets[i]` is the address of `FUNCTIONS[i]`'s library OS function.
pub fn image(base: u64, targets: &[u64; FUNCTIONS.len()]) -> Vec<u8> {
    // Symbols: index 0 is the null symbol; then `__vdso_NAME` (global) and `NAME` (weak) for each function.
    let mut strings = Strings::default();
    let soname = strings.add(SONAME);
    let version = strings.add(VERSION);
    let mut symbols = vec![(0u32, 0u8, 0u64, String::new())];
    for (&(name, _), &target) in FUNCTIONS.iter().zip(targets) {
        let value = target.wrapping_sub(base);
        let global = format!("__vdso_{name}");
        symbols.push((strings.add(&global), STB_GLOBAL, value, global));
        symbols.push((strings.add(name), STB_WEAK, value, name.to_string()));
    }
    let nsyms = symbols.len();

    // Layout: headers, hash, symbols, version indices, version definitions, strings, dynamic section.
    let phdrs = EHDR_SIZE;
    let hash = phdrs + 2 * PHDR_SIZE;
    let nbucket = nsyms;
    let hash_size = 4 * (2 + nbucket + nsyms);
    let symtab = (hash + hash_size).next_multiple_of(8);
    let versym = symtab + nsyms * SYM_SIZE;
    let verdef = (versym + 2 * nsyms).next_multiple_of(8);
    let verdef_size = 2 * (VERDEF_SIZE + VERDAUX_SIZE);
    let strtab = verdef + verdef_size;
    let dynamic = (strtab + strings.0.len()).next_multiple_of(8);
    let dyn_entries: [(u64, u64); 10] = [
        (DT_HASH, hash as u64),
        (DT_STRTAB, strtab as u64),
        (DT_SYMTAB, symtab as u64),
        (DT_STRSZ, strings.0.len() as u64),
        (DT_SYMENT, SYM_SIZE as u64),
        (DT_SONAME, u64::from(soname)),
        (DT_VERSYM, versym as u64),
        (DT_VERDEF, verdef as u64),
        (DT_VERDEFNUM, 2),
        (DT_NULL, 0),
    ];
    let size = dynamic + dyn_entries.len() * 16;
    let mut out = vec![0u8; size];

    // ELF header: 64-bit, little-endian, ET_DYN, x86-64, no section headers.
    put(&mut out, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    put(&mut out, 16, &3u16.to_le_bytes());
    put(&mut out, 18, &62u16.to_le_bytes());
    put(&mut out, 20, &1u32.to_le_bytes());
    put(&mut out, 32, &(phdrs as u64).to_le_bytes());
    put(&mut out, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut out, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut out, 56, &2u16.to_le_bytes());
    put(&mut out, 58, &64u16.to_le_bytes());

    let phdr = |out: &mut [u8], at: usize, kind: u32, offset: usize, len: usize, align: u64| {
        put(out, at, &kind.to_le_bytes());
        put(out, at + 4, &(PF_R | PF_X).to_le_bytes());
        for (field, value) in [(8, offset as u64), (16, offset as u64), (24, offset as u64), (32, len as u64)] {
            put(out, at + field, &value.to_le_bytes());
        }
        put(out, at + 40, &(len as u64).to_le_bytes());
        put(out, at + 48, &align.to_le_bytes());
    };
    phdr(&mut out, phdrs, PT_LOAD, 0, size, 4096);
    phdr(&mut out, phdrs + PHDR_SIZE, PT_DYNAMIC, dynamic, dyn_entries.len() * 16, 8);

    // SysV hash: bucket[hash % nbucket] is a symbol's first candidate, chain[i] the next after symbol i.
    let mut buckets = vec![0u32; nbucket];
    let mut chains = vec![0u32; nsyms];
    for (i, (_, _, _, name)) in symbols.iter().enumerate().skip(1) {
        let b = elf_hash(name) as usize % nbucket;
        chains[i] = buckets[b];
        buckets[b] = i as u32;
    }
    let words: Vec<u32> = [nbucket as u32, nsyms as u32].into_iter().chain(buckets).chain(chains).collect();
    for (i, w) in words.iter().enumerate() {
        put(&mut out, hash + 4 * i, &w.to_le_bytes());
    }

    for (i, (name, bind, value, _)) in symbols.iter().enumerate().skip(1) {
        let at = symtab + i * SYM_SIZE;
        put(&mut out, at, &name.to_le_bytes());
        out[at + 4] = bind << 4 | STT_FUNC;
        put(&mut out, at + 6, &TEXT_SECTION.to_le_bytes());
        put(&mut out, at + 8, &value.to_le_bytes());
        put(&mut out, versym + 2 * i, &VERSION_INDEX.to_le_bytes());
    }

    // Two version definitions: the object itself (the base), then LINUX_2.6, each with one name.
    for (i, (flags, name, name_at)) in [(VER_FLG_BASE, SONAME, soname), (0, VERSION, version)].into_iter().enumerate() {
        let at = verdef + i * (VERDEF_SIZE + VERDAUX_SIZE);
        put(&mut out, at, &1u16.to_le_bytes());
        put(&mut out, at + 2, &flags.to_le_bytes());
        put(&mut out, at + 4, &(i as u16 + 1).to_le_bytes());
        put(&mut out, at + 6, &1u16.to_le_bytes());
        put(&mut out, at + 8, &elf_hash(name).to_le_bytes());
        put(&mut out, at + 12, &(VERDEF_SIZE as u32).to_le_bytes());
        let next = if i == 0 { (VERDEF_SIZE + VERDAUX_SIZE) as u32 } else { 0 };
        put(&mut out, at + 16, &next.to_le_bytes());
        put(&mut out, at + VERDEF_SIZE, &name_at.to_le_bytes());
    }

    put(&mut out, strtab, &strings.0);
    for (i, (tag, value)) in dyn_entries.iter().enumerate() {
        put(&mut out, dynamic + 16 * i, &tag.to_le_bytes());
        put(&mut out, dynamic + 16 * i + 8, &value.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::Elf;

    #[test]
    fn hashes_match_the_ones_go_looks_up() {
        // Go's runtime (vdso_linux_amd64.go) carries these precomputed.
        assert_eq!(elf_hash("LINUX_2.6"), 0x3ae75f6);
        assert_eq!(elf_hash("__vdso_gettimeofday"), 0x315ca59);
        assert_eq!(elf_hash("__vdso_clock_gettime"), 0xd35ec75);
    }

    /// Looks `name` up as musl's `__vdsosym` and Go's runtime do: through the hash table, checking type, binding,
    /// section and version; returns load address + value.
    fn lookup(image: &[u8], base: u64, name: &str) -> Option<u64> {
        let elf = Elf::parse(image).expect("a well-formed ELF");
        let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
        let dynamic = elf.dynamic.as_ref().expect("a dynamic section");
        let tag = |t: u64| dynamic.dyns.iter().find(|d| d.d_tag == t).map(|d| d.d_val as usize);
        let (hash, symtab, strtab, versym) = (tag(DT_HASH)?, tag(DT_SYMTAB)?, tag(DT_STRTAB)?, tag(DT_VERSYM)?);
        let nbucket = word(hash) as usize;
        let mut i = word(hash + 8 + 4 * (elf_hash(name) as usize % nbucket)) as usize;
        while i != 0 {
            let at = symtab + i * SYM_SIZE;
            let name_at = strtab + word(at) as usize;
            let end = image[name_at..].iter().position(|&b| b == 0)? + name_at;
            let info = image[at + 4];
            let section = u16::from_le_bytes(image[at + 6..at + 8].try_into().unwrap());
            let version = u16::from_le_bytes(image[versym + 2 * i..versym + 2 * i + 2].try_into().unwrap());
            if &image[name_at..end] == name.as_bytes() && info & 0xf == STT_FUNC && section != 0 {
                assert_eq!(version, VERSION_INDEX);
                let value = u64::from_le_bytes(image[at + 8..at + 16].try_into().unwrap());
                return Some(base.wrapping_add(value));
            }
            i = word(hash + 8 + 4 * nbucket + 4 * i) as usize;
        }
        None
    }

    #[test]
    fn every_symbol_resolves_to_its_function() {
        let base = 0x4000_0010_0000;
        let targets = [0x4000_0020_0000, 0x4000_0020_0100, 0x4000_0020_0200, 0x4000_0000_0300, 0x4000_0020_0400];
        let image = image(base, &targets);
        for (&(name, _), &target) in FUNCTIONS.iter().zip(&targets) {
            assert_eq!(lookup(&image, base, &format!("__vdso_{name}")), Some(target), "{name}");
            assert_eq!(lookup(&image, base, name), Some(target), "{name}");
        }
        assert_eq!(lookup(&image, base, "__vdso_sgx_enter_enclave"), None);
        let elf = Elf::parse(&image).unwrap();
        assert_eq!(elf.header.e_type, goblin::elf::header::ET_DYN);
        assert!(image.len() <= 4096, "the image fits one page");
    }
}
