//! A detached instance's control socket (`control.sock` in its folder): `kiln snapshot` connects, sends one JSON
//! request line and reads one JSON answer line. The instance process serves it on a thread of its own, confined to
//! its own allow-list; the VM does the work on its own thread ([`kiln_vmm::Controller`]).

use anyhow::{anyhow, Context, Result};
use kiln_launch::LaunchSpec;
use kiln_vmm::snapshot::{Request, Written};
use kiln_vmm::Controller;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Longest request line taken.
const MAX_REQUEST: u64 = 8 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Absolute path of the file to write.
    pub path: PathBuf,
    /// Whether the instance runs on after the snapshot (else it ends).
    pub keep_running: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Written { memory_bytes: u64, file_len: u64 },
    Failed(String),
}

/// The socket, removed when this is dropped (the instance process's end). The drop waits for an answer being
/// written: a snapshot that ends the VM ends this process right after, and the answer must reach `kiln snapshot`.
pub struct ControlSocket {
    path: PathBuf,
    /// Held by the control thread from a request to its answer.
    busy: Arc<Mutex<()>>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _answered = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `path` as a name short enough for a Unix socket (108 bytes): through `/proc/self/fd` and its folder, opened
/// here (the returned file must be kept while the name is used). A store deep in a file system has longer paths.
fn short_name(path: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    Ok((dir, short))
}

/// The control socket, bound but not yet served: bound before a jail closes (the instance's folder is outside its
/// root), served after it (see [`ControlListener::serve`]).
pub struct ControlListener {
    path: PathBuf,
    listener: UnixListener,
    launch: serde_json::Value,
}

/// Listens at `path`. A socket that cannot be made gives none (the instance runs, without snapshots), said on
/// stderr, which is the instance's log.
pub fn listen(path: &Path, spec: &LaunchSpec) -> Result<Option<ControlListener>> {
    let _ = std::fs::remove_file(path);
    let bound = short_name(path).and_then(|(_dir, short)| UnixListener::bind(short));
    let listener = match bound {
        Ok(listener) => listener,
        Err(e) => {
            errln!("kiln: cannot listen on {} ({e}): kiln snapshot cannot reach this instance", path.display());
            return Ok(None);
        }
    };
    let launch = serde_json::to_value(spec).context("cannot record the launch specification")?;
    Ok(Some(ControlListener { path: path.to_path_buf(), listener, launch }))
}

impl ControlListener {
    /// Serves the socket on a thread until the process ends. The thread confines itself at once, so it must start
    /// after a jail's change of uid: musl makes every thread of the process run the set*id calls, which no thread's
    /// allow-list has (a control thread started before it died of SIGSYS, and the jailed instance with it).
    pub fn serve(self, controller: Controller) -> Result<ControlSocket> {
        let ControlListener { path, listener, launch } = self;
        let busy = Arc::new(Mutex::new(()));
        let answering = busy.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                if let Err(e) = kiln_seccomp::confine(kiln_seccomp::Kind::Control) {
                    errln!("kiln: the control socket's thread: {e}");
                    return;
                }
                for conn in listener.incoming().flatten() {
                    let _busy = answering.lock().unwrap_or_else(PoisonError::into_inner);
                    answer(conn, &controller, &launch);
                }
            })
            .context("cannot start the control socket's thread")?;
        Ok(ControlSocket { path, busy })
    }
}

fn answer(conn: UnixStream, controller: &Controller, launch: &serde_json::Value) {
    let mut line = String::new();
    if BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line).is_err() {
        return;
    }
    let answer = match serde_json::from_str::<SnapshotRequest>(&line) {
        Ok(SnapshotRequest { path, keep_running }) if path.is_absolute() => {
            let request = Request { path, keep_running, launch: launch.clone() };
            match controller.snapshot(request) {
                Ok(Written { memory_bytes, file_len }) => Answer::Written { memory_bytes, file_len },
                Err(e) => Answer::Failed(kiln_launch::chain(&e)),
            }
        }
        Ok(_) => Answer::Failed("the snapshot's path must be absolute".into()),
        Err(e) => Answer::Failed(format!("a request this instance does not understand ({e})")),
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_default();
    text.push('\n');
    let _ = (&conn).write_all(text.as_bytes());
}

/// Sends `request` to the instance whose control socket is at `socket` and waits for its answer.
pub fn snapshot(socket: &Path, request: &SnapshotRequest) -> Result<Answer> {
    let conn = short_name(socket)
        .and_then(|(_dir, short)| UnixStream::connect(short))
        .with_context(|| format!("cannot reach the instance's control socket {}", socket.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    (&conn).write_all(text.as_bytes()).context("cannot send the request to the instance")?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line).context("the instance did not answer")?;
    serde_json::from_str(&line).map_err(|_| anyhow!("the instance answered {line:?}, which kiln does not understand"))
}
