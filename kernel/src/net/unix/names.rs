//! The names AF_UNIX sockets bind to: a path in the filesystem (a socket file appears there, and `unlink` takes the
//! name away) or an abstract name (a leading NUL, no file). Bound sockets are found through `BOUND`, keyed by the
//! socket file's inode for path names, so that a name unlinked and bound again reaches the new socket only.

use super::{Endpoint, Kind};
use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::vfs;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

/// A socket's address, as `getsockname` gives it back: the path as the program gave it, or the abstract bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Name {
    Path(String),
    Abstract(Vec<u8>),
}

/// Linux keeps an abstract name per socket type (a stream and a datagram socket may hold the same one), a path
/// name per file.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Inode(u64),
    Abstract(Vec<u8>, Kind),
}

static BOUND: SpinLock<BTreeMap<Key, Weak<Endpoint>>> = SpinLock::new(BTreeMap::new());
/// The next name `bind` with only the family picks (Linux's autobind: five hex digits in the abstract namespace).
static AUTOBIND: AtomicU32 = AtomicU32::new(0);

/// Takes `name` for `endpoint`: makes the socket file of a path name (EADDRINUSE if the path exists).
pub fn bind(name: &Name, endpoint: &Arc<Endpoint>) -> Result<Key, Errno> {
    let key = match name {
        Name::Path(path) => Key::Inode(vfs::make_socket(path).map_err(|e| match e {
            Errno::EEXIST => Errno::EADDRINUSE,
            e => e,
        })?),
        Name::Abstract(bytes) => Key::Abstract(bytes.clone(), endpoint.kind),
    };
    let mut bound = BOUND.lock();
    if bound.get(&key).is_some_and(|held| held.strong_count() > 0) {
        return Err(Errno::EADDRINUSE);
    }
    bound.insert(key.clone(), Arc::downgrade(endpoint));
    Ok(key)
}

/// An abstract name nobody holds, for a socket bound with only its family.
pub fn unused_abstract(kind: Kind) -> Name {
    let bound = BOUND.lock();
    loop {
        let n = AUTOBIND.fetch_add(1, Ordering::Relaxed) & 0xfffff;
        let bytes = alloc::format!("{n:05x}").into_bytes();
        if !bound.contains_key(&Key::Abstract(bytes.clone(), kind)) {
            return Name::Abstract(bytes);
        }
    }
}

/// Lets `key` go if `endpoint` still holds it.
pub fn release(key: &Key, endpoint: &Endpoint) {
    let mut bound = BOUND.lock();
    if bound.get(key).is_some_and(|held| core::ptr::eq(held.as_ptr(), endpoint)) {
        bound.remove(key);
    }
}

/// The socket of `kind` bound to `name`: ENOENT if a path does not exist, ECONNREFUSED if no socket has the name,
/// EPROTOTYPE if a socket of another type has the path.
pub fn find(name: &Name, kind: Kind) -> Result<Arc<Endpoint>, Errno> {
    let key = match name {
        Name::Path(path) => Key::Inode(vfs::socket_inode(path)?.ok_or(Errno::ECONNREFUSED)?),
        Name::Abstract(bytes) => Key::Abstract(bytes.clone(), kind),
    };
    let found = BOUND.lock().get(&key).and_then(Weak::upgrade).ok_or(Errno::ECONNREFUSED)?;
    if found.kind != kind {
        return Err(Errno::EPROTOTYPE);
    }
    Ok(found)
}
