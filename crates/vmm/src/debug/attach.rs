//! `kiln debug NAME`: gdb attaching to a VM that is already running (an instance of `kiln run -d`). The instance's
//! process binds a Unix datagram socket in its folder before the VM starts (`debug.sock`, mode 0600); `kiln debug`
//! listens for gdb and accepts its connection itself, then sends the connected socket over `debug.sock`
//! (SCM_RIGHTS) along with the write end of a pipe, on which the VMM answers one line (`ok`, or why not). So the VMM
//! never opens, binds, listens or accepts once it runs: its `debugger` thread only receives descriptors and talks
//! the GDB remote protocol on them (`kiln_seccomp::Kind::Debugger`).
//!
//! The socket's path goes through `/proc/self/fd/N/` of the folder (opened `O_PATH`), so that a store deep in the
//! file system does not run into `sun_path`'s 108 bytes.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's name in the instance's folder.
pub const SOCKET_NAME: &str = "debug.sock";
/// What a request says (one datagram; its descriptors ride along).
const REQUEST: &[u8] = b"kiln-debug-gdb-1";
/// What the VMM answers when it serves the connection.
const ATTACHED: &str = "ok";
/// How long `kiln debug` waits for the VMM's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read.
const MAX_ANSWER: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot open the instance's folder {0}")]
    Folder(PathBuf, #[source] std::io::Error),
    #[error("cannot make the debugger's socket in {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("the instance takes no debugger: nothing listens on {0} (an instance started before kiln debug existed, or one that is ending)")]
    NotListening(PathBuf, #[source] std::io::Error),
    #[error("cannot hand the gdb connection to the instance")]
    Send(#[source] std::io::Error),
    #[error("the instance did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the instance refused the debugger: {0}")]
    Refused(String),
}

/// The instance's folder, opened to name paths in it through `/proc/self/fd`.
struct Folder {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Folder {
    fn open(dir: &Path) -> Result<Self, AttachError> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .map_err(|e| AttachError::Folder(dir.to_path_buf(), e))?;
        Ok(Folder { fd: opened.into(), shown: dir.join(SOCKET_NAME) })
    }

    /// The socket's path, short whatever the folder's.
    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{SOCKET_NAME}", self.fd.as_raw_fd()))
    }
}

/// The instance's end: the bound socket, which the VMM's `debugger` thread takes.
pub struct DebugSocket {
    socket: UnixDatagram,
}

/// The socket's file, removed when this is dropped (by the launcher, once the VM has ended: the `debugger` thread
/// may not unlink).
pub struct SocketFile(Folder);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.socket());
    }
}

impl DebugSocket {
    /// Binds `debug.sock` in `dir` (an instance's folder), replacing one a dead process left, readable and writable
    /// by this user only.
    pub fn bind(dir: &Path) -> Result<(Self, SocketFile), AttachError> {
        let folder = Folder::open(dir)?;
        let path = folder.socket();
        let bind_error = |e| AttachError::Bind(dir.to_path_buf(), e);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_error(e)),
            _ => {}
        }
        let socket = UnixDatagram::bind(&path).map_err(bind_error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
        Ok((DebugSocket { socket }, SocketFile(folder)))
    }

    /// Sleeps until a debugger's request comes (`Some`) or `stop`'s write end is closed (`None`; the VM has ended).
    pub(crate) fn next(&self, stop: BorrowedFd<'_>) -> Option<Request> {
        loop {
            let mut fds = [
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfds, for the duration of the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return None;
            }
            if fds[1].revents != 0 {
                return None;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Some(request) = self.receive() {
                    return Some(request);
                }
            } else if fds[0].revents != 0 {
                return None;
            }
        }
    }

    /// Takes one request that is waiting (the socket is readable): the gdb connection and where to answer. `None`
    /// for a datagram that is not a well-formed request (its descriptors are closed).
    pub(crate) fn receive(&self) -> Option<Request> {
        let mut payload = [0u8; 64];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut payload)];
        let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
        let msg = recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut space), flags).ok()?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel has just installed these descriptors in this process for this message: nothing
                // else owns them, and from here the OwnedFds do (closing them if the request is refused).
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let whole = !msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let bytes = msg.bytes;
        if !whole || payload.get(..bytes) != Some(REQUEST) || fds.len() != 2 {
            tracing::debug!(bytes, fds = fds.len(), whole, "debug socket: not a request; dropped");
            return None;
        }
        let mut answer = File::from(fds.pop()?);
        let conn = fds.pop()?;
        if !is_socket(&conn) {
            let _ = answer.write_all(b"what was sent as gdb's connection is not a socket");
            return None;
        }
        Some(Request { conn: std::net::TcpStream::from(conn), answer })
    }
}

fn is_socket(fd: &OwnedFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer it is given, on a descriptor this process owns.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    unsafe { stat.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// A debugger asking to attach: its connection (gdb's, accepted by `kiln debug`; any stream socket works) and the
/// pipe to answer on.
pub(crate) struct Request {
    pub conn: std::net::TcpStream,
    answer: File,
}

impl Request {
    /// Tells `kiln debug` that the VMM serves the connection (`Ok`) or why it does not.
    pub fn answer(mut self, result: Result<(), String>) -> std::net::TcpStream {
        let line = match result {
            Ok(()) => ATTACHED.to_string(),
            Err(why) => why,
        };
        // `kiln debug` gone meanwhile: nobody to tell.
        let _ = self.answer.write_all(line.as_bytes());
        self.conn
    }
}

/// `kiln debug`'s end: hands `conn` (gdb's accepted connection) to the instance whose folder is `dir` and waits for
/// its answer. Checking first that the instance listens ([`connect`]) saves gdb a wait for nothing.
pub fn hand_over(socket: &UnixDatagram, conn: &impl AsFd) -> Result<(), AttachError> {
    let (answer_read, answer_write) = pipe().map_err(AttachError::Send)?;
    let fds = [conn.as_fd().as_raw_fd(), answer_write.as_raw_fd()];
    let rights = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(REQUEST)], &rights, MsgFlags::empty(), None)
        .map_err(|e| AttachError::Send(e.into()))?;
    // Only the VMM's copy stays open: its answer ends with it (an instance that dies answers end-of-file).
    drop(answer_write);
    let mut answer_read = File::from(answer_read);
    let mut answer = String::new();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let read = (&mut answer_read).take(MAX_ANSWER).read_to_string(&mut answer);
        let _ = tx.send(read.map(|_| answer));
    });
    match rx.recv_timeout(ANSWER_TIMEOUT) {
        Ok(Ok(answer)) if answer == ATTACHED => Ok(()),
        Ok(Ok(answer)) if answer.is_empty() => Err(AttachError::Refused("it ended meanwhile".into())),
        Ok(Ok(answer)) => Err(AttachError::Refused(answer)),
        Ok(Err(e)) => Err(AttachError::Send(e)),
        Err(_) => Err(AttachError::NoAnswer(ANSWER_TIMEOUT)),
    }
}

/// `kiln debug`'s end: a socket connected to the instance's in `dir`.
pub fn connect(dir: &Path) -> Result<UnixDatagram, AttachError> {
    let folder = Folder::open(dir)?;
    let socket = UnixDatagram::unbound().map_err(AttachError::Send)?;
    socket.connect(folder.socket()).map_err(|e| AttachError::NotListening(folder.shown.clone(), e))?;
    Ok(socket)
}

/// A pipe (close-on-exec): (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn folder(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-attach-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_connection_handed_over_arrives_and_the_answer_comes_back() {
        let dir = folder("handover");
        let (vmm, file) = DebugSocket::bind(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(SOCKET_NAME)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (gdb, ours) = UnixStream::pair().unwrap();
        let (stop, _stop_write) = pipe().unwrap();
        let serving = std::thread::spawn(move || {
            let request = vmm.next(stop.as_fd()).expect("a request");
            let mut conn = request.answer(Ok(()));
            conn.write_all(b"$OK#9a").unwrap();
            vmm
        });
        let socket = connect(&dir).unwrap();
        hand_over(&socket, &ours).unwrap();
        drop(ours);
        let mut seen = [0u8; 6];
        (&gdb).read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"$OK#9a");
        drop(serving.join().unwrap());
        drop(file);
        assert!(!dir.join(SOCKET_NAME).exists(), "the socket's file goes with it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refusal_is_reported_with_its_reason() {
        let dir = folder("refused");
        let (vmm, _file) = DebugSocket::bind(&dir).unwrap();
        let serving = std::thread::spawn(move || loop {
            if let Some(request) = vmm.receive() {
                request.answer(Err("a debugger is already attached".into()));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let (_gdb, ours) = UnixStream::pair().unwrap();
        let e = hand_over(&connect(&dir).unwrap(), &ours).unwrap_err();
        assert_eq!(e.to_string(), "the instance refused the debugger: a debugger is already attached");
        serving.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stray_datagram_is_dropped_and_nobody_listening_is_one_error() {
        let dir = folder("stray");
        let (vmm, file) = DebugSocket::bind(&dir).unwrap();
        let socket = connect(&dir).unwrap();
        socket.send(b"hello").unwrap();
        assert!(vmm.receive().is_none());
        let (stop, stop_write) = pipe().unwrap();
        drop(stop_write);
        assert!(vmm.next(stop.as_fd()).is_none(), "a closed stop pipe ends the wait");
        drop((vmm, file));
        let e = connect(&dir).unwrap_err();
        assert!(e.to_string().starts_with("the instance takes no debugger: nothing listens on"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
