//! The tap backend: frames go to and come from an existing Linux tap device (`kiln run --net tap:NAME`), the fast
//! path for production, where the host's own bridge, routes and firewall decide where they go. Kiln attaches to the
//! device; it never creates one (that needs root, and which bridge it joins is the operator's choice).

use super::net::Backend;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap device {0:?}: no such network device (create it first, e.g. `ip tuntap add dev {0} mode tap`)")]
    Missing(String),
    #[error("{0:?} is a network device but not a tap device")]
    NotTap(String),
    #[error("{0:?} is not a valid network device name (1 to 15 bytes, no '/' or spaces)")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] std::io::Error),
    #[error("tap device {name:?}: permission denied; run as root, or create the device for your user (`ip tuntap add dev {name} mode tap user $USER`)")]
    Denied { name: String },
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
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
            return Err(TapError::BadName(name.into()));
        }
        let sys = Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::Missing(name.into()));
        }
        if !sys.join("tun_flags").exists() {
            return Err(TapError::NotTap(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq { name: [0; IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`, which `IfReq` lays out and `req` holds.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::Denied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                _ => TapError::Attach { name, source },
            });
        }
        Ok(Tap { file })
    }
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
        if Path::new("/sys/class/net/lo").exists() {
            assert!(matches!(Tap::attach("lo"), Err(TapError::NotTap(_))));
        }
    }
}
