//! A volume as a snapshot keeps it: its virtio-blk device's transport state and what identifies its host file as it
//! was then (device and inode, size, modification and status-change times), not the file's contents, which stay
//! where they are (a volume can be large, and copying it would make every snapshot as large). A restore needs the
//! very file, unchanged: the guest's file system cache in the snapshot's RAM and the blocks on the volume must be of
//! the same moment. A volume holds no request in flight at a snapshot: requests are done on the notifying vCPU's
//! thread before it goes back to its loop, where it holds.

use crate::virtio::state::TransportState;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What identifies a volume's host file and its contents' moment without reading them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time, (seconds, nanoseconds) since the Unix epoch: any write moves it (see [`Stamp`]).
    pub mtime: (i64, i64),
    /// Status-change time: moved by any change to the file, and unlike the modification time no program can set it
    /// back.
    pub ctime: (i64, i64),
}

impl FileIdentity {
    pub fn of(file: &File) -> std::io::Result<FileIdentity> {
        let m = file.metadata()?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// How the file is now (`now`) unlike at the snapshot (`self`), in words; None if it is the same.
    pub fn change(&self, now: &FileIdentity) -> Option<String> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            return Some("is another file than the snapshot's VM had (another inode)".into());
        }
        if self.size != now.size {
            return Some(format!("is {} bytes, but was {} at the snapshot", now.size, self.size));
        }
        if self.mtime != now.mtime {
            return Some("was written to since the snapshot (its modification time moved)".into());
        }
        if self.ctime != now.ctime {
            return Some("was changed since the snapshot (its status-change time moved)".into());
        }
        None
    }
}

/// One volume in a snapshot: its name (the launcher's), its file as it was, its device's queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub name: String,
    pub file: FileIdentity,
    pub transport: TransportState,
}

/// A VM that runs on after a snapshot must not write its volume and leave the file's identity as the snapshot saw it.
/// A write in the same tick of the host's coarse clock as the snapshot's last one would (and on a file system of
/// whole seconds, one in the same second): so the first write after a snapshot moves the modification time on by a
/// second if it did not move by itself.
#[derive(Debug, Default)]
pub(crate) struct Stamp(Option<(i64, i64)>);

impl Stamp {
    /// A snapshot saw the file as `identity`.
    pub(crate) fn set(&mut self, identity: &FileIdentity) {
        self.0 = Some(identity.mtime);
    }

    /// Called after each write to `file` (on a vCPU's thread: an fstat and, once, a futimens).
    pub(crate) fn after_write(&mut self, file: &File) {
        let Some(then) = self.0.take() else { return };
        let Ok(m) = file.metadata() else { return };
        if (m.mtime(), m.mtime_nsec()) != then {
            return;
        }
        if let Some(later) = system_time(then).and_then(|t| t.checked_add(Duration::from_secs(1))) {
            let _ = file.set_modified(later);
        }
    }
}

/// (seconds, nanoseconds) since the Unix epoch as a time, where it is one.
fn system_time((secs, nanos): (i64, i64)) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::try_from(nanos).ok()?);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH.checked_add(Duration::from_secs(secs))?.checked_add(nanos),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?.checked_add(nanos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(test: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kiln-volume-identity-{test}-{}", std::process::id()))
    }

    #[test]
    fn a_write_a_resize_or_another_file_is_a_change() {
        let path = scratch("changes");
        std::fs::write(&path, b"one").unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let then = FileIdentity::of(&file).unwrap();
        assert_eq!(then.change(&FileIdentity::of(&file).unwrap()), None, "nothing happened");
        // A read changes nothing.
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(then.change(&FileIdentity::of(&file).unwrap()), None, "a read is no change");
        file.set_len(4096).unwrap();
        assert!(then.change(&FileIdentity::of(&file).unwrap()).unwrap().contains("is 4096 bytes, but was 3"));
        // A write that keeps the size and the modification time (set back, as `touch -d` would) still moved ctime.
        let before = FileIdentity::of(&file).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        (&file).write_all(b"x").unwrap();
        file.set_len(4096).unwrap();
        file.set_modified(system_time(before.mtime).unwrap()).unwrap();
        let now = FileIdentity::of(&file).unwrap();
        assert_eq!(now.mtime, before.mtime);
        assert!(before.change(&now).unwrap().contains("status-change time"), "{:?}", before.change(&now));
        // The same name, another file.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let other = File::open(&path).unwrap();
        assert!(now.change(&FileIdentity::of(&other).unwrap()).unwrap().contains("another inode"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_first_write_after_a_snapshot_moves_the_modification_time_even_in_the_same_tick() {
        let path = scratch("stamp");
        std::fs::write(&path, b"data").unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let fixed = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        file.set_modified(fixed).unwrap();
        let seen = FileIdentity::of(&file).unwrap();
        let mut stamp = Stamp::default();
        stamp.set(&seen);
        // A write whose modification time the coarse clock left where it was (set back here to stand for it).
        std::os::unix::fs::FileExt::write_all_at(&file, b"D", 0).unwrap();
        file.set_modified(fixed).unwrap();
        stamp.after_write(&file);
        let now = FileIdentity::of(&file).unwrap();
        assert_eq!(now.mtime, (1_700_000_001, 5));
        assert!(seen.change(&now).is_some());
        // Only the first write after the snapshot: later ones are left alone.
        file.set_modified(fixed).unwrap();
        stamp.after_write(&file);
        assert_eq!(FileIdentity::of(&file).unwrap().mtime, (1_700_000_000, 5));
        assert_eq!(system_time((-2, 500)), UNIX_EPOCH.checked_sub(Duration::new(1, 999_999_500)));
        std::fs::remove_file(&path).unwrap();
    }
}
