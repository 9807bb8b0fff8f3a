//! The network namespace of jails that use no host socket (`--net none`, a tap): one empty namespace, made once and
//! kept at [`SHARED_NETNS`] by a bind mount, which each such jail enters with `setns`. A namespace made per VMM cost
//! 0.5 ms of `unshare` at start-up and its tear-down at the end (docs/benchmarks.md); a shared one stops the same
//! things: it has no interface but `lo`, which is down, and a jailed VMM has no capability to change that. What its
//! VMMs share is the namespace's abstract UNIX socket names, which no thread of theirs can use (their seccomp lists
//! have no `socket`). Where it cannot be made or entered, a jail makes a namespace of its own, as before.

use crate::{check, JailError};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Where the shared namespace is kept (root's, under /run: gone at the host's reboot, made again by the next jail).
pub const SHARED_NETNS: &str = "/run/kiln/netns/none";

/// Makes the shared namespace if it is not there. Call it as root, in the host's mount namespace (before
/// [`crate::enter`]), from a thread whose network namespace is the host's: it comes back to it.
pub fn prepare_shared() -> Result<(), JailError> {
    prepare_at(Path::new(SHARED_NETNS))
}

fn prepare_at(path: &Path) -> Result<(), JailError> {
    if is_netns(path) {
        return Ok(());
    }
    let dir = path.parent().expect("an absolute path");
    std::fs::create_dir_all(dir).map_err(crate::os("make the folder of the shared network namespace"))?;
    // Two first jails at once: one makes it, the other finds it made.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(crate::os("lock the shared network namespace"))?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with it.
    check("lock the shared network namespace", unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) })?;
    if is_netns(path) {
        return Ok(());
    }
    let host = File::open("/proc/thread-self/ns/net").map_err(crate::os("open the host's network namespace"))?;
    File::create(path).map_err(crate::os("make the shared network namespace's mount point"))?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    // SAFETY: unshare takes flags only and moves this thread alone; setns below brings it back.
    check("make the shared network namespace", unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    // SAFETY: both paths are valid C strings; a bind mount of this thread's new namespace keeps it alive.
    let mounted = check("keep the shared network namespace", unsafe {
        libc::mount(
            c"/proc/thread-self/ns/net".as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    });
    // SAFETY: setns with a namespace descriptor this function opened.
    check("return to the host's network namespace", unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) })?;
    mounted
}

/// Whether `path` is a network namespace (a bind mount of one).
fn is_netns(path: &Path) -> bool {
    const NS_GET_NSTYPE: u32 = 0xb703;
    let Ok(file) = File::open(path) else { return false };
    // SAFETY: an ioctl without argument on a descriptor this function owns; on anything but a namespace it fails.
    unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) == libc::CLONE_NEWNET }
}

/// Moves the calling thread into an empty network namespace: the shared one where it is there, else a new one.
pub(crate) fn enter_empty() -> Result<(), JailError> {
    if let Ok(shared) = File::open(SHARED_NETNS) {
        // SAFETY: setns with a descriptor this function opened; it fails (and changes nothing) on anything but a
        // network namespace.
        if unsafe { libc::setns(shared.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
            return Ok(());
        }
    }
    // SAFETY: unshare takes flags only.
    check("make the jail's network namespace", unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_a_namespace_and_the_hosts_is() {
        let path = std::env::temp_dir().join(format!("kiln-netns-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        assert!(!is_netns(&path));
        std::fs::remove_file(&path).unwrap();
        assert!(!is_netns(&path));
        assert!(is_netns(Path::new("/proc/self/ns/net")));
    }
}
