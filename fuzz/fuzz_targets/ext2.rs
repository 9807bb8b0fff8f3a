//! The ext2 code on a hostile volume image (a volume file is the user's, and a program with the volume mounted
//! writes what it likes to it): mount, walk the whole tree reading every file and link, then change it (create,
//! write, mkdir, rename, truncate, unlink, rmdir) and sync and unmount, as a program and the library OS would.
#![no_main]

use kiln_ext2::{BlockDevice, Ext2, FileType, IoError, ROOT_INO};
use libfuzzer_sys::fuzz_target;

/// The image in memory; reads and writes outside it fail as a device's would.
struct Image(Vec<u8>);

impl BlockDevice for Image {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let at = usize::try_from(offset).map_err(|_| IoError)?;
        let src = self.0.get(at..at.checked_add(buf.len()).ok_or(IoError)?).ok_or(IoError)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, writes: &[(u64, &[u8])], _flush: bool) -> Result<(), IoError> {
        for (offset, bytes) in writes {
            let at = usize::try_from(*offset).map_err(|_| IoError)?;
            let dst = self.0.get_mut(at..at.checked_add(bytes.len()).ok_or(IoError)?).ok_or(IoError)?;
            dst.copy_from_slice(bytes);
        }
        Ok(())
    }
}

fn clock() -> u32 {
    1_700_000_000
}

/// Reads the tree below `dir` (at most `budget` entries in all, `depth` levels).
fn walk(fs: &mut Ext2<Image>, dir: u32, depth: u32, budget: &mut u32, buf: &mut [u8]) {
    let Ok(entries) = fs.read_dir(dir) else { return };
    for (name, ino, kind) in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let _ = fs.stat(ino);
        let _ = fs.lookup(dir, &name);
        match kind {
            FileType::Directory if depth > 0 && name != "." && name != ".." => walk(fs, ino, depth - 1, budget, buf),
            FileType::Regular | FileType::Symlink => {
                let mut offset = 0;
                while let Ok(n @ 1..) = fs.read(ino, offset, buf) {
                    offset += n as u64;
                    if offset >= 1 << 20 {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 1 << 20 {
        return;
    }
    let len = data.len() as u64;
    let Ok(mut fs) = Ext2::mount(Image(data.to_vec()), len, 64, clock) else { return };
    let _ = (fs.was_clean(), fs.usage(), fs.block_size());
    let mut buf = vec![0u8; 8192];
    walk(&mut fs, ROOT_INO, 4, &mut 512, &mut buf);
    if fs.mark_in_use().is_err() {
        return;
    }
    if let Ok(file) = fs.create(ROOT_INO, "fuzz", 0o644) {
        fs.open(file);
        let _ = fs.write(file, 0, &[0x5a; 5000]);
        let _ = fs.write(file, 70_000, b"far");
        let _ = fs.truncate(file, 3000);
        let _ = fs.close(file);
    }
    if let Ok(dir) = fs.mkdir(ROOT_INO, "dir", 0o755) {
        let _ = fs.rename(ROOT_INO, "fuzz", dir, "moved");
        let _ = fs.set_perm(dir, 0o700);
        let _ = fs.set_times(dir, Some(1), Some(2));
    }
    if let Ok(entries) = fs.read_dir(ROOT_INO) {
        for (name, ino, kind) in entries.into_iter().take(16) {
            match kind {
                FileType::Directory => {
                    let _ = fs.rmdir(ROOT_INO, &name);
                }
                _ => {
                    let _ = fs.truncate(ino, 0);
                    let _ = fs.unlink(ROOT_INO, &name);
                }
            }
        }
    }
    let _ = fs.sync();
    let _ = fs.unmount();
});
