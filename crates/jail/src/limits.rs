//! The jailed process's resource limits, soft and hard alike (so that it cannot raise them): open files, address
//! space and processes (threads, for its uid).

use crate::{check, os, JailError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Descriptors: the VMM's own few plus one host socket per relayed connection.
    pub open_files: u64,
    /// Address space beyond what is mapped when the jail closes (guest RAM, the library OS, the program): the relay's
    /// buffers (128 KiB a connection) and the VMM's heap.
    pub address_space_headroom: u64,
    /// Threads of the jail's uid: the vCPUs and the VMM's few others.
    pub processes: u64,
}

/// Most descriptors a jailed VMM gets (the library OS caps a program's at the same number).
pub const MAX_OPEN_FILES: u64 = 65_536;

impl Limits {
    /// The limits for a VM of `cpus` vCPUs: the open files the process has now (at most [`MAX_OPEN_FILES`]), 4 GiB of
    /// address space beyond what is mapped, and threads for the vCPUs plus 8.
    pub fn for_vm(cpus: u32) -> Result<Limits, JailError> {
        let open_files = current(libc::RLIMIT_NOFILE)?.rlim_cur.min(MAX_OPEN_FILES);
        Ok(Limits { open_files, address_space_headroom: 4 << 30, processes: u64::from(cpus) + 8 })
    }

    /// Sets the limits; `mapped` is the address space in use now.
    pub(crate) fn apply(&self, mapped: u64) -> Result<(), JailError> {
        set(libc::RLIMIT_NOFILE, self.open_files, "limit the jail's open files")?;
        set(libc::RLIMIT_AS, mapped.saturating_add(self.address_space_headroom), "limit the jail's address space")?;
        set(libc::RLIMIT_NPROC, self.processes, "limit the jail's processes")
    }
}

fn current(resource: libc::c_int) -> Result<libc::rlimit, JailError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    check("read the open-files limit", unsafe { libc::getrlimit(resource, &mut limit) })?;
    Ok(limit)
}

fn set(resource: libc::c_int, value: u64, what: &'static str) -> Result<(), JailError> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads one rlimit from a valid pointer.
    check(what, unsafe { libc::setrlimit(resource, &limit) })
}

/// The bytes of address space the process has mapped (`/proc/self/statm`'s first field, in pages).
pub(crate) fn mapped_bytes() -> Result<u64, JailError> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(os("read /proc/self/statm"))?;
    let pages: u64 = statm.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(pages * page)
}
