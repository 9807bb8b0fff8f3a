//! The VMM finds the library OS's entry points and shared statics by name (`kiln_*`, `KILN_*`: `crates/vmm`'s
//! `loader` and `vdso`). The release build strips the symbol table (profile `strip`, ~120 KiB of an image's library
//! OS blob), so those names are exported in the dynamic symbol table instead, which stripping keeps.

fn main() {
    for pattern in ["kiln_*", "KILN_*"] {
        println!("cargo:rustc-link-arg-bins=--export-dynamic-symbol={pattern}");
    }
}
