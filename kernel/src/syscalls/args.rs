//! How the dispatcher turns a syscall's six registers into the arguments a handler sees. Linux declares each syscall
//! with C types (`SYSCALL_DEFINE`), and its entry code casts every 64-bit register to the declared type before the
//! handler runs: an `int` is the low 32 bits (sign-extended where the kernel widens it), an `unsigned int` the low 32
//! bits, a `umode_t` the low 16. Programs depend on it: glibc passes `AT_FDCWD` as `0x00000000ffffff9c`. Each table
//! entry lists its arguments' types; the dispatcher narrows the registers here, so no handler ever sees the raw 64 bits
//! of an `int`, and a register past the declared arguments reads as 0.

use super::Args;

/// The C type of one syscall argument, as far as it decides which bits of the register count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arg {
    /// `long`, `unsigned long`, `size_t`, `off_t`, `loff_t`: the whole register.
    Long,
    /// A user-space pointer: the whole register.
    Ptr,
    /// `int`, `pid_t`, `clockid_t`, `timer_t`, `rwf_t`: the low 32 bits, sign-extended.
    Int,
    /// `unsigned int`, `uid_t`, `gid_t`, `u32`; also a descriptor declared `unsigned long` (readv, preadv...), which
    /// Linux narrows to `unsigned int` when it looks the descriptor up: the low 32 bits.
    UInt,
    /// `umode_t` (an `unsigned short`): the low 16 bits.
    Mode,
}

impl Arg {
    pub const fn narrow(self, register: u64) -> u64 {
        match self {
            Arg::Long | Arg::Ptr => register,
            Arg::Int => register as i32 as i64 as u64,
            Arg::UInt => register as u32 as u64,
            Arg::Mode => register as u16 as u64,
        }
    }
}

/// A syscall's arguments as its handler sees them: each register narrowed to its declared type, the rest 0.
pub fn decode(registers: &Args, signature: &[Arg]) -> Args {
    let mut args = [0; 6];
    for ((arg, &register), kind) in args.iter_mut().zip(registers).zip(signature) {
        *arg = kind.narrow(register);
    }
    args
}
