//! The VMM finds the library OS's entry points and shared statics by name (`kiln_*`, `KILN_*`: `crates/vmm`'s
//! `loader` and `vdso`). The release build strips the symbol table (profile `strip`, ~120 KiB of an image's library
//! OS blob), so those names are exported in the dynamic symbol table instead, which stripping keeps.

fn main() {
    for pattern in ["kiln_*", "KILN_*"] {
        println!("cargo:rustc-link-arg-bins=--export-dynamic-symbol={pattern}");
    }
    // The platform layer of exported images runs at CPL 0 in the direct map, which maps it writable whatever its
    // segments say, and nothing makes its relocated data read-only after: one segment for code and constants and one
    // for data, not four with page-sized holes of zeroes between them in every exported image.
    for arg in ["--no-rosegment", "-znorelro"] {
        println!("cargo:rustc-link-arg-bin=kiln-pvh={arg}");
    }
}
