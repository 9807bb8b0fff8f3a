//! The PVH command line over the image's arguments and environment: `NAME=VALUE` words set environment variables
//! (Linux passes such words to init's environment too; the few Linux itself reads, which hypervisors add by default,
//! are skipped), and the words after `--` replace the program's arguments after `argv[0]`. The program's initial
//! stack is rebuilt below the export's, which stays as it was (its strings are still pointed to).

use crate::{power, serial};
use kiln_abi::BootInfo;

const MAX_WORDS: usize = 256;
/// Words Linux consumes itself (`console=ttyS0 reboot=k panic=1 pci=off` is Firecracker's default command line).
/// `nr_cpus` and `maxcpus` the platform layer reads too (`smp.rs`).
const LINUX_WORDS: [&[u8]; 13] = [
    b"console",
    b"reboot",
    b"panic",
    b"pci",
    b"earlyprintk",
    b"root",
    b"init",
    b"acpi",
    b"noapic",
    b"tsc",
    b"ip",
    b"nr_cpus",
    b"maxcpus",
];
/// Room the rebuilt start may take below the export's stack pointer, at most.
const MAX_GROWTH: u64 = 64 << 10;

fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    cmdline.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty())
}

fn is_env(word: &[u8]) -> Option<&[u8]> {
    let eq = word.iter().position(|&b| b == b'=')?;
    let name = &word[..eq];
    let linux = LINUX_WORDS.contains(&name) || name.contains(&b'.');
    (eq > 0 && !linux).then_some(name)
}

/// Rebuilds the program's start if the command line says anything for it.
pub fn apply_command_line(boot: &mut BootInfo, cmdline: &[u8]) {
    let dashes = words(cmdline).position(|w| w == b"--");
    let env_words = words(cmdline).take(dashes.unwrap_or(usize::MAX)).filter(|w| is_env(w).is_some());
    // QEMU's microvm appends its devices' words to the command line, after any `--`: they are not arguments.
    let new_args = dashes.map(|d| words(cmdline).skip(d + 1).filter(|w| !w.starts_with(crate::virtio::DEVICE_WORD)));
    if env_words.clone().next().is_none() && new_args.is_none() {
        return;
    }
    match rebuild(boot, env_words, new_args) {
        Some(sp) => boot.app_stack_pointer = sp,
        None => {
            serial::write_str("kiln: the command line's arguments and environment do not fit on the stack\n");
            power::exit(1)
        }
    }
}

/// A downward bump writer over the program's stack, bounded by `floor`.
struct Writer {
    at: u64,
    floor: u64,
}

impl Writer {
    fn bytes(&mut self, b: &[u8]) -> Option<u64> {
        self.at = self.at.checked_sub(b.len() as u64 + 1)?;
        if self.at < self.floor {
            return None;
        }
        // SAFETY: [at, at + len] lies in the program's stack mapping, above `floor` (checked), and the image's page
        // tables (loaded) map it writable; nothing uses it yet.
        unsafe {
            core::ptr::copy_nonoverlapping(b.as_ptr(), self.at as *mut u8, b.len());
            *((self.at + b.len() as u64) as *mut u8) = 0;
        }
        Some(self.at)
    }
}

fn read_u64(at: u64) -> u64 {
    // SAFETY: `at` lies in the export's initial stack, which the image's page tables map.
    unsafe { core::ptr::read_unaligned(at as *const u64) }
}

/// The C string at `at` (in the export's stack), without its NUL, at most 4 KiB.
fn c_str(at: u64) -> &'static [u8] {
    let mut len = 0;
    // SAFETY: the export's strings lie in its stack, NUL-terminated, below the stack's top.
    while len < 4096 && unsafe { *((at + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: as above.
    unsafe { core::slice::from_raw_parts(at as *const u8, len as usize) }
}

fn rebuild<'a>(
    boot: &BootInfo,
    env_words: impl Iterator<Item = &'a [u8]>,
    new_args: Option<impl Iterator<Item = &'a [u8]>>,
) -> Option<u64> {
    let old = boot.app_stack_pointer;
    let floor = old.saturating_sub(MAX_GROWTH).max(boot.app_stack_bottom);
    let mut w = Writer { at: old & !15, floor };
    // The export's start: argc, argv, NULL, envp, NULL, auxv.
    let argc = read_u64(old).min(MAX_WORDS as u64);
    let old_argv = |i: u64| read_u64(old + 8 + i * 8);
    let envp_at = old + 8 + (argc + 1) * 8;
    let mut old_envc = 0;
    while old_envc < MAX_WORDS as u64 && read_u64(envp_at + old_envc * 8) != 0 {
        old_envc += 1;
    }
    let auxv_at = envp_at + (old_envc + 1) * 8;
    let mut auxv_words = 0;
    while auxv_words < 128 && read_u64(auxv_at + auxv_words * 8) != 0 {
        auxv_words += 2;
    }
    auxv_words += 2; // AT_NULL

    let mut argv = [0u64; MAX_WORDS];
    let mut argn = 0;
    argv[0] = old_argv(0);
    argn += 1;
    match new_args {
        Some(args) => {
            for a in args.take(MAX_WORDS - 1) {
                argv[argn] = w.bytes(a)?;
                argn += 1;
            }
        }
        None => {
            for i in 1..argc {
                argv[argn] = old_argv(i);
                argn += 1;
            }
        }
    }
    let mut envp = [0u64; MAX_WORDS];
    let mut envn = 0;
    for i in 0..old_envc {
        envp[envn] = read_u64(envp_at + i * 8);
        envn += 1;
    }
    for word in env_words {
        let name = is_env(word)?;
        let at = w.bytes(word)?;
        let same = (0..envn).find(|&i| {
            let s = c_str(envp[i]);
            s.len() > name.len() && s.starts_with(name) && s[name.len()] == b'='
        });
        match same {
            Some(i) => envp[i] = at,
            None if envn < MAX_WORDS => {
                envp[envn] = at;
                envn += 1;
            }
            None => return None,
        }
    }
    // The pointer block: argc, argv + NULL, envp + NULL, auxv, with argc 16-byte aligned.
    let words_needed = 1 + (argn as u64 + 1) + (envn as u64 + 1) + auxv_words;
    let sp = (w.at.checked_sub(words_needed * 8)?) & !15;
    if sp < floor {
        return None;
    }
    let mut put = sp;
    let mut push = |v: u64| {
        // SAFETY: [sp, sp + words_needed * 8) lies in the stack mapping above `floor` (checked).
        unsafe { core::ptr::write_unaligned(put as *mut u64, v) };
        put += 8;
    };
    push(argn as u64);
    argv[..argn].iter().for_each(|&a| push(a));
    push(0);
    envp[..envn].iter().for_each(|&e| push(e));
    push(0);
    for i in 0..auxv_words {
        push(read_u64(auxv_at + i * 8));
    }
    Some(sp)
}
