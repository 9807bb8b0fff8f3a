//! `kiln run --jail`: the VMM's process in new PID, mount, IPC and UTS namespaces (and an empty network namespace,
//! shared by such jails: [`netns`], unless the user-mode network needs the host's), then, once the VM is built and every file it uses is open or mapped, an
//! empty read-only root, an unprivileged uid and gid of its own, and resource limits. Two steps, because the VM must be
//! made by the process that runs it (KVM ties a VM to its creator's memory) and that process must be a child to be in
//! a new PID namespace: [`enter`] forks (the parent waits, forwarding the stop signals), [`lock_down`] closes the
//! jail around the child once it is set up. What each layer stops is in `docs/security.md`.

pub mod cgroup;
mod limits;
pub mod netns;
mod parent;
mod root;

use std::io;

pub use limits::Limits;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("--jail needs root (it makes namespaces and changes to an unprivileged uid)")]
    NotRoot,
    #[error("cannot {0}")]
    Os(&'static str, #[source] io::Error),
}

fn os(what: &'static str) -> impl FnOnce(io::Error) -> JailError {
    move |e| JailError::Os(what, e)
}

/// Fails with the OS error of a libc call that returned -1.
fn check(what: &'static str, ret: libc::c_int) -> Result<(), JailError> {
    if ret == -1 {
        return Err(JailError::Os(what, io::Error::last_os_error()));
    }
    Ok(())
}

/// Where the jailed VMM runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// The first uid (and gid) of the range jailed VMMs run as: each gets `BASE + its host pid`, ids no account on a
/// usual host has, so that two jailed VMs can neither signal nor trace each other nor share a process limit.
pub const BASE_ID: u32 = 2_000_000_000;

/// Which side of [`enter`]'s fork this is.
pub enum Entered {
    /// The jailed child: it builds the VM, calls [`lock_down`], runs it.
    Child,
    /// The parent, after the child ended: the exit status to end with (the child's code, or 128 + its signal).
    Parent(i32),
}

/// Forks the VMM's process into new PID, mount, IPC and UTS namespaces. Call it before any thread is started.
pub fn enter() -> Result<Entered, JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    // The mount namespace is the child's alone (below): `pivot_root` moves the root of every process in the namespace,
    // and the parent must keep the host's to record a detached instance's end.
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare takes flags only; the PID namespace applies to the children made after it.
    check("make the jail's namespaces (unshare)", unsafe { libc::unshare(flags) })?;
    let forwarded = parent::block_signals();
    // The child learns that the parent is gone when this pipe's write end closes (getppid says 0 in a new PID
    // namespace).
    let (alive_read, alive_write) = parent::pipe()?;
    // SAFETY: called before any thread exists (the caller's contract), so the child's single thread has every lock in
    // a consistent state.
    match unsafe { libc::fork() } {
        -1 => Err(JailError::Os("fork the jailed process", io::Error::last_os_error())),
        0 => {
            // The child ends with its parent, which containerd or the shell holds: SIGKILL to the parent must end the
            // VM too.
            // SAFETY: prctl with integer arguments.
            check("tie the jailed process to its parent", unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0)
            })?;
            drop(alive_write);
            if parent::closed(&alive_read) {
                // The parent died before the line above.
                std::process::exit(137);
            }
            // Kept for lock_down, whose change of uid clears the parent-death signal.
            let _ = PARENT_ALIVE.set(alive_read);
            parent::unblock_signals(&forwarded);
            // SAFETY: unshare takes flags only; this process has one thread.
            check("make the jail's mount namespace", unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            private_mounts()?;
            Ok(Entered::Child)
        }
        child => {
            drop(alive_read);
            let status = parent::wait(child, &forwarded);
            drop(alive_write);
            Ok(Entered::Parent(status))
        }
    }
}

/// Mounts made from here on stay in the calling process's mount namespace.
fn private_mounts() -> Result<(), JailError> {
    // SAFETY: null source, type and data are allowed with MS_PRIVATE; the target is a valid C string.
    check("make the jail's mounts private", unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

/// [`enter`] without the fork, for a process that must keep its pid (the containerd shim's VM process, which
/// containerd knows by it): new mount, IPC and UTS namespaces, no new PID namespace. Call it before any thread is
/// started; [`lock_down`] closes the jail as after [`enter`].
pub fn enter_in_place() -> Result<(), JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    // SAFETY: unshare takes flags only; the caller has one thread.
    check("make the jail's namespaces (unshare)", unsafe {
        libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS)
    })?;
    private_mounts()
}

/// What [`lock_down`] closes the jail with.
#[derive(Clone, Copy, Debug)]
pub struct Lockdown {
    pub identity: Identity,
    /// A network namespace of its own: the VM uses no host socket (no network, or a tap whose descriptor is open).
    pub new_network: bool,
    pub limits: Limits,
}

/// The identity a jailed process takes when the user names none: [`BASE_ID`] + its pid as the host sees it (after
/// [`enter`] it is pid 1 in its own namespace; the host's /proc, still mounted until [`lock_down`], names it by the
/// host's number).
pub fn default_identity() -> Result<Identity, JailError> {
    let link = std::fs::read_link("/proc/self").map_err(os("read /proc/self"))?;
    let pid: u32 =
        link.to_string_lossy().parse().map_err(|_| JailError::Os("read /proc/self", io::Error::other("not a pid")))?;
    Ok(identity_for(pid))
}

fn identity_for(host_pid: u32) -> Identity {
    let id = BASE_ID + host_pid;
    Identity { uid: id, gid: id }
}

/// Closes the jail around the calling process, which has built its VM: every file it needs is open or mapped. Call
/// it before the VM runs, on the thread that will run it; other threads (the user-mode network's relay) follow, as
/// the root and the ids are the whole process's.
pub fn lock_down(how: &Lockdown) -> Result<(), JailError> {
    if how.new_network {
        // Only this thread exists with no user-mode network (its relay is the one thread `prepare` starts), so the
        // whole process moves.
        netns::enter_empty()?;
    }
    let mapped = limits::mapped_bytes()?;
    root::pivot_to_empty_root()?;
    how.limits.apply(mapped)?;
    drop_privileges(how.identity)?;
    // The change of uid cleared the parent-death signal [`enter`] set (prctl(2)): set again, or SIGKILL to the jail's
    // parent (kilnd's `kill`, a killed `kiln run`) would leave the jailed VM running, orphaned.
    if let Some(alive) = PARENT_ALIVE.get() {
        // SAFETY: prctl with integer arguments.
        check("tie the jailed process to its parent again", unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0)
        })?;
        if parent::closed(alive) {
            // The parent died while the signal was unset.
            std::process::exit(137);
        }
    }
    Ok(())
}

/// In [`enter`]'s child: the read end of a pipe whose write end only its parent holds (closed when the parent ends).
static PARENT_ALIVE: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

fn drop_privileges(id: Identity) -> Result<(), JailError> {
    // musl applies these to every thread of the process, as POSIX asks.
    // SAFETY: setgroups with an empty list; setresgid/setresuid take integers.
    unsafe {
        check("drop the supplementary groups", libc::setgroups(0, std::ptr::null()))?;
        check("change to the jail's gid", libc::setresgid(id.gid, id.gid, id.gid))?;
        check("change to the jail's uid", libc::setresuid(id.uid, id.uid, id.uid))?;
    }
    // With every uid non-zero, the kernel has cleared the capabilities; check that root is gone for good.
    // SAFETY: setuid(0) only fails or succeeds.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(JailError::Os("drop root", io::Error::other("setuid(0) still works")));
    }
    Ok(())
}

/// `--jail-uid UID[:GID]` (the gid defaults to the uid).
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    let number = |part: &str| part.parse::<u32>().map_err(|_| format!("'{s}' is not UID[:GID] with numeric ids"));
    let (uid, gid) = match s.split_once(':') {
        Some((uid, gid)) => (number(uid)?, number(gid)?),
        None => (number(s)?, number(s)?),
    };
    if uid == 0 || gid == 0 {
        return Err(format!("'{s}': the jail runs the VMM as a user other than root"));
    }
    Ok(Identity { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse() {
        assert_eq!(parse_identity("1234"), Ok(Identity { uid: 1234, gid: 1234 }));
        assert_eq!(parse_identity("1234:99"), Ok(Identity { uid: 1234, gid: 99 }));
        assert!(parse_identity("0").unwrap_err().contains("other than root"));
        assert!(parse_identity("12:0").is_err());
        assert!(parse_identity("x").is_err());
        assert!(parse_identity("").is_err());
        assert_eq!(identity_for(77), Identity { uid: BASE_ID + 77, gid: BASE_ID + 77 });
    }
}
