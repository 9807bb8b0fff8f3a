//! The few system calls std does not offer: eventfds, poll(2) for the tests, a non-blocking TCP connect, and an abortive
//! close (SO_LINGER 0, so the peer sees a reset). Each wraps one libc call and its error handling.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd used as a level-triggered flag: readable after `signal` until `clear`.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd that we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and nothing else owns it.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own fd. Only EAGAIN (counter saturated) can fail,
        // and then the fd is readable anyway.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own fd; EAGAIN means it was already clear.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// poll(2) over `fds`, retrying on EINTR; `None` waits forever. (The relay itself waits in epoll: `sources`.)
#[cfg(test)]
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<std::time::Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        // Round up so a 0.4 ms smoltcp deadline does not become a busy loop of 0 ms polls.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    loop {
        // SAFETY: the pointer and length describe the live, exclusively borrowed `fds` slice.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Starts a TCP connect without waiting for it: the stream becomes writable when it completes, and
/// `take_error` then tells whether it failed.
pub(crate) fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket takes no pointers; a non-negative result is a new fd that we own.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket and nothing else owns it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: the pointer and length describe the live sockaddr_in above.
            unsafe {
                libc::connect(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: the pointer and length describe the live sockaddr_in6 above.
            unsafe {
                libc::connect(
                    fd,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc == 0 {
        return Ok(stream);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(stream)
    } else {
        Err(err)
    }
}

/// Whether a non-blocking connect started by `connect_nonblocking` has succeeded (`Some(true)`),
/// failed (`Some(false)`) or is still going (`None`).
pub(crate) fn connect_result(stream: &TcpStream) -> Option<bool> {
    match stream.take_error() {
        Ok(Some(_)) | Err(_) => Some(false),
        Ok(None) => match stream.peer_addr() {
            Ok(SocketAddr::V4(_)) | Ok(SocketAddr::V6(_)) => Some(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
            Err(_) => Some(false),
        },
    }
}

/// Closes `stream` so that the peer sees a reset rather than an orderly end of stream.
pub(crate) fn close_with_reset(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the pointer and length describe the live linger struct; the fd is open (owned by `stream`).
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eventfd_is_a_level_flag() {
        let e = EventFd::new().unwrap();
        let readable = |e: &EventFd| {
            let mut p = [libc::pollfd { fd: e.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            poll(&mut p, Some(Duration::ZERO)).unwrap() == 1
        };
        assert!(!readable(&e));
        e.signal();
        e.signal();
        assert!(readable(&e));
        e.clear();
        assert!(!readable(&e));
        e.clear();
        assert!(!readable(&e));
    }

    #[test]
    fn connect_to_closed_port_fails() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match connect_nonblocking(SocketAddr::new([127, 0, 0, 1].into(), port)) {
            Err(_) => {}
            Ok(s) => {
                let mut p = [libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
                poll(&mut p, Some(Duration::from_secs(5))).unwrap();
                assert_eq!(connect_result(&s), Some(false));
            }
        }
    }
}
