//! The jail's root: an empty tmpfs, read-only, made the process's root with pivot_root(2) and the host's tree
//! detached from this mount namespace, so nothing of the host's filesystem is reachable by any path. The VMM needs
//! none: its files are open and mapped before the jail closes.

use crate::{check, JailError};

/// Where the new root is mounted before the pivot (inside this namespace only; the host's /tmp is untouched).
const STAGING: &std::ffi::CStr = c"/tmp";

pub(crate) fn pivot_to_empty_root() -> Result<(), JailError> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: every pointer is a valid C string; the mounts are in this process's private mount namespace.
    unsafe {
        check(
            "mount the jail's root",
            libc::mount(
                c"kiln-jail".as_ptr(),
                STAGING.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                c"size=16k,mode=0755".as_ptr().cast(),
            ),
        )?;
        check("make the jail's root", libc::mkdir(c"/tmp/old".as_ptr(), 0o700))?;
        check(
            "pivot into the jail's root",
            libc::syscall(libc::SYS_pivot_root, STAGING.as_ptr(), c"/tmp/old".as_ptr()) as libc::c_int,
        )?;
        check("enter the jail's root", libc::chdir(c"/".as_ptr()))?;
        check("detach the host's filesystem", libc::umount2(c"/old".as_ptr(), libc::MNT_DETACH))?;
        check("clean the jail's root", libc::rmdir(c"/old".as_ptr()))?;
        check(
            "make the jail's root read-only",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                std::ptr::null(),
            ),
        )?;
    }
    Ok(())
}
