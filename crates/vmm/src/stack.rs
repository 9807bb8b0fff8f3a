//! The program's initial stack as Linux lays it out for a new process: argc, argv, envp and the auxiliary vector,
//! followed by the strings and bytes they point to. Built on the host as a byte image of the stack's top.

pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;

/// What the program learns about itself at start-up.
#[derive(Clone, Debug)]
pub struct ProgramInfo<'a> {
    pub argv: &'a [String],
    pub envp: &'a [String],
    /// The executable's absolute path in the guest (for `/proc/self/exe`).
    pub exe_path: &'a str,
    /// The directory the program starts in (for the library OS; "" for the root).
    pub workdir: &'a str,
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    pub entry: u64,
    /// Where the dynamic loader is (AT_BASE), 0 for a static program.
    pub base: u64,
    pub hwcap: u64,
    pub random: [u8; 16],
    /// The vDSO's address, 0 for none.
    pub sysinfo_ehdr: u64,
}

/// The top of the initial stack: `bytes` go at `stack_pointer`, ending exactly at the stack top.
#[derive(Clone, Debug)]
pub struct InitialStack {
    pub stack_pointer: u64,
    pub bytes: Vec<u8>,
    /// Where `ProgramInfo::exe_path` ended up.
    pub exe_path_addr: u64,
    pub exe_path_len: u64,
    /// Where `ProgramInfo::workdir` ended up.
    pub workdir_addr: u64,
    pub workdir_len: u64,
    /// The auxiliary vector's bytes (pairs of words, AT_NULL last), for core files' `NT_AUXV`.
    pub auxv: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("the arguments and environment ({0} bytes) do not fit in the {1}-byte stack")]
    TooBig(u64, u64),
    #[error("argument or environment string contains a NUL byte")]
    NulByte,
}

/// Lays out the stack ending at `top` (exclusive), at most `limit` bytes of it.
pub fn build(top: u64, limit: u64, info: &ProgramInfo) -> Result<InitialStack, StackError> {
    // Strings and blobs are packed downward from the top; `area` collects them in reverse placement order.
    let mut cursor = top;
    let mut area: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut place = |bytes: Vec<u8>| -> u64 {
        cursor -= bytes.len() as u64;
        area.push((cursor, bytes));
        cursor
    };
    let cstr = |s: &str| -> Result<Vec<u8>, StackError> {
        if s.contains('\0') {
            return Err(StackError::NulByte);
        }
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Ok(v)
    };

    let execfn_str = info.argv.first().map(String::as_str).unwrap_or("");
    let execfn = place(cstr(execfn_str)?);
    let exe_path = place(cstr(info.exe_path)?);
    let workdir = place(cstr(info.workdir)?);
    let platform = place(cstr("x86_64")?);
    let random = place(info.random.to_vec());
    let mut envp = Vec::new();
    for e in info.envp.iter().rev() {
        envp.push(place(cstr(e)?));
    }
    envp.reverse();
    let mut argv = Vec::new();
    for a in info.argv.iter().rev() {
        argv.push(place(cstr(a)?));
    }
    argv.reverse();

    let auxv: [(u64, u64); 19] = [
        (AT_PHDR, info.phdr),
        (AT_PHENT, info.phent),
        (AT_PHNUM, info.phnum),
        (AT_PAGESZ, 4096),
        (AT_BASE, info.base),
        (AT_FLAGS, 0),
        (AT_ENTRY, info.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_PLATFORM, platform),
        (AT_HWCAP, info.hwcap),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, random),
        (AT_EXECFN, execfn),
        if info.sysinfo_ehdr != 0 { (AT_SYSINFO_EHDR, info.sysinfo_ehdr) } else { (AT_NULL, 0) },
    ];
    let auxv_words: Vec<u64> =
        auxv.iter().filter(|(k, _)| *k != AT_NULL).flat_map(|&(k, v)| [k, v]).chain([AT_NULL, 0]).collect();
    let mut words: Vec<u64> = vec![info.argv.len() as u64];
    words.extend(&argv);
    words.push(0);
    words.extend(&envp);
    words.push(0);
    // One AT_NULL ends the vector; an entry that does not apply here is AT_NULL too, and left out.
    words.extend(&auxv_words);
    // The ABI wants %rsp 16-byte aligned at the entry point, where it points at argc.
    let words_len = words.len() as u64 * 8;
    let stack_pointer = (cursor - words_len) & !15;
    let total = top - stack_pointer;
    if total > limit {
        return Err(StackError::TooBig(total, limit));
    }

    let mut bytes = vec![0u8; total as usize];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    for (addr, blob) in area {
        let off = (addr - stack_pointer) as usize;
        bytes[off..off + blob.len()].copy_from_slice(&blob);
    }
    Ok(InitialStack {
        stack_pointer,
        bytes,
        exe_path_addr: exe_path,
        exe_path_len: info.exe_path.len() as u64,
        workdir_addr: workdir,
        workdir_len: info.workdir.len() as u64,
        auxv: auxv_words.iter().flat_map(|w| w.to_le_bytes()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(s: &InitialStack, addr: u64) -> u64 {
        let o = (addr - s.stack_pointer) as usize;
        u64::from_le_bytes(s.bytes[o..o + 8].try_into().unwrap())
    }

    fn cstring(s: &InitialStack, addr: u64) -> String {
        let o = (addr - s.stack_pointer) as usize;
        let end = s.bytes[o..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8(s.bytes[o..o + end].to_vec()).unwrap()
    }

    #[test]
    fn lays_out_argv_envp_and_auxv_as_linux_does() {
        let argv = vec!["/bin/app".to_string(), "one".to_string()];
        let envp = vec!["A=1".to_string()];
        let info = ProgramInfo {
            argv: &argv,
            envp: &envp,
            exe_path: "/app",
            workdir: "/srv",
            phdr: 0x400040,
            phent: 56,
            phnum: 9,
            entry: 0x401000,
            base: 0x7fff_e000_0000,
            hwcap: 0x178bfbff,
            random: [7; 16],
            sysinfo_ehdr: 0x4000_0010_0000,
        };
        let top = 0x7fff_ffff_f000;
        let s = build(top, 1 << 20, &info).unwrap();
        let sp = s.stack_pointer;
        assert_eq!(sp % 16, 0);
        assert_eq!(sp + s.bytes.len() as u64, top);
        assert_eq!(word(&s, sp), 2);
        assert_eq!(cstring(&s, word(&s, sp + 8)), "/bin/app");
        assert_eq!(cstring(&s, word(&s, sp + 16)), "one");
        assert_eq!(word(&s, sp + 24), 0);
        assert_eq!(cstring(&s, word(&s, sp + 32)), "A=1");
        assert_eq!(word(&s, sp + 40), 0);
        let mut aux = std::collections::HashMap::new();
        let mut at = sp + 48;
        while word(&s, at) != AT_NULL {
            aux.insert(word(&s, at), word(&s, at + 8));
            at += 16;
        }
        assert_eq!(aux[&AT_PHDR], 0x400040);
        assert_eq!(aux[&AT_PHNUM], 9);
        assert_eq!(aux[&AT_PHENT], 56);
        assert_eq!(aux[&AT_PAGESZ], 4096);
        assert_eq!(aux[&AT_ENTRY], 0x401000);
        assert_eq!(aux[&AT_BASE], 0x7fff_e000_0000);
        assert_eq!(aux[&AT_CLKTCK], 100);
        assert_eq!(aux[&AT_SECURE], 0);
        assert_eq!(aux[&AT_HWCAP], 0x178bfbff);
        assert_eq!(aux[&AT_SYSINFO_EHDR], 0x4000_0010_0000);
        assert_eq!(cstring(&s, aux[&AT_EXECFN]), "/bin/app");
        assert_eq!(cstring(&s, aux[&AT_PLATFORM]), "x86_64");
        let r = (aux[&AT_RANDOM] - sp) as usize;
        assert_eq!(&s.bytes[r..r + 16], &[7; 16]);
        assert_eq!(cstring(&s, s.exe_path_addr), "/app");
        assert_eq!(s.exe_path_len, 4);
        assert_eq!((cstring(&s, s.workdir_addr).as_str(), s.workdir_len), ("/srv", 4));
    }

    #[test]
    fn refuses_what_does_not_fit_or_cannot_be_a_c_string() {
        let argv = vec!["x".repeat(5000)];
        let info = ProgramInfo {
            argv: &argv,
            envp: &[],
            exe_path: "/x",
            workdir: "",
            phdr: 0,
            phent: 0,
            phnum: 0,
            entry: 0,
            base: 0,
            hwcap: 0,
            random: [0; 16],
            sysinfo_ehdr: 0,
        };
        assert!(matches!(build(0x10000, 4096, &info), Err(StackError::TooBig(_, 4096))));
        let argv = vec!["a\0b".to_string()];
        let info = ProgramInfo { argv: &argv, ..info };
        assert!(matches!(build(0x10000, 4096, &info), Err(StackError::NulByte)));
    }
}
