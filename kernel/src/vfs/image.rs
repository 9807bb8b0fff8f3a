//! Fills the tree from the root filesystem image the VMM placed in guest memory (format: `kiln_abi::rootfs`).

use super::{mkdir, parent, symlink, Data, Inode, Kind};
use kiln_abi::rootfs::{self, KIND_DIR, KIND_FILE, KIND_SYMLINK};

/// Adds every entry of `image` (which lives at its own address for good). A malformed image stops the load with a
/// library OS panic: the VMM built it, so it is a bug, not input.
pub fn load(image: &'static [u8]) {
    let entries = match rootfs::entries(image) {
        Ok(entries) => entries,
        Err(e) => crate::hypercall::panic_message(if e == rootfs::RootfsError::BadMagic {
            "the root filesystem image has no magic"
        } else {
            "the root filesystem image is damaged"
        }),
    };
    let base = image.as_ptr() as u64;
    for entry in entries {
        let Ok(entry) = entry else { crate::hypercall::panic_message("the root filesystem image is damaged") };
        mkdir_all(parent_path(entry.path));
        match entry.kind {
            KIND_DIR => {
                let _ = mkdir(entry.path, entry.perm);
            }
            KIND_FILE => {
                let data = Data::Image { addr: base + entry.data_offset as u64, len: entry.data_len as u64 };
                if let Ok((dir, name)) = parent(entry.path) {
                    if let Some(state) = dir.memory() {
                        if let Kind::Dir(children) = &mut state.lock().kind {
                            children.insert(name, Inode::new(Kind::File(data), entry.perm & 0o7777));
                        }
                    }
                }
            }
            KIND_SYMLINK => {
                let target = &image[entry.data_offset..entry.data_offset + entry.data_len];
                if let Ok(target) = core::str::from_utf8(target) {
                    let _ = symlink(target, entry.path);
                }
            }
            _ => {}
        }
    }
}

fn parent_path(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((dir, _)) => dir,
    }
}

fn mkdir_all(path: &str) {
    let mut at = alloc::string::String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        let _ = mkdir(&at, 0o755);
    }
}
