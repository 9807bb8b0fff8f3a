//! Builds the root filesystem image the library OS reads its files from (format: `kiln_abi::rootfs`), from host
//! files and directories. Directories are walked in name order, so the same tree always gives the same image.

use kiln_abi::layout::page_align_up;
use kiln_abi::rootfs::{entries, padded, KIND_DIR, KIND_FILE, KIND_SYMLINK, MAGIC, PREFIX_LEN};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither a regular file, a directory nor a symbolic link")]
    Special(PathBuf),
    #[error("guest path {0:?} must be absolute, without `.` or `..`")]
    GuestPath(String),
    #[error("{0} is a directory; use --dir")]
    IsDir(PathBuf),
    #[error("{0} is not a directory; use --file")]
    NotDir(PathBuf),
    #[error("the root filesystem image is malformed")]
    BadImage,
    #[error("cannot prepare {path} for the guest")]
    Filter {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Changes a host file's bytes on their way in: `kiln run` rewrites the shared objects that a dynamic program's
/// `--dir` and `--file` bring (Python's extension modules).
pub type HostFileFilter = Box<dyn FnMut(&Path, Vec<u8>) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>>;

#[derive(Default)]
pub struct RootfsBuilder {
    index: Vec<u8>,
    /// Where each entry's data offset lies in `index`: it is relative to `data` until [`RootfsBuilder::finish`].
    offsets: Vec<usize>,
    data: Vec<u8>,
    /// Host permission bits become 0755 or 0644 (by whether any execute bit is set), so that an image does not
    /// depend on the umask of whoever checked the files out.
    normalise_modes: bool,
    filter: Option<HostFileFilter>,
}

fn check_guest_path(path: &str) -> Result<(), RootfsError> {
    let ok = path.starts_with('/') && path.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..");
    if ok && path.len() < 4096 {
        Ok(())
    } else {
        Err(RootfsError::GuestPath(path.to_string()))
    }
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| match source.kind() {
        std::io::ErrorKind::NotFound => RootfsError::Missing(path.to_path_buf()),
        _ => RootfsError::Read { path: path.to_path_buf(), source },
    }
}

impl RootfsBuilder {
    /// A builder whose output depends only on the host files' contents, names and execute bits (`kiln build`).
    pub fn reproducible() -> Self {
        Self { normalise_modes: true, ..Self::default() }
    }

    fn host_mode(&self, meta: &std::fs::Metadata) -> u32 {
        let mode = meta.permissions().mode() & 0o7777;
        match self.normalise_modes {
            false => mode,
            true if meta.is_dir() || mode & 0o111 != 0 => 0o755,
            true => 0o644,
        }
    }

    fn entry(&mut self, kind: u32, path: &str, perm: u32, data: &[u8]) {
        self.index.extend(kind.to_le_bytes());
        self.index.extend(perm.to_le_bytes());
        self.index.extend((path.len() as u32).to_le_bytes());
        self.index.extend(0u32.to_le_bytes());
        self.offsets.push(self.index.len());
        self.index.extend((self.data.len() as u64).to_le_bytes());
        self.index.extend((data.len() as u64).to_le_bytes());
        self.index.extend(path.as_bytes());
        self.index.resize(padded(self.index.len()), 0);
        self.data.extend(data);
        self.data.resize(padded(self.data.len()), 0);
    }

    pub fn add_file(&mut self, guest: &str, perm: u32, data: &[u8]) -> Result<(), RootfsError> {
        check_guest_path(guest)?;
        self.entry(KIND_FILE, guest, perm, data);
        Ok(())
    }

    pub fn add_dir(&mut self, guest: &str, perm: u32) -> Result<(), RootfsError> {
        check_guest_path(guest)?;
        self.entry(KIND_DIR, guest, perm, &[]);
        Ok(())
    }

    /// Makes room for `data` bytes of contents to come, so that a large tree (a container image's) is not copied
    /// again each time the buffer grows.
    pub fn reserve(&mut self, data: usize) {
        self.data.reserve(data);
    }

    /// Passes every host file added from now on through `filter`.
    pub fn set_host_file_filter(&mut self, filter: HostFileFilter) {
        self.filter = Some(filter);
    }

    /// A symbolic link at `guest` whose target is `target`, kept as given.
    pub fn add_symlink(&mut self, guest: &str, target: &[u8]) -> Result<(), RootfsError> {
        check_guest_path(guest)?;
        if target.is_empty() || target.len() >= 4096 || target.contains(&0) {
            return Err(RootfsError::GuestPath(String::from_utf8_lossy(target).into_owned()));
        }
        self.entry(KIND_SYMLINK, guest, 0o777, target);
        Ok(())
    }

    /// `kiln run --file HOST:GUEST`: one regular file.
    pub fn add_host_file(&mut self, host: &Path, guest: &str) -> Result<(), RootfsError> {
        let meta = std::fs::metadata(host).map_err(read_err(host))?;
        if meta.is_dir() {
            return Err(RootfsError::IsDir(host.to_path_buf()));
        }
        if !meta.is_file() {
            return Err(RootfsError::Special(host.to_path_buf()));
        }
        let mut data = std::fs::read(host).map_err(read_err(host))?;
        if let Some(filter) = &mut self.filter {
            data = filter(host, data).map_err(|source| RootfsError::Filter { path: host.to_path_buf(), source })?;
        }
        self.add_file(guest, self.host_mode(&meta), &data)
    }

    /// `kiln run --dir HOST:GUEST`, or a container's root filesystem at `/`: a directory and everything below it.
    /// Symbolic links below it stay links, their targets as the host has them (as `cp -a` and Docker's COPY keep
    /// them: shared libraries and packages are full of them, and a copy would double their size); `host` itself is
    /// followed.
    pub fn add_host_dir(&mut self, host: &Path, guest: &str) -> Result<(), RootfsError> {
        let meta = std::fs::metadata(host).map_err(read_err(host))?;
        if !meta.is_dir() {
            return Err(RootfsError::NotDir(host.to_path_buf()));
        }
        // The root itself (a container's root filesystem) is always there.
        if guest != "/" {
            self.add_dir(guest, self.host_mode(&meta))?;
        }
        let mut children: Vec<_> = std::fs::read_dir(host)
            .map_err(read_err(host))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err(host))?;
        children.sort();
        for name in children {
            let child = host.join(&name);
            let guest_child = format!("{}/{}", guest.trim_end_matches('/'), name.to_string_lossy());
            let meta = std::fs::symlink_metadata(&child).map_err(read_err(&child))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&child).map_err(read_err(&child))?;
                self.add_symlink(&guest_child, target.as_os_str().as_bytes())?;
            } else if meta.is_dir() {
                self.add_host_dir(&child, &guest_child)?;
            } else {
                self.add_host_file(&child, &guest_child)?;
            }
        }
        Ok(())
    }

    /// Every entry of a built image (an image's root filesystem, of either version), after those already added.
    pub fn add_image(&mut self, image: &[u8]) -> Result<(), RootfsError> {
        let all: Vec<_> = entries(image)
            .map_err(|_| RootfsError::BadImage)?
            .collect::<Result<_, _>>()
            .map_err(|_| RootfsError::BadImage)?;
        for e in all {
            self.entry(e.kind, e.path, e.perm, &image[e.data_offset..e.data_offset + e.data_len]);
        }
        Ok(())
    }

    /// The image: the index, then the data from the next page boundary, so that the index's pages hold no data.
    pub fn finish(mut self) -> Vec<u8> {
        let index_end = PREFIX_LEN + self.index.len();
        let data_start = match self.data.is_empty() {
            true => index_end,
            false => page_align_up(index_end as u64) as usize,
        };
        for &at in &self.offsets {
            let relative = u64::from_le_bytes(self.index[at..at + 8].try_into().unwrap_or_default());
            self.index[at..at + 8].copy_from_slice(&(relative + data_start as u64).to_le_bytes());
        }
        let mut image = Vec::with_capacity(data_start + self.data.len());
        image.extend(MAGIC);
        image.extend((index_end as u64).to_le_bytes());
        image.extend(&self.index);
        image.resize(data_start, 0);
        image.extend(&self.data);
        image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_the_library_os_parses() {
        let mut b = RootfsBuilder::default();
        b.add_dir("/etc", 0o755).unwrap();
        b.add_file("/etc/app.toml", 0o644, b"port = 80\n").unwrap();
        let image = b.finish();
        let all: Vec<_> = entries(&image).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 2);
        let f = all[1];
        assert_eq!((f.path, f.perm), ("/etc/app.toml", 0o644));
        assert_eq!(&image[f.data_offset..f.data_offset + f.data_len], b"port = 80\n");
    }

    #[test]
    fn host_trees_are_added_in_name_order() {
        let dir = std::env::temp_dir().join(format!("kiln-rootfs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.txt"), "b").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("sub/c.txt"), "c").unwrap();
        std::os::unix::fs::symlink("sub/c.txt", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.join("sub/dangling")).unwrap();
        let mut b = RootfsBuilder::default();
        b.add_host_dir(&dir, "/data").unwrap();
        let image = b.finish();
        let all: Vec<_> = entries(&image).unwrap().map(|e| e.unwrap()).collect();
        let paths: Vec<_> = all.iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            ["/data", "/data/a.txt", "/data/b.txt", "/data/link", "/data/sub", "/data/sub/c.txt", "/data/sub/dangling"]
        );
        // Links stay links, targets as the host has them.
        let target = |e: &kiln_abi::rootfs::Entry| (e.kind, image[e.data_offset..e.data_offset + e.data_len].to_vec());
        assert_eq!(target(&all[3]), (KIND_SYMLINK, b"sub/c.txt".to_vec()));
        assert_eq!(target(&all[6]), (KIND_SYMLINK, b"/nowhere".to_vec()));
        assert!(matches!(b_err(&dir, "relative"), RootfsError::GuestPath(_)));
        assert!(matches!(RootfsBuilder::default().add_host_file(&dir, "/x").unwrap_err(), RootfsError::IsDir(_)));
        assert!(matches!(
            RootfsBuilder::default().add_host_file(&dir.join("missing"), "/x").unwrap_err(),
            RootfsError::Missing(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reproducible_builders_normalise_modes() {
        let dir = std::env::temp_dir().join(format!("kiln-rootfs-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.sh"), "x").unwrap();
        std::fs::write(dir.join("data"), "y").unwrap();
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut b = RootfsBuilder::reproducible();
        b.add_host_dir(&dir, "/app").unwrap();
        let image = b.finish();
        let modes: Vec<_> = entries(&image).unwrap().map(|e| e.unwrap().perm).collect();
        assert_eq!(modes, [0o755, 0o644, 0o755]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn images_append_whole() {
        let mut base = RootfsBuilder::default();
        base.add_file("/a", 0o644, b"a").unwrap();
        let base = base.finish();
        let mut b = RootfsBuilder::default();
        b.add_file("/etc/resolv.conf", 0o644, b"x").unwrap();
        b.add_image(&base).unwrap();
        b.add_file("/b", 0o644, b"b").unwrap();
        let image = b.finish();
        let paths: Vec<_> = entries(&image).unwrap().map(|e| e.unwrap().path.to_string()).collect();
        assert_eq!(paths, ["/etc/resolv.conf", "/a", "/b"]);
        assert!(matches!(RootfsBuilder::default().add_image(b"junk"), Err(RootfsError::BadImage)));
        assert!(matches!(RootfsBuilder::default().add_image(&base[..base.len() - 8]), Err(RootfsError::BadImage)));
        let index = kiln_abi::rootfs::index_end(&image);
        assert_eq!(entries(&image).unwrap().next().unwrap().unwrap().data_offset, 4096, "data from the page after it");
        assert!(index > 16 && index < 4096);
    }

    fn b_err(dir: &Path, guest: &str) -> RootfsError {
        RootfsBuilder::default().add_host_dir(dir, guest).unwrap_err()
    }
}
