//! The crash report the user reads: the headline `kiln: program crashed: SIGSEGV (...) at rip 0x... in FUNCTION
//! (FILE:LINE)`, then the crashed thread's backtrace, one indented line a frame, named from the program's own ELF
//! and those of the shared objects its loader had mapped (`kiln-symbolize`). When the program cannot be read again
//! or named, the headline stays as the VMM worded it and one indented line says why there is no backtrace.

use kiln_abi::layout::PIE_BASE;
use kiln_launch::{home, LaunchSpec};
use kiln_symbolize::{AddressSpace, Backtrace, Program, Registers, StackCopy};
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
    match &crash.core_file {
        Some(Ok((path, len))) => errln!("kiln: core dumped to {} ({} KiB)", path.display(), len.div_ceil(1024)),
        Some(Err(why)) => errln!("kiln: no core file: {why}"),
        None => {}
    }
}

fn backtrace(spec: &LaunchSpec, crash: &CrashReport, kernel: &'static [u8]) -> Result<Backtrace, String> {
    let stack = crash.stack.as_ref().ok_or("the VMM kept no stack for this crash")?;
    // The program as launched: the host file again (if it changed since, the names may be wrong, as with a core
    // file), or the image's copy in the store.
    let loaded = kiln_launch::load(spec, home::store().ok().as_ref(), kernel).map_err(|e| kiln_launch::chain(&e))?;
    let bias = Program::bias(&loaded.program, PIE_BASE).map_err(|e| e.to_string())?;
    let mut objects = vec![Program::parse(&loaded.program, bias, "").map_err(|e| e.to_string())?];
    // The shared objects, from the guest's root filesystem as the VMM found them (the program's own entry, the
    // first, has no path); one that cannot be read is left out, and its frames stay addresses.
    for object in crash.objects.iter().filter(|o| !o.path.is_empty()) {
        let name = object.path.rsplit('/').next().unwrap_or(&object.path);
        if let Some(program) = object.file.as_ref().and_then(|file| Program::parse(file, object.bias, name).ok()) {
            objects.push(program);
        }
    }
    let registers = Registers { rip: stack.rip, rsp: stack.rsp, rbp: stack.rbp };
    let copy = StackCopy { start: stack.rsp, bytes: &stack.bytes };
    Ok(kiln_symbolize::backtrace(&AddressSpace::new(objects), registers, &copy))
}
