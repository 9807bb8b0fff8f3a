//! The contract between kiln-vmm (host) and the Kiln library OS (guest): the guest's memory layout, the boot info the
//! VMM hands the library OS, and the hypercalls the library OS makes. Both sides compile this crate; nothing here may
//! depend on `std`.
#![no_std]

pub mod acpi;
pub mod boot;
pub mod frames;
pub mod hypercall;
pub mod layout;
pub mod paging;
pub mod pvh;
pub mod rootfs;
pub mod signals;
pub mod syscall_names;
pub mod threads;

pub use boot::BootInfo;
pub use hypercall::{Hypercall, HypercallBlock, IoSegment};
