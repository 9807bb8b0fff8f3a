//! What a dynamically linked host program needs in the guest: its loader (`PT_INTERP`) and the closure of its
//! `DT_NEEDED` libraries, found as glibc's loader finds them on the host (the object's `DT_RPATH` when it has no
//! `DT_RUNPATH`, then its `DT_RUNPATH`, then the system directories; `$ORIGIN` expanded; no `LD_LIBRARY_PATH` and no
//! `ld.so.cache`), each rewritten (`shared_object`). In the guest a library lives at
//! [`GUEST_LIBRARY_DIR`]`/NAME` whatever host directory it came from, so that the loader's own search of its system
//! directories finds it there without a cache; one named by a path (`DT_NEEDED` with a `/`) stays at that path.

use crate::elf::{ElfError, ElfImage};
use crate::rewrite::SiteCounts;
use crate::rewrite_cache::RewriteCache;
use crate::shared_object::{self, RewrittenObject, SharedObjectError};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// Where the guest's loader looks first when it has no cache.
pub const GUEST_LIBRARY_DIR: &str = "/lib/x86_64-linux-gnu";
/// The system directories of Debian's x86-64 glibc, in its order, plus the other usual ones.
const SYSTEM_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib", "/lib64", "/usr/lib64"];
/// Where musl's loader looks (`/etc/ld-musl-x86_64.path` on Debian, then its defaults), and where a musl program's
/// libraries go in the guest: the first of its defaults, since the guest has no path file.
const MUSL_DIRS: [&str; 5] =
    ["/lib/x86_64-linux-musl", "/usr/lib/x86_64-linux-musl", "/lib", "/usr/local/lib", "/usr/lib"];
const MUSL_GUEST_LIBRARY_DIR: &str = "/lib";
/// Libraries musl's loader is itself (its `libc.so` holds them all), which it never opens.
const MUSL_BUILT_IN: [&str; 9] = ["c", "dl", "m", "pthread", "rt", "crypt", "util", "xnet", "resolv"];

/// Libraries that a library opens by itself with `dlopen`, which no `DT_NEEDED` names: glibc's `libc.so.6` opens
/// `libgcc_s.so.1` to unwind a thread that `pthread_cancel` or `pthread_exit` ends (and aborts without it). Each comes
/// along when the host has it, as the loader would find it; a host without it fails the same way natively.
const OPENED_BY: [(&str, &str); 1] = [("libc.so.6", "libgcc_s.so.1")];

/// Whose loader a program names: the two search their directories differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loader {
    Glibc,
    Musl,
}

impl Loader {
    fn of(interpreter: &str) -> Loader {
        let name = interpreter.rsplit('/').next().unwrap_or(interpreter);
        if name.starts_with("ld-musl-") {
            Loader::Musl
        } else {
            Loader::Glibc
        }
    }

    fn system_dirs(self) -> &'static [&'static str] {
        match self {
            Loader::Glibc => &SYSTEM_DIRS,
            Loader::Musl => &MUSL_DIRS,
        }
    }

    fn guest_dir(self) -> &'static str {
        match self {
            Loader::Glibc => GUEST_LIBRARY_DIR,
            Loader::Musl => MUSL_GUEST_LIBRARY_DIR,
        }
    }

    /// Whether the loader provides `name` itself (musl's `libc.so`, `libpthread.so.0`, ...).
    fn provides(self, name: &str) -> bool {
        let stem = name.strip_prefix("lib").and_then(|n| n.split(".so").next());
        self == Loader::Musl && (name.starts_with("ld-musl-") || stem.is_some_and(|s| MUSL_BUILT_IN.contains(&s)))
    }
}

/// More shared objects than any real program needs (python3 with every extension module is about 60); the bound
/// keeps a hostile chain of libraries from running on.
const MAX_OBJECTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    #[error("its dynamic loader {0} is not on this host")]
    NoInterpreter(String),
    #[error("it needs {name} (for {by}), which is in none of {searched}")]
    NotFound { name: String, by: String, searched: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable shared object")]
    Object {
        path: PathBuf,
        #[source]
        source: SharedObjectError,
    },
    #[error("{path} is not a usable shared object")]
    Elf {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("it needs more than {MAX_OBJECTS} shared objects")]
    TooMany,
}

/// One shared object for the guest.
#[derive(Debug)]
pub struct GuestObject {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub object: RewrittenObject,
}

/// A dynamic program's loader and libraries, ready for the guest.
#[derive(Debug)]
pub struct Dependencies {
    pub interpreter: GuestObject,
    pub libraries: Vec<GuestObject>,
    /// Every host path whose presence or contents decided what was collected: the objects read, and each place the
    /// search for a library looked, found or not (what a cache of the result must check again).
    pub consulted: Vec<PathBuf>,
    /// The names already collected (or being collected): each comes once, as the loader loads a soname once.
    seen: HashSet<String>,
    loader: Loader,
}

impl Dependencies {
    /// The syscall sites of the loader and the libraries together.
    pub fn site_counts(&self) -> SiteCounts {
        std::iter::once(&self.interpreter)
            .chain(&self.libraries)
            .map(|o| o.object.report.counts())
            .fold(SiteCounts::default(), |a, b| a + b)
    }

    /// Adds the libraries `elf` (read from `path` on the host) needs, and theirs, that are not there yet: for the
    /// program, and for shared objects the program will `dlopen` (Python's extension modules).
    pub fn add_needed_by(
        &mut self,
        elf: &ElfImage,
        path: &Path,
        cache: Option<&RewriteCache>,
    ) -> Result<(), DynamicError> {
        // (name, the needing object's host path, its search path, whether it is needed or only opened if there)
        let mut queue: VecDeque<(String, PathBuf, Vec<String>, bool)> = VecDeque::new();
        let mut enqueue = |queue: &mut VecDeque<_>, elf: &ElfImage, by: &Path| {
            let opened = elf.needed.iter().flat_map(|needed| {
                OPENED_BY
                    .iter()
                    .filter(move |(opener, _)| opener == needed)
                    .map(|(_, opened)| (opened.to_string(), false))
            });
            for (name, needed) in elf.needed.iter().map(|n| (n.clone(), true)).chain(opened.collect::<Vec<_>>()) {
                if !self.loader.provides(&name) && self.seen.insert(name.clone()) {
                    queue.push_back((name, by.to_path_buf(), elf.runpath.clone(), needed));
                }
            }
        };
        enqueue(&mut queue, elf, path);
        while let Some((name, by, runpath, needed)) = queue.pop_front() {
            if self.libraries.len() >= MAX_OBJECTS {
                return Err(DynamicError::TooMany);
            }
            let (host_path, guest_path) = if name.contains('/') {
                self.consulted.push(PathBuf::from(&name));
                (PathBuf::from(&name), name.clone())
            } else {
                match find(&name, &by, &runpath, self.loader, &mut self.consulted) {
                    Ok(found) => (found, format!("{}/{name}", self.loader.guest_dir())),
                    Err(_) if !needed => continue,
                    Err(e) => return Err(e),
                }
            };
            let bytes =
                std::fs::read(&host_path).map_err(|source| DynamicError::Read { path: host_path.clone(), source })?;
            let elf =
                ElfImage::parse_any(&bytes).map_err(|source| DynamicError::Elf { path: host_path.clone(), source })?;
            enqueue(&mut queue, &elf, &host_path);
            let object = rewrite(&host_path, &bytes, cache)?;
            self.libraries.push(GuestObject { host_path, guest_path, object });
        }
        Ok(())
    }
}

/// Where the loader would find library `name` needed by the object at `by` with search path `runpath`; adds every
/// path it looked at to `looked`.
fn find(
    name: &str,
    by: &Path,
    runpath: &[String],
    loader: Loader,
    looked: &mut Vec<PathBuf>,
) -> Result<PathBuf, DynamicError> {
    let origin = by.parent().unwrap_or(Path::new("/"));
    let dirs: Vec<PathBuf> = runpath
        .iter()
        .map(|d| PathBuf::from(d.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", &origin.to_string_lossy())))
        .chain(loader.system_dirs().iter().map(PathBuf::from))
        .collect();
    let found = dirs.iter().map(|d| d.join(name)).find(|p| {
        looked.push(p.clone());
        p.is_file()
    });
    found.ok_or_else(|| {
        let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        DynamicError::NotFound { name: name.to_string(), by: by.display().to_string(), searched }
    })
}

/// The shared object `bytes` (from `path`) rewritten, through the cache if there is one.
pub fn rewrite(path: &Path, bytes: &[u8], cache: Option<&RewriteCache>) -> Result<RewrittenObject, DynamicError> {
    let object = match cache {
        Some(cache) => cache.rewrite_object(bytes).map(|(object, _)| object),
        None => shared_object::rewrite_object(bytes),
    };
    object.map_err(|source| DynamicError::Object { path: path.to_path_buf(), source })
}

/// Collects and rewrites what `program` (read from `program_path` on the host) needs; `None` for a static program.
pub fn collect(
    program: &ElfImage,
    program_path: &Path,
    cache: Option<&RewriteCache>,
) -> Result<Option<Dependencies>, DynamicError> {
    let Some(interp) = &program.interpreter else { return Ok(None) };
    let interp_bytes = std::fs::read(interp).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DynamicError::NoInterpreter(interp.clone()),
        _ => DynamicError::Read { path: interp.into(), source },
    })?;
    let interpreter = GuestObject {
        host_path: interp.into(),
        guest_path: interp.clone(),
        object: rewrite(Path::new(interp), &interp_bytes, cache)?,
    };
    let loader = Loader::of(interp);
    let consulted = vec![PathBuf::from(interp)];
    let mut deps = Dependencies { interpreter, libraries: Vec::new(), consulted, seen: HashSet::new(), loader };
    deps.add_needed_by(program, program_path, cache)?;
    Ok(Some(deps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musls_loader_is_its_own_libc() {
        let musl = Loader::of("/lib/ld-musl-x86_64.so.1");
        assert_eq!(musl, Loader::Musl);
        assert!(musl.provides("libc.so") && musl.provides("libpthread.so.0") && musl.provides("libm.so"));
        assert!(!musl.provides("libz.so.1") && !musl.provides("libcrypto.so.3"));
        let glibc = Loader::of("/lib64/ld-linux-x86-64.so.2");
        assert!(!glibc.provides("libc.so.6"));
        assert_eq!(glibc.guest_dir(), GUEST_LIBRARY_DIR);
    }
}
