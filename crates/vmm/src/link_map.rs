//! The shared objects a dynamically linked program's loader mapped, found as debuggers find them: the loader fills
//! the `DT_DEBUG` entry of the program's dynamic section with the address of its `r_debug`, whose `r_map` starts the
//! list of `link_map`s (load bias, path, next). Read from guest memory when a crash report or core file needs them,
//! with each object's file from the guest's root filesystem, where the loader opened it (the rewritten copy: the
//! original's symbols, DWARF and unwinding tables, plus a stub segment). The guest is hostile: the walk is bounded
//! and every read checked; a broken list ends it early.

use crate::memory::GuestRam;
use crate::user_memory;
use kiln_abi::rootfs::{self, KIND_FILE, KIND_SYMLINK};
use std::sync::Arc;

const DT_NULL: u64 = 0;
const DT_DEBUG: u64 = 21;
/// Entries of a dynamic section looked at, objects listed, bytes of a path: far beyond real programs.
const MAX_DYNAMIC_ENTRIES: u64 = 1024;
const MAX_OBJECTS: usize = 512;
const MAX_PATH: usize = 4096;
/// The most bytes of objects' files a crash copies out of the root filesystem, and of one file.
const MAX_FILES_BYTES: usize = 512 << 20;
const MAX_FILE_BYTES: usize = 256 << 20;
/// Symbolic links followed to find a file.
const MAX_LINKS: usize = 8;

/// One object in the loader's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedObject {
    /// As the loader opened it (`/lib/x86_64-linux-gnu/libc.so.6`); empty for the program itself.
    pub path: String,
    /// Added to the object's link-time addresses (`l_addr`).
    pub bias: u64,
    /// Its file in the guest's root filesystem, if it was found there (see [`RootfsInRam::files`]).
    pub file: Option<Arc<[u8]>>,
}

/// The loader's list of objects, from the program's dynamic section at `dynamic`: empty for a static program, or
/// before the loader has filled `DT_DEBUG`.
pub fn read(ram: &GuestRam, pml4: u64, dynamic: u64) -> Vec<LoadedObject> {
    let word = |at: u64| user_memory::word(ram, pml4, at);
    let mut r_debug = None;
    for i in 0..MAX_DYNAMIC_ENTRIES {
        let Some(entry) = dynamic.checked_add(i * 16) else { break };
        match (word(entry), word(entry + 8)) {
            (Some(DT_DEBUG), Some(value)) => r_debug = Some(value),
            (Some(DT_NULL), _) | (None, _) | (_, None) => break,
            _ => {}
        }
    }
    let Some(mut map) = r_debug.filter(|&r| r != 0).and_then(|r| word(r.checked_add(8)?)) else { return Vec::new() };
    let mut objects = Vec::new();
    while map != 0 && objects.len() < MAX_OBJECTS {
        let (Some(bias), Some(name), Some(next)) = (word(map), word(map + 8), word(map + 24)) else { break };
        let bytes = if name == 0 { Vec::new() } else { user_memory::read(ram, pml4, name, MAX_PATH) };
        let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
        objects.push(LoadedObject { path: String::from_utf8_lossy(path).into_owned(), bias, file: None });
        map = next;
    }
    objects
}

/// The root filesystem image in guest RAM: `len` bytes at guest-physical `phys`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RootfsInRam {
    pub phys: u64,
    pub len: u64,
}

impl RootfsInRam {
    /// The files of the guest's root filesystem at `paths` (None for one that is not there or too big), at most
    /// [`MAX_FILES_BYTES`] in all; the image's index is read once, the files' bytes only for these.
    pub fn files(&self, ram: &GuestRam, paths: &[&str]) -> Vec<Option<Arc<[u8]>>> {
        let mut budget = MAX_FILES_BYTES;
        let head = ram.read_vec(self.phys, rootfs::PREFIX_LEN as u64).unwrap_or_default();
        let index_end = rootfs::index_end(&head) as u64;
        let index = match index_end <= self.len && index_end <= MAX_FILES_BYTES as u64 {
            true => ram.read_vec(self.phys, index_end).unwrap_or_default(),
            false => Vec::new(),
        };
        let Ok(entries) = rootfs::entries_of_index(&index, self.len as usize) else { return vec![None; paths.len()] };
        let entries: Vec<_> = entries.map_while(Result::ok).collect();
        let find = |path: &str| entries.iter().find(|e| e.path == path);
        paths
            .iter()
            .map(|&path| {
                let mut path = path.to_string();
                for _ in 0..MAX_LINKS {
                    let entry = find(&path)?;
                    let data = || ram.read_vec(self.phys + entry.data_offset as u64, entry.data_len as u64).ok();
                    match entry.kind {
                        KIND_FILE if entry.data_len <= MAX_FILE_BYTES.min(budget) => {
                            budget -= entry.data_len;
                            return data().map(Arc::from);
                        }
                        KIND_SYMLINK => path = resolve(&path, &String::from_utf8_lossy(&data()?)),
                        _ => return None,
                    }
                }
                None
            })
            .collect()
    }
}

/// The path a symbolic link at `link` to `target` names.
fn resolve(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return target.to_string();
    }
    let dir = link.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{dir}/{target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_against_their_directory() {
        assert_eq!(
            resolve("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld.so"),
            "/lib/x86_64-linux-gnu/ld.so"
        );
        assert_eq!(resolve("/lib/libc.so", "libc.so.6"), "/lib/libc.so.6");
    }
}
