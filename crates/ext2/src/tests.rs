//! The filesystem against real ext2 volumes: `mkfs.ext2` (e2fsprogs) makes them, Kiln's code changes them, and
//! `e2fsck -fn` must call the result clean and `debugfs` must read back what was written.

use crate::{BlockDevice, Ext2, Ext2Error, FileType, IoError, ROOT_INO};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

pub struct FileDevice(pub File, pub Vec<(u64, usize, bool)>);

impl BlockDevice for FileDevice {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.0.read_exact_at(buf, offset).map_err(|_| IoError)
    }
    fn write(&mut self, writes: &[(u64, &[u8])], flush: bool) -> std::result::Result<(), IoError> {
        for (i, (offset, bytes)) in writes.iter().enumerate() {
            self.0.write_all_at(bytes, *offset).map_err(|_| IoError)?;
            self.1.push((*offset, bytes.len(), flush && i + 1 == writes.len()));
        }
        Ok(())
    }
}

fn clock() -> u32 {
    1_700_000_000
}

/// A fresh volume of `mib` MiB made by mkfs.ext2 as `kiln volume create` makes one.
pub fn mkfs(name: &str, mib: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-ext2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    let out = Command::new("mkfs.ext2")
        .args(["-q", "-F", "-b", "4096", "-I", "256", "-O", "^dir_index", "-E", "root_owner=0:0"])
        .arg(&path)
        .output()
        .expect("mkfs.ext2 (e2fsprogs, installed by scripts/setup.sh)");
    assert!(out.status.success(), "mkfs.ext2: {}", String::from_utf8_lossy(&out.stderr));
    path
}

fn mount(path: &Path) -> Ext2<FileDevice> {
    let f = File::options().read(true).write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    Ext2::mount(FileDevice(f, Vec::new()), len, 256, clock).unwrap()
}

pub fn fsck_clean(path: &Path) {
    let out = Command::new("e2fsck").args(["-fn"]).arg(path).output().expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs_cat(path: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("debugfs").arg("-R").arg(format!("cat {file}")).arg(path).output().expect("debugfs");
    out.stdout
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8).collect()
}

#[test]
fn files_and_directories_survive_e2fsck_and_debugfs() {
    let path = mkfs("ops.img", 32);
    let mut fs = mount(&path);
    let dir = fs.mkdir(ROOT_INO, "data", 0o755).unwrap();
    let sub = fs.mkdir(dir, "sub", 0o700).unwrap();
    let small = fs.create(dir, "small.txt", 0o644).unwrap();
    assert_eq!(fs.write(small, 0, b"hello, volume\n").unwrap(), 14);
    // Past the direct and the single indirect blocks (12 + 1024 of 4 KiB): double indirect.
    let big_bytes = pattern(5 << 20, 7);
    let big = fs.create(sub, "big.bin", 0o600).unwrap();
    for (i, chunk) in big_bytes.chunks(100_000).enumerate() {
        fs.write(big, (i * 100_000) as u64, chunk).unwrap();
    }
    // A sparse file: one byte far out.
    let sparse = fs.create(dir, "sparse", 0o644).unwrap();
    fs.write(sparse, 9 << 20, b"x").unwrap();
    // Many names: the directory grows past one block.
    for i in 0..300 {
        fs.create(dir, &format!("file-with-a-longish-name-{i:04}"), 0o644).unwrap();
    }
    for i in (0..300).step_by(2) {
        fs.unlink(dir, &format!("file-with-a-longish-name-{i:04}")).unwrap();
    }
    fs.rename(dir, "small.txt", sub, "moved.txt").unwrap();
    let gone = fs.mkdir(dir, "gone", 0o755).unwrap();
    fs.rename(dir, "gone", sub, "gone2").unwrap();
    assert_eq!(fs.lookup(sub, "gone2").unwrap(), gone);
    fs.rmdir(sub, "gone2").unwrap();
    assert_eq!(fs.rmdir(ROOT_INO, "data"), Err(Ext2Error::NotEmpty));
    assert_eq!(fs.create(dir, "sub", 0o644), Err(Ext2Error::Exists));
    fs.sync().unwrap();
    fsck_clean(&path);
    assert_eq!(debugfs_cat(&path, "/data/sub/moved.txt"), b"hello, volume\n");
    assert_eq!(debugfs_cat(&path, "/data/sub/big.bin"), big_bytes);

    // Mounted again: the same files.
    let mut fs = mount(&path);
    let dir = fs.lookup(ROOT_INO, "data").unwrap();
    let sub = fs.lookup(dir, "sub").unwrap();
    let big = fs.lookup(sub, "big.bin").unwrap();
    let mut back = vec![0u8; big_bytes.len() + 10];
    assert_eq!(fs.read(big, 0, &mut back).unwrap(), big_bytes.len());
    assert_eq!(&back[..big_bytes.len()], &big_bytes[..]);
    let sparse = fs.lookup(dir, "sparse").unwrap();
    let mut one = [1u8; 2];
    assert_eq!(fs.read(sparse, 4096, &mut one).unwrap(), 2);
    assert_eq!(one, [0, 0]);
    let names: Vec<_> = fs.read_dir(dir).unwrap().into_iter().map(|(n, _, t)| (n, t)).collect();
    assert_eq!(names.len(), 1 + 1 + 150);
    assert!(names.contains(&("sub".into(), FileType::Directory)));
    assert!(names.contains(&("file-with-a-longish-name-0001".into(), FileType::Regular)));

    // Shrinking frees the indirect trees; deleting frees everything.
    fs.truncate(big, 10_000).unwrap();
    assert_eq!(fs.stat(big).unwrap().size, 10_000);
    fs.write(big, 20_000, b"tail").unwrap();
    let mut gap = [9u8; 100];
    fs.read(big, 9_990, &mut gap).unwrap();
    assert_eq!(&gap[..10], &big_bytes[9_990..10_000]);
    assert!(gap[10..].iter().all(|&b| b == 0), "bytes past a truncation read as zeros");
    fs.unlink(dir, "sparse").unwrap();
    fs.sync().unwrap();
    fsck_clean(&path);
    let (_, free_before, _, _) = fs.usage();
    fs.unlink(sub, "big.bin").unwrap();
    assert!(fs.usage().1 > free_before);
    fs.sync().unwrap();
    fsck_clean(&path);
}

#[test]
fn an_open_unlinked_file_lives_until_closed() {
    let path = mkfs("orphan.img", 8);
    let mut fs = mount(&path);
    let f = fs.create(ROOT_INO, "tmp", 0o644).unwrap();
    fs.write(f, 0, &pattern(50_000, 1)).unwrap();
    fs.open(f);
    fs.unlink(ROOT_INO, "tmp").unwrap();
    let mut back = vec![0u8; 50_000];
    assert_eq!(fs.read(f, 0, &mut back).unwrap(), 50_000);
    assert_eq!(back, pattern(50_000, 1));
    let other = fs.create(ROOT_INO, "other", 0o644).unwrap();
    assert_ne!(other, f, "an open inode is not handed out again");
    fs.close(f).unwrap();
    fs.sync().unwrap();
    fsck_clean(&path);
    // Still open when the volume is unmounted (the program ended without closing it): freed then.
    let g = fs.create(ROOT_INO, "tmp2", 0o644).unwrap();
    fs.write(g, 0, b"bytes").unwrap();
    fs.open(g);
    fs.unlink(ROOT_INO, "tmp2").unwrap();
    fs.unmount().unwrap();
    fsck_clean(&path);
}

#[test]
fn a_full_volume_says_so() {
    let path = mkfs("full.img", 2);
    let mut fs = mount(&path);
    let f = fs.create(ROOT_INO, "fill", 0o644).unwrap();
    let chunk = vec![0xaa; 64 << 10];
    let mut at = 0u64;
    loop {
        match fs.write(f, at, &chunk) {
            Ok(n) => at += n as u64,
            Err(e) => {
                assert_eq!(e, Ext2Error::NoSpace);
                break;
            }
        }
    }
    assert!(at > 1 << 20);
    fs.sync().unwrap();
    fsck_clean(&path);
}

#[test]
fn a_sync_writes_data_then_metadata_each_flushed() {
    let path = mkfs("order.img", 8);
    let mut fs = mount(&path);
    let f = fs.create(ROOT_INO, "log", 0o644).unwrap();
    fs.sync().unwrap();
    fs.cache.dev.1.clear();
    fs.write(f, 0, b"record 1\n").unwrap();
    fs.sync().unwrap();
    // The file's data block, flushed; then its inode block, bitmap, descriptors, superblock, flushed.
    let data_block = {
        let mut inode = fs.read_inode(f).unwrap();
        fs.map_block(&mut inode, 0, false, 0).unwrap().unwrap()
    };
    let writes = &fs.cache.dev.1;
    assert_eq!(writes[0], (u64::from(data_block) * 4096, 4096, true));
    assert!(writes.len() > 2 && writes.last().unwrap().2);
    assert!(writes[1..].iter().all(|w| w.0 != u64::from(data_block) * 4096));

    // Overwriting in the same second: the data block alone, flushed once.
    fs.cache.dev.1.clear();
    fs.write(f, 0, b"record 2\n").unwrap();
    fs.sync().unwrap();
    assert_eq!(fs.cache.dev.1, [(u64::from(data_block) * 4096, 4096, true)]);
}

#[test]
fn a_mounted_volume_is_marked_in_use_until_unmounted() {
    let path = mkfs("state.img", 8);
    let mut fs = mount(&path);
    assert!(fs.was_clean());
    fs.mark_in_use().unwrap();
    let f = fs.create(ROOT_INO, "f", 0o644).unwrap();
    fs.write(f, 0, b"x").unwrap();
    fs.sync().unwrap();
    assert!(!mount(&path).was_clean(), "a volume whose VM was killed now");
    fs.unmount().unwrap();
    assert!(mount(&path).was_clean());
    fsck_clean(&path);
}

#[test]
fn blocks_freed_since_the_last_sync_are_not_reused_before_it() {
    let path = mkfs("reuse.img", 8);
    let mut fs = mount(&path);
    let old = fs.create(ROOT_INO, "old", 0o644).unwrap();
    fs.write(old, 0, &pattern(8192, 3)).unwrap();
    fs.sync().unwrap();
    let blocks_of = |fs: &mut Ext2<FileDevice>, ino| {
        let mut inode = fs.read_inode(ino).unwrap();
        (0..2).map(|fb| fs.map_block(&mut inode, fb, false, 0).unwrap().unwrap()).collect::<Vec<_>>()
    };
    let freed = blocks_of(&mut fs, old);
    fs.truncate(old, 0).unwrap();
    let new = fs.create(ROOT_INO, "new", 0o644).unwrap();
    fs.write(new, 0, &pattern(8192, 4)).unwrap();
    assert!(blocks_of(&mut fs, new).iter().all(|b| !freed.contains(b)), "reused before the truncate was synced");
    fs.sync().unwrap();
    fsck_clean(&path);
    // After the sync they are free for anyone.
    assert!(fs.freed_since_sync.is_empty());
}

/// Damaged volumes (the host checks a user's file with this code, and a guest could write anything to its own
/// volume): every operation fails with an error or succeeds, and nothing panics.
#[test]
fn damaged_volumes_give_errors_not_panics() {
    let path = mkfs("damaged.img", 4);
    let mut fs = mount(&path);
    let dir = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    for i in 0..40 {
        let f = fs.create(dir, &format!("f{i}"), 0o644).unwrap();
        fs.write(f, 0, &pattern(5000 + i * 3000, i as u8)).unwrap();
    }
    fs.sync().unwrap();
    drop(fs);
    let pristine = std::fs::read(&path).unwrap();
    // Metadata lives in the first blocks: superblock, descriptors, bitmaps, inode table, the directories' blocks.
    let span = pristine.len().min(64 * 4096);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut mounted = 0;
    for round in 0..300 {
        let mut image = pristine.clone();
        for _ in 0..1 + round % 8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % span as u64) as usize;
            image[at] = (seed >> 32) as u8;
        }
        std::fs::write(&path, &image).unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let Ok(mut fs) = Ext2::mount(FileDevice(f, Vec::new()), image.len() as u64, 64, clock) else { continue };
        mounted += 1;
        let mut buf = vec![0u8; 64 << 10];
        if let Ok(entries) = fs.read_dir(ROOT_INO) {
            for (_, ino, _) in entries {
                if let Ok(list) = fs.read_dir(ino) {
                    for (name, f, _) in list.into_iter().take(10) {
                        let _ = fs.read(f, 0, &mut buf);
                        let _ = fs.write(f, 100, b"more");
                        let _ = fs.truncate(f, 1000);
                        let _ = fs.unlink(ino, &name);
                    }
                }
                let _ = fs.create(ino, "new", 0o644);
            }
        }
        let _ = fs.mkdir(ROOT_INO, "x", 0o755);
        let _ = fs.rename(ROOT_INO, "d", ROOT_INO, "e");
        let _ = fs.sync();
    }
    assert!(mounted > 150, "most damaged volumes still mount, so the operations ran: {mounted} of 300");
}

#[test]
fn volumes_kiln_cannot_write_are_refused() {
    let path = mkfs("ext4.img", 8);
    let out = Command::new("tune2fs").args(["-O", "extents"]).arg(&path).output().expect("tune2fs");
    assert!(out.status.success());
    let f = File::options().read(true).write(true).open(&path).unwrap();
    let err = Ext2::mount(FileDevice(f, Vec::new()), 8 << 20, 64, clock).err().unwrap();
    assert!(matches!(err, Ext2Error::Unsupported(_)), "{err:?}");
    let f = File::open("/dev/zero").unwrap();
    assert!(matches!(Ext2::mount(FileDevice(f, Vec::new()), 1 << 20, 64, clock).err(), Some(Ext2Error::Corrupt(_))));
}

fn debugfs(path: &Path, request: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(request).arg(path).output().expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn symbolic_links_hard_links_and_fifos_survive_e2fsck() {
    let path = mkfs("links.img", 8);
    let mut fs = mount(&path);
    let file = fs.create(ROOT_INO, "file", 0o644).unwrap();
    fs.write(file, 0, b"data").unwrap();
    let fast = fs.symlink(ROOT_INO, "fast", b"file").unwrap();
    let long_target = "d/".repeat(100) + "end";
    let slow = fs.symlink(ROOT_INO, "slow", long_target.as_bytes()).unwrap();
    assert_eq!(fs.file_type(fast).unwrap(), FileType::Symlink);
    assert_eq!(fs.read_link(fast).unwrap(), b"file");
    assert_eq!(fs.read_link(slow).unwrap(), long_target.as_bytes());
    assert_eq!(fs.read_link(file), Err(Ext2Error::Invalid));
    assert_eq!(fs.symlink(ROOT_INO, "fast", b"x"), Err(Ext2Error::Exists));
    fs.link(file, ROOT_INO, "hard").unwrap();
    assert_eq!(fs.stat(file).unwrap().links, 2);
    assert_eq!(fs.lookup(ROOT_INO, "hard").unwrap(), file);
    let dir = fs.mkdir(ROOT_INO, "dir", 0o755).unwrap();
    assert_eq!(fs.link(dir, ROOT_INO, "dir2"), Err(Ext2Error::IsDir));
    let fifo = fs.mkfifo(ROOT_INO, "fifo", 0o600).unwrap();
    assert_eq!(fs.file_type(fifo).unwrap(), FileType::Fifo);
    // Links to remove again, fast and slow.
    fs.symlink(ROOT_INO, "gone-fast", b"file").unwrap();
    fs.symlink(ROOT_INO, "gone-slow", long_target.as_bytes()).unwrap();
    fs.sync().unwrap();
    fsck_clean(&path);
    let free_before = fs.usage().1;
    fs.unlink(ROOT_INO, "gone-fast").unwrap();
    fs.unlink(ROOT_INO, "gone-slow").unwrap();
    fs.unlink(ROOT_INO, "file").unwrap();
    assert_eq!(fs.stat(file).unwrap().links, 1);
    fs.sync().unwrap();
    // The slow link's block came back (after the sync that lets freed blocks go).
    assert!(fs.usage().1 > free_before);
    fsck_clean(&path);
    assert_eq!(debugfs_cat(&path, "/hard"), b"data");
    assert!(debugfs(&path, "stat /fast").contains("Fast link dest: \"file\""));
    assert!(debugfs(&path, "stat /fifo").contains("Type: FIFO"));
    let mut fs = mount(&path);
    let slow = fs.lookup(ROOT_INO, "slow").unwrap();
    assert_eq!(fs.read_link(slow).unwrap(), long_target.as_bytes());
}

#[test]
fn free_counts_a_volume_claims_at_their_limit_saturate_as_blocks_and_inodes_are_freed() {
    // Found by fuzz/ext2: a group descriptor claiming 65,535 free blocks overflowed its count when a block was freed.
    let path = mkfs("full-counts.img", 8);
    let mut fs = mount(&path);
    let f = fs.create(ROOT_INO, "f", 0o644).unwrap();
    fs.write(f, 0, &pattern(8192, 1)).unwrap();
    fs.unmount().unwrap();
    drop(fs);
    // Group 0's descriptor (the block after the superblock's, with 4 KiB blocks) and the superblock: all free.
    let file = File::options().write(true).open(&path).unwrap();
    file.write_all_at(&[0xff; 4], 4096 + 12).unwrap();
    file.write_all_at(&[0xff; 8], 1024 + 12).unwrap();
    drop(file);
    let mut fs = mount(&path);
    fs.unlink(ROOT_INO, "f").unwrap();
    fs.sync().unwrap();
    assert!(fs.lookup(ROOT_INO, "f").is_err());
}
