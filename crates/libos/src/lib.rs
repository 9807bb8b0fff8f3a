//! kiln-libos: the library OS, built from kernel/ by build.rs and embedded, so that every binary that boots a host
//! program (`kiln`, `containerd-shim-kiln-v2`) carries the same one and users need no second toolchain at run time.
//! Its own crate rather than a file found next to `kiln`: a shim installed alone (a Kubernetes node's
//! `/usr/local/bin`) still works, and the two binaries cannot disagree about the library OS they were built with.

/// The library OS's ELF image.
pub static KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-kernel.elf"));

/// The platform layer of exported images (`kernel/pvh`): the PVH entry, and the hypercalls answered in the guest.
pub static PVH_PLATFORM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-pvh.elf"));
