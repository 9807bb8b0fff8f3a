//! A container bundle's root filesystem (an unpacked directory, as containerd hands a shim one) as the source of a
//! launch: its program is found in it as the container's own `execve` would find it (through `PATH` for a bare
//! name, symbolic links followed inside the root, never out of it), and the whole tree becomes the guest's root
//! filesystem (`guest_fs.rs`), so a dynamic program's loader and libraries are the container's own.

use crate::error::BundleError;
use std::path::{Path, PathBuf};

/// `PATH` when the container's environment has none (runc's and Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Symbolic links followed to find one file (Linux's limit).
const MAX_LINKS_FOLLOWED: usize = 40;
/// Path components looked at for one file, links' targets included: bounds a walk through a hostile tree.
const MAX_COMPONENTS: usize = 4096;

/// The guest path of the program `argv0` names in the root filesystem `rootfs`: as given when it has a `/` (made
/// absolute from `workdir`), else the first match of `PATH` (from `env`) that is a regular file.
pub fn find_program(rootfs: &Path, argv0: &str, env: &[String], workdir: &str) -> Result<String, BundleError> {
    if argv0.is_empty() {
        return Err(BundleError::NoArgs);
    }
    if argv0.contains('/') {
        let path = match argv0.starts_with('/') {
            true => argv0.to_string(),
            false => format!("{}/{}", workdir.trim_end_matches('/'), argv0.trim_start_matches("./")),
        };
        return match host_path(rootfs, &path) {
            Some(host) if host.is_file() => Ok(path),
            _ => Err(BundleError::NoProgram(argv0.to_string())),
        };
    }
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    path_var
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        .find(|path| host_path(rootfs, path).is_some_and(|host| host.is_file()))
        .ok_or_else(|| BundleError::NotInPath(argv0.to_string(), path_var.to_string()))
}

/// Where the guest path `path` of the root filesystem `rootfs` is on the host, its symbolic links followed as the
/// guest would follow them: an absolute target starts again at `rootfs`, and `..` stops at it. None for a loop.
pub fn host_path(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = components(path);
    let mut at: Vec<String> = Vec::new();
    let (mut followed, mut looked) = (0, 0);
    while let Some(name) = pending.pop() {
        looked += 1;
        if looked > MAX_COMPONENTS {
            return None;
        }
        match name.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => at.push(name),
        }
        let host = at.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c));
        let Ok(target) = std::fs::read_link(&host) else { continue };
        followed += 1;
        if followed > MAX_LINKS_FOLLOWED {
            return None;
        }
        at.pop();
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            at.clear();
        }
        pending.extend(components(&target));
    }
    Some(at.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)))
}

/// `path`'s names, last first (a stack).
fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!("kiln-bundle-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("usr/bin/hello"), b"\x7fELF").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/usr/bin/hello", root.join("app/run")).unwrap();
        symlink("../../../../../../etc/passwd", root.join("app/escape")).unwrap();
        symlink("loop", root.join("app/loop")).unwrap();
        root
    }

    #[test]
    fn programs_are_found_inside_the_root_only() {
        let root = tree();
        let none: &[String] = &[];
        assert_eq!(find_program(&root, "hello", none, "").unwrap(), "/usr/bin/hello");
        assert_eq!(find_program(&root, "hello", &["PATH=/bin".into()], "").unwrap(), "/bin/hello");
        assert_eq!(find_program(&root, "/app/run", none, "").unwrap(), "/app/run");
        assert_eq!(find_program(&root, "./run", none, "/app").unwrap(), "/app/run");
        assert_eq!(host_path(&root, "/app/run").unwrap(), root.join("usr/bin/hello"));
        assert_eq!(host_path(&root, "/app/escape").unwrap(), root.join("etc/passwd"), "`..` stops at the root");
        assert_eq!(host_path(&root, "/app/loop"), None);
        assert!(matches!(find_program(&root, "nothing", none, ""), Err(BundleError::NotInPath(..))));
        assert!(matches!(find_program(&root, "/app/escape", none, ""), Err(BundleError::NoProgram(_))));
        assert!(matches!(find_program(&root, "", none, ""), Err(BundleError::NoArgs)));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
