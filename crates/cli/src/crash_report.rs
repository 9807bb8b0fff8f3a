//! The crash report the user reads: the headline `kiln: program crashed: SIGSEGV (...) at rip 0x... in FUNCTION
//! (FILE:LINE)`, then the crashed thread's backtrace, one indented line a frame, named from the program's own ELF
//! (`kiln-symbolize`). When the program cannot be read again or named, the headline stays as the VMM worded it and
//! one indented line says why there is no backtrace.

use kiln_abi::layout::PIE_BASE;
use kiln_launch::{home, LaunchSpec};
use kiln_symbolize::{Backtrace, Program, Registers, StackCopy};
use kiln_vmm::CrashReport;
use std::io::Write;

/// Prints the crash report of `crash`, which ended the program `spec` launched.
pub fn print(spec: &LaunchSpec, crash: &CrashReport, kernel: &'static [u8]) {
    match backtrace(spec, crash, kernel) {
        Ok(trace) => {
            errln!("kiln: program crashed: {crash}{}", trace.headline_suffix());
            let _ = write!(std::io::stderr(), "{trace}");
        }
        Err(why) => {
            errln!("kiln: program crashed: {crash}");
            errln!("  (no backtrace: {why})");
        }
    }
}

fn backtrace(spec: &LaunchSpec, crash: &CrashReport, kernel: &'static [u8]) -> Result<Backtrace, String> {
    let stack = crash.stack.as_ref().ok_or("the VMM kept no stack for this crash")?;
    // The program as launched: the host file again (if it changed since, the names may be wrong, as with a core
    // file), or the image's copy in the store.
    let loaded = kiln_launch::load(spec, home::store().ok().as_ref(), kernel).map_err(|e| kiln_launch::chain(&e))?;
    let program = Program::parse(&loaded.program, PIE_BASE).map_err(|e| e.to_string())?;
    let registers = Registers { rip: stack.rip, rsp: stack.rsp, rbp: stack.rbp };
    let copy = StackCopy { start: stack.rsp, bytes: &stack.bytes };
    Ok(kiln_symbolize::backtrace(&program, registers, &copy))
}
