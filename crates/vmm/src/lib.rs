//! kiln-vmm: boots one static Linux x86-64 program as a KVM guest on the Kiln library OS.
//!
//! Everything a boot needs is done here on the host (see docs/architecture.md): the ELF is loaded and its `syscall`
//! instructions rewritten, page tables, GDT and the initial stack are built, and the vCPU starts at CPL 3 in the
//! library OS. At run time the VMM answers hypercalls (output, waits, TLB shootdowns, discarded memory), hands a
//! program's fault back to the library OS for its signal handler, and turns a fault nobody handles into a crash
//! report. A network card (`netcard`, over `virtio`) connects the guest to a tap device or a user-mode network.

pub mod arch;
pub mod boot;
pub mod console;
pub mod core_dump;
pub mod core_file;
pub mod crash_stack;
pub mod debug;
pub mod disk;
pub mod dynamic;
pub mod elf;
pub mod exit_state;
pub mod export;
pub mod fault;
pub mod host_signals;
pub mod hypercall;
pub mod kick;
pub mod kvm_stats;
pub mod link_map;
pub mod loader;
pub mod memory;
pub mod netcard;
pub mod park;
pub mod preempt;
pub mod ready;
pub mod rewrite;
pub mod rewrite_cache;
pub mod rootfs;
pub mod rootfs_cache;
pub mod rootfs_image;
pub mod shared_object;
pub mod shootdown;
pub mod signal;
pub mod snapshot;
pub mod stack;
pub mod stdin;
pub mod stub_return;
pub mod syscall_names;
pub mod user_memory;
pub mod vdso;
pub mod virtio;
pub mod vm;

pub use console::StdioConsole;
pub use disk::VolumeConfig;
pub use fault::{CrashReport, Signal};
pub use host_signals::HostSignals;
pub use netcard::{NetConfig, Publish};
pub use vm::{Console, Controller, Outcome, RunStats, Vm, VmConfig, VmError};
