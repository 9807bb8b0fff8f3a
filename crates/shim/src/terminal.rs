//! A task's terminal (`ctr run -t`, a pod's `tty: true`): a pseudo-terminal whose slave side is the VM process's
//! stdin, stdout and stderr (the VMM passes the program's terminal ioctls on to it, so the program sees a terminal
//! with the window's size and can set its modes), and whose master side the shim holds: what comes on containerd's
//! stdin FIFO goes in, what comes out goes to containerd's stdout FIFO, and ResizePty sets the window's size.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The master and slave sides of a new pseudo-terminal, both close-on-exec (the slave reaches the VM process as its
/// standard streams, which clears the flag on the copies).
pub fn open() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors to the places given; the name, termios and window size may be null.
    let made =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    if made != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: both are open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl(2) on a descriptor this function owns.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// Sets the terminal's window size (containerd's ResizePty); the program hears of it when it next asks.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: height.min(u16::MAX.into()) as u16,
        ws_col: width.min(u16::MAX.into()) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
    match unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &size) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Copies containerd's stdin FIFO into the terminal's master, or into the pipe that is the VM process's stdin,
/// until the FIFO ends (then `into` closes: the pipe's reader sees the end). The FIFO is opened on the thread: the
/// open waits for containerd's writer, which may come late, or never (a detached task).
pub fn relay_input(mut into: File, fifo: String) -> std::io::Result<()> {
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let Ok(mut from) = File::open(&fifo) else { return };
        let _ = std::io::copy(&mut from, &mut into);
    })?;
    Ok(())
}

/// How long the exit of a task with a terminal waits for its last output to reach containerd's FIFO (which nobody
/// may be reading: a detached `ctr run -d -t` whose FIFO is full).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Copies what the program writes to the terminal to containerd's stdout FIFO until the terminal's last slave
/// closes (the VM process ended: reading the master fails with EIO then). The receiver hears (its sender goes) when
/// the copy ends: wait for it, up to [`OUTPUT_GRACE`], before telling of the exit, so that the output is all there
/// first.
pub fn relay_output(master: &OwnedFd, mut to: File) -> std::io::Result<Receiver<()>> {
    let mut from = File::from(master.try_clone()?);
    let (ended, done) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new().name("tty-out".into()).spawn(move || {
        let _ended = ended;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slave_is_a_terminal_with_the_size_set_on_the_master() {
        let (master, slave) = open().unwrap();
        resize(&master, 132, 43).unwrap();
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize to the place given.
        assert_eq!(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ as _, &mut size) }, 0);
        assert_eq!((size.ws_row, size.ws_col), (43, 132));
        // SAFETY: isatty(3) on an open descriptor.
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
    }

    #[test]
    fn output_is_relayed_until_the_slave_closes() {
        let (master, slave) = open().unwrap();
        let (read_end, write_end) = {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: both are open and owned by nothing else.
            unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
        };
        let relay = relay_output(&master, write_end).unwrap();
        File::from(slave).write_all(b"hi\n").unwrap();
        let ended = relay.recv_timeout(Duration::from_secs(10));
        assert_eq!(ended, Err(std::sync::mpsc::RecvTimeoutError::Disconnected), "the relay ended: its sender went");
        let mut out = String::new();
        let mut read_end = read_end;
        read_end.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hi\r\n", "the terminal's line discipline turns a newline into CR LF");
    }
}
