use super::*;

/// The guest's side of a volume: read and written, as the library OS's driver does.
struct ReadWrite(File);

impl BlockDevice for ReadWrite {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_exact_at(buf, offset).map_err(|_| IoError)
    }
    fn write(&mut self, writes: &[(u64, &[u8])], flush: bool) -> Result<(), IoError> {
        for (offset, bytes) in writes {
            self.0.write_all_at(bytes, *offset).map_err(|_| IoError)?;
        }
        if flush {
            self.0.sync_data().map_err(|_| IoError)?;
        }
        Ok(())
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-shim-writable-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("{}: {e}", path.display()))
}

#[test]
fn a_volume_starts_as_the_directory_and_what_the_vm_did_is_written_back() {
    let dir = scratch("back");
    let (host, outside, bundle) = (dir.join("host"), dir.join("outside"), dir.join("bundle"));
    for d in [host.join("sub"), outside.clone(), bundle.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(host.join("keep.txt"), "kept").unwrap();
    std::fs::write(host.join("gone.txt"), "deleted in the VM").unwrap();
    std::fs::write(host.join("sub/inner"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, host.join("link")).unwrap();
    let mount = WritableMount { host: host.clone(), guest: "/data".into(), size: 16 << 20 };
    let volumes = make_all(std::slice::from_ref(&mount), &bundle).unwrap();
    assert_eq!(volumes[0].image, image_path(&bundle, 0));

    // Another container's writable mount of the directory, meanwhile.
    let again = make_all(std::slice::from_ref(&mount), &dir).unwrap_err();
    assert!(matches!(again, VolumeError::InUse { .. }), "{again}");
    assert!(again.to_string().contains("is in use by another Kiln container"), "{again}");

    // The VM: it finds the directory's files, deletes one, writes another (set-user-ID), makes a directory where the
    // host has a symbolic link to a directory outside, and a symbolic link of its own.
    {
        let file = File::options().read(true).write(true).open(&volumes[0].image).unwrap();
        let len = file.metadata().unwrap().len();
        let mut fs = Ext2::mount(ReadWrite(file), len, 64, || 0).unwrap();
        let keep = fs.lookup(ROOT_INO, "keep.txt").unwrap();
        let mut buf = [0u8; 16];
        let n = fs.read(keep, 0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept", "copied in at create");
        fs.unlink(ROOT_INO, "gone.txt").unwrap();
        let new = fs.create(ROOT_INO, "new.txt", 0o4755).unwrap();
        fs.write(new, 0, b"written in the VM").unwrap();
        fs.unlink(ROOT_INO, "link").unwrap();
        let link = fs.mkdir(ROOT_INO, "link", 0o755).unwrap();
        let inside = fs.create(link, "f", 0o644).unwrap();
        fs.write(inside, 0, b"inside").unwrap();
        fs.symlink(ROOT_INO, "to-etc", b"/etc").unwrap();
        fs.unmount().unwrap();
    }
    volumes[0].write_back().unwrap();

    assert_eq!(read(&host.join("keep.txt")), "kept");
    assert!(!host.join("gone.txt").exists(), "deleted in the VM, deleted on the host");
    assert_eq!(read(&host.join("new.txt")), "written in the VM");
    let mode = std::fs::metadata(host.join("new.txt")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "no set-user-ID file on the host");
    assert_eq!(read(&host.join("sub/inner")), "x");
    assert!(std::fs::symlink_metadata(host.join("link")).unwrap().is_dir(), "the link replaced by the directory");
    assert_eq!(read(&host.join("link/f")), "inside");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the host's link");
    assert_eq!(std::fs::read_link(host.join("to-etc")).unwrap(), Path::new("/etc"));

    // Given back: the file gone, the directory free for the next container.
    drop(volumes);
    assert!(!image_path(&bundle, 0).exists());
    let next = make_all(&[mount], &bundle).unwrap();
    drop(next);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_larger_than_its_volume_is_refused_before_anything_is_made() {
    let dir = scratch("big");
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("big"), vec![7u8; 6 << 20]).unwrap();
    let mount = WritableMount { host, guest: "/cache".into(), size: MIN_VOLUME_SIZE };
    let refused = make_all(&[mount], &dir).unwrap_err();
    assert!(matches!(refused, VolumeError::TooBig { .. }), "{refused}");
    assert!(refused.to_string().contains("io.kiln.volume-size./cache"), "{refused}");
    assert!(!image_path(&dir, 0).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
