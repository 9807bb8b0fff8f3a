//! The tap backend: frames go to and come from an existing Linux tap device (`kiln run --net tap:NAME`), the fast
//! path for production, where the host's own bridge, routes and firewall decide where they go. Kiln attaches to the
//! device; it never creates one (that needs root, and which bridge it joins is the operator's choice).

use super::net::Backend;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap device {0:?}: no such network device (create it first, e.g. `ip tuntap add dev {0} mode tap`)")]
    Missing(String),
    #[error("{0:?} is a network device but not a tap device")]
    NotTap(String),
    #[error("{0:?} is not a valid network device name (1 to 15 bytes, no '/' or spaces)")]
    BadName(String),
    #[error("cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    #[error("tap device {name:?}: permission denied ({what}); run as root, or create the device for your user (`ip tuntap add dev {name} mode tap user $USER`) with /dev/net/tun usable by it")]
    Denied { name: String, what: &'static str },
    #[error("tap device {name:?} is busy: another process has it attached")]
    Busy { name: String },
    #[error("cannot attach tap device {name:?}")]
    Attach {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
}

impl Tap {
    /// Attaches the existing tap device `name`.
    pub fn attach(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        // The interface index, not /sys/class/net: sysfs shows the network namespace that mounted it, which need
        // not be ours. Without this check TUNSETIFF would create a device of that name.
        let c_name = std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.into()))?;
        // SAFETY: a NUL-terminated name.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.into()));
        }
        Ok(Tap { file: set_iff(name)? })
    }

    /// Creates the tap device `name` in this thread's network namespace, persistent (it stays, unattached, until
    /// deleted), or takes it over if it exists unattached; for a launcher that owns the namespace (the containerd
    /// shim in a pod's), which then attaches it like any other.
    pub fn create_persistent(name: &str) -> Result<(), TapError> {
        check_name(name)?;
        let file = set_iff(name)?;
        // SAFETY: TUNSETPERSIST takes its argument by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) } < 0 {
            return Err(TapError::Attach { name: name.into(), source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// The device's MTU (SIOCGIFMTU), 1500 if it cannot be read.
    pub fn mtu(name: &str) -> u16 {
        let mut req = IfReq { name: [0; IFNAMSIZ], flags: 0, _pad: [0; 22] };
        let len = name.len().min(IFNAMSIZ - 1);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        // SAFETY: a plain socket, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return 1500;
        }
        // SAFETY: SIOCGIFMTU writes the MTU as an int over the flags field of one `struct ifreq`, which `req` is.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut req as *mut IfReq) };
        // SAFETY: `fd` is the socket opened above.
        unsafe { libc::close(fd) };
        let mtu =
            i32::from_ne_bytes([req.flags.to_ne_bytes()[0], req.flags.to_ne_bytes()[1], req._pad[0], req._pad[1]]);
        if rc == 0 && (576..=65535).contains(&mtu) {
            mtu as u16
        } else {
            1500
        }
    }
}

fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
        return Err(TapError::BadName(name.into()));
    }
    Ok(())
}

/// /dev/net/tun attached to the tap device `name` (made if there is none).
fn set_iff(name: &str) -> Result<File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => TapError::Denied { name: name.into(), what: "opening /dev/net/tun" },
            _ => TapError::Open(e),
        })?;
    let mut req = IfReq { name: [0; IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`, which `IfReq` lays out and `req` holds.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        let name = name.to_string();
        return Err(match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => TapError::Denied { name, what: "attaching the device" },
            Some(libc::EBUSY) => TapError::Busy { name },
            Some(libc::EINVAL) => TapError::NotTap(name),
            _ => TapError::Attach { name, source },
        });
    }
    Ok(file)
}

impl Backend for Tap {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            // The device's queue is full (or the link is down): the frame is lost, as on a wire.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn ready_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_missing_devices_get_clear_errors() {
        assert!(matches!(Tap::attach(""), Err(TapError::BadName(_))));
        assert!(matches!(Tap::attach("a/b"), Err(TapError::BadName(_))));
        assert!(matches!(Tap::attach("sixteen-bytes-xx"), Err(TapError::BadName(_))));
        let missing = Tap::attach("kilnnosuchtap0").err().unwrap().to_string();
        assert!(missing.contains("no such network device") && missing.contains("ip tuntap add"), "{missing}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(matches!(Tap::attach("lo"), Err(TapError::NotTap(_))), "{:?}", Tap::attach("lo").err());
        }
        assert_eq!(Tap::mtu("kilnnosuchtap0"), 1500);
    }
}
