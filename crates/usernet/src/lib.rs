//! Rootless user-mode networking for a Kiln VM, as slirp/passt do for QEMU: this crate plays the whole outside
//! world for the guest's virtio-net card. Guest frames are terminated in a host-side smoltcp stack and the
//! byte streams/datagrams are relayed onto ordinary host sockets, without root or /dev/net/tun.
//!
//! The VMM side sees only frames: `send` what the guest transmitted, `recv` what it should receive, and poll
//! `ready_fd` to learn when there is something to receive. Everything else runs on one host thread
//! (`engine.rs`) that polls the host sockets and an eventfd that `send` kicks.

mod config;
mod device;
mod dns;
mod engine;
mod forward;
mod frame;
mod poller;
mod publish;
mod queue;
mod sources;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

/// What the fuzz targets (`fuzz/`) reach that the crate keeps private: only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// Classifies one guest frame as the relay does on a network of `config`; the decision, as text.
    pub fn classify(frame: &[u8], config: &crate::UserNetConfig) -> String {
        format!("{:?}", crate::frame::classify(frame, config))
    }
}

use std::io;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::{UserNet6, UserNetConfig};
pub use forward::{ForwardParseError, PortForward, Proto};
pub use publish::Publisher;

use queue::Shared;

/// Why `UserNet::new` could not set up the network.
#[derive(Debug, thiserror::Error)]
pub enum UserNetError {
    #[error("-p {spec}: {addr} is already in use by another program; choose another host port")]
    PortInUse {
        spec: PortForward,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("-p {spec}: binding {addr} needs root or CAP_NET_BIND_SERVICE (ports below 1024 are privileged); choose a host port of 1024 or more")]
    PrivilegedPort {
        spec: PortForward,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("-p {spec}: cannot listen on {addr}")]
    Bind {
        spec: PortForward,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the guest's addresses are inconsistent: {0}")]
    BadAddresses(String),
    #[error("cannot create the user-mode network's eventfd")]
    EventFd(#[source] io::Error),
    #[error("cannot wait on the user-mode network's sockets (epoll)")]
    Epoll(#[source] io::Error),
    #[error("cannot start the user-mode network thread")]
    Thread(#[source] io::Error),
}

/// Counters since `UserNet::new`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserNetStats {
    /// Frames the guest sent (`send` calls).
    pub frames_in: u64,
    /// Frames handed to the guest (`recv` returning `Some`).
    pub frames_out: u64,
    /// TCP connections accepted on a `-p` forward and relayed into the guest.
    pub tcp_inbound: u64,
    /// TCP connections the guest opened to the outside that the host connected.
    pub tcp_outbound: u64,
    /// UDP flows created (outbound per guest port, inbound per host peer).
    pub udp_flows: u64,
    /// Frames dropped: malformed, unsupported, spoofed, or a queue was full.
    pub dropped: u64,
}

/// A running user-mode network. Dropping it stops its thread and closes every host socket.
pub struct UserNet {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A user-mode network whose host sockets are bound and whose relay thread has not started yet.
pub struct BoundNet {
    shared: Arc<Shared>,
    engine: engine::Engine,
}

impl BoundNet {
    /// Publishes the guest's ports as it listens on them (answered once the relay thread runs).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.shared.clone())
    }

    /// Starts the relay thread. It confines itself to its seccomp list at once (`kiln_seccomp`), so a launcher that
    /// changes the process's ids (`kiln run --jail`) does so before it starts: musl makes every thread change them.
    pub fn start(self) -> Result<UserNet, UserNetError> {
        let BoundNet { shared, engine } = self;
        let thread = std::thread::Builder::new()
            .name("kiln-usernet".into())
            .spawn(move || {
                // Nobody waits for the thread to start (that would cost every launch a thread hop), so it ends the
                // process itself where the host refuses the filter (the VMM's threads would fail alike).
                if let Err(e) = kiln_seccomp::confine(kiln_seccomp::Kind::UserNet) {
                    let _ = writeln!(io::stderr(), "kiln: the user-mode network's thread: {e}");
                    std::process::exit(125);
                }
                engine.run()
            })
            .map_err(UserNetError::Thread)?;
        Ok(UserNet { shared, thread: Some(thread) })
    }
}

impl UserNet {
    /// Binds every forward's host socket now (so "address already in use" and privileged ports fail before
    /// the VM boots), starts the relay thread, and returns.
    pub fn new(config: UserNetConfig) -> Result<UserNet, UserNetError> {
        UserNet::bind(config)?.start()
    }

    /// Binds every forward's host socket and reads the host's resolver, without starting the relay thread.
    pub fn bind(config: UserNetConfig) -> Result<BoundNet, UserNetError> {
        let shared = Arc::new(Shared::new().map_err(UserNetError::EventFd)?);
        let engine = engine::Engine::new(config, shared.clone())?;
        Ok(BoundNet { shared, engine })
    }

    /// Queues one Ethernet frame the guest transmitted (no virtio header) and wakes the relay thread.
    /// Never blocks beyond a short lock; when the relay falls far behind, the frame is dropped (and counted),
    /// as a real link would.
    pub fn send(&self, frame: &[u8]) {
        self.shared.push_from_guest(frame);
    }

    /// Moves the next frame for the guest into `buf` and returns its length, or `None` when none is waiting.
    /// Never blocks. A frame longer than `buf` is dropped and counted (frames are at most 65550 bytes; with
    /// the guest's 1500-byte MTU, at most 1514).
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        self.shared.to_guest(buf)
    }

    /// An eventfd that is readable exactly while `recv` has a frame waiting (level-triggered). The caller
    /// must not read it: `recv` clears it when it takes the last frame, and the relay sets it again when it
    /// queues one.
    pub fn ready_fd(&self) -> RawFd {
        self.shared.ready.as_raw_fd()
    }

    /// Publishes the guest's ports as it listens on them.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.shared.clone())
    }

    pub fn stats(&self) -> UserNetStats {
        self.shared.stats.snapshot()
    }

    /// Has the relay thread call `wake` after each round in which it queued frames for the guest, so that the VMM
    /// can move them into the guest at once instead of polling `ready_fd` from a thread of its own (one thread
    /// wake-up less per packet). `wake` runs on the relay thread and may call `recv`.
    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        *self.shared.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.kick();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
