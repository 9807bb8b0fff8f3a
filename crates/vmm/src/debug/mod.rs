//! Looking into a running guest from the host: the program's threads and their registers (`threads`), its memory
//! through the guest's page tables (`memory`), and the gdb remote stub built on them (`gdb`). Crash reports and core
//! dumps use the first two as well.

pub mod attach;
pub mod avx;
pub mod fpu;
pub mod gdb;
pub mod memory;
pub mod session;
pub mod stubs;
pub mod threads;
