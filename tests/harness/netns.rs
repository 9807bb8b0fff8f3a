//! Network namespaces for the tap tests: each test makes its own namespace holding a tap device with the host's end
//! of the link, so that nothing it does touches the machine's real network. Needs root (CI runs as root) and
//! iproute2's `ip`; without them the test is skipped and says why.
//!
//! `kiln` runs inside the namespace (`Kiln::netns`), and the test's own client or server threads join it with
//! [`NetNs::enter`] (setns(2) changes only the calling thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct NetNs {
    pub name: String,
    file: File,
}

/// The tap device's name inside every test namespace.
pub const TAP: &str = "ktap0";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetNs {
    /// A fresh namespace with the tap device [`TAP`] up at `host_cidr` (the host's end of the VM's link); None (the
    /// test skipped, with the reason) where namespaces cannot be made.
    pub fn with_tap(host_cidr: &str) -> Option<NetNs> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("kiln-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            super::kvm::skip("network namespace tests need root");
            return None;
        }
        let made = ip(&["netns", "add", &name]).and_then(|()| {
            let ns = NetNs {
                file: File::open(format!("/var/run/netns/{name}")).map_err(|e| e.to_string())?,
                name: name.clone(),
            };
            for args in [
                vec!["tuntap", "add", "dev", TAP, "mode", "tap"],
                vec!["addr", "add", host_cidr, "dev", TAP],
                vec!["link", "set", TAP, "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let mut all = vec!["-n", ns.name.as_str()];
                all.extend_from_slice(&args);
                ip(&all)?;
            }
            Ok(ns)
        });
        match made {
            Ok(ns) => Some(ns),
            Err(why) => {
                let _ = ip(&["netns", "del", &name]);
                super::kvm::skip(&format!("cannot make a network namespace: {why}"));
                None
            }
        }
    }

    /// Gives the tap another address (`fd00::1/64`, say), usable at once: no duplicate address detection.
    pub fn add_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", TAP, "nodad"]).expect("add an address to the tap");
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes live there.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `fd` is an open namespace file; setns affects only this thread.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }

    /// The namespace file, for `Kiln::netns`.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl super::Kiln {
    /// Runs `kiln` inside the network namespace `ns`.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = ns.file().as_raw_fd();
        // SAFETY: between fork and exec the child only calls setns(2), which is async-signal-safe; `fd` stays open
        // in the parent (the namespace outlives the command) and so is inherited by the child.
        unsafe {
            self.cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        self.shown.insert(0, format!("ip netns exec {}", ns.name));
        self
    }

    /// Runs `kiln` as the unprivileged user and group `id`, after joining the namespace (which needs root: std's own
    /// `uid` would drop privileges before `netns`'s setns).
    pub fn unprivileged(mut self, id: u32) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the child only calls setgroups, setgid and setuid, which are
        // async-signal-safe and touch no memory of the parent's.
        unsafe {
            self.cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(id) != 0 || libc::setuid(id) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.shown.insert(0, format!("setpriv --reuid {id} --regid {id} --clear-groups"));
        self
    }
}
