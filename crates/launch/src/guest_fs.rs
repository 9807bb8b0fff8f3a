//! The guest's root filesystem for a launch: the resolver configuration the network needs, a dynamic program's
//! loader and libraries, the image's files, then `--dir` and `--file` (a later entry replaces an earlier one at the
//! same path). Built images are kept in the root filesystem cache (`kiln_vmm::rootfs_cache`), keyed by what they
//! were built from, so that a repeat run only `stat`s its files, and the guest maps the cached file rather than a
//! copy of it.

use crate::dynamic;
use crate::error::LaunchError;
use crate::{LaunchSpec, Loaded, Source};
use kiln_abi::rootfs::{entries, Entry, KIND_FILE, KIND_SYMLINK};
use kiln_vmm::dynamic::Dependencies;
use kiln_vmm::elf::ElfImage;
use kiln_vmm::rewrite::SiteCounts;
use kiln_vmm::rootfs::RootfsBuilder;
use kiln_vmm::rootfs_cache::{Hit, Recipe, RootfsCache};
use kiln_vmm::rootfs_image::Rootfs;
use std::collections::HashMap;
use std::sync::Arc;

/// The library OS's own /etc/resolv.conf names this server.
const BUILT_IN_RESOLV_CONF: &str = "nameserver 10.0.2.3\n";
/// Symbolic links followed to find one file in an image (Linux's limit).
const MAX_LINKS_FOLLOWED: usize = 40;
/// The layout of what an entry of the cache keeps besides the image (see [`Extra`]).
const EXTRA_VERSION: u8 = 3;

#[derive(Default)]
pub struct GuestFs {
    pub rootfs: Rootfs,
    /// The syscall sites of a dynamic program's shared objects (its libraries and those its files bring).
    pub object_sites: Option<SiteCounts>,
    /// A dynamic program's loader, rewritten; empty for a static program.
    pub interpreter: Vec<u8>,
}

/// What a cache entry keeps besides the image: the sites of its shared objects and where its loader lies in it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extra {
    object_sites: Option<SiteCounts>,
    /// Offset and length of the loader's contents in the image; (0, 0) for none.
    interpreter: (u64, u64),
}

impl Extra {
    fn encode(&self) -> Vec<u8> {
        let sites = self.object_sites.unwrap_or_default();
        let mut out = vec![EXTRA_VERSION, u8::from(self.object_sites.is_some())];
        for v in [sites.relocated, sites.red_zone, sites.in_place, sites.unsafe_sites] {
            out.extend((v as u64).to_le_bytes());
        }
        out.extend(self.interpreter.0.to_le_bytes());
        out.extend(self.interpreter.1.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Extra> {
        let [EXTRA_VERSION, has_sites, rest @ ..] = bytes else { return None };
        let words: Vec<u64> =
            rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        let &[relocated, red_zone, in_place, unsafe_sites, offset, len] = words.as_slice() else {
            return None;
        };
        if rest.len() != words.len() * 8 {
            return None;
        }
        let n = |v: u64| usize::try_from(v).ok();
        let sites = SiteCounts {
            relocated: n(relocated)?,
            red_zone: n(red_zone)?,
            in_place: n(in_place)?,
            unsafe_sites: n(unsafe_sites)?,
        };
        Some(Extra { object_sites: (*has_sites == 1).then_some(sites), interpreter: (offset, len) })
    }
}

/// The root filesystem for `spec`, whose program and image are `loaded`, from the cache when it has it.
pub fn prepare(spec: &LaunchSpec, loaded: &Loaded) -> Result<GuestFs, LaunchError> {
    let resolv_conf = spec.network.resolv_conf().filter(|r| r != BUILT_IN_RESOLV_CONF);
    let program = ElfImage::parse(&loaded.program).ok();
    let host_dynamic = spec.image_id().is_none() && program.as_ref().is_some_and(|p| p.interpreter.is_some());
    let none = spec.files.is_empty() && spec.dirs.is_empty() && resolv_conf.is_none();
    let bundle = matches!(spec.source, Source::Bundle { .. });
    if none && loaded.rootfs.is_none() && !host_dynamic && !bundle {
        return Ok(GuestFs::default());
    }
    let started = std::time::Instant::now();
    let cache = crate::home::cache_dir("rootfs").map(RootfsCache::new);
    // A file that cannot be described now will not be read either: the build says why, in the user's terms.
    let key = cache.as_ref().and_then(|_| recipe(spec, resolv_conf.as_deref()).ok()).map(Recipe::key);
    if let Some((cache, key)) = cache.as_ref().zip(key.as_ref()) {
        if let Some(fs) = cache.lookup(key).and_then(from_hit) {
            tracing::debug!(took = ?started.elapsed(), "root filesystem from the cache ({key}): {} bytes", fs.rootfs.len());
            return Ok(fs);
        }
    }

    let mut deps = dynamic::dependencies(spec, &loaded.program)?;
    let image_rootfs = match &loaded.rootfs {
        Some(blob) => crate::image_rootfs(&crate::home::store()?, blob)?,
        None => Vec::new(),
    };
    let (image, object_sites) = build(spec, &image_rootfs, deps.as_mut(), resolv_conf)?;
    drop(image_rootfs);
    let interpreter_path = program.as_ref().and_then(|p| p.interpreter.clone()).unwrap_or_default();
    // A host program's loader is the one added first; an image's, the one its files end with.
    let interpreter = match deps.is_some() {
        true => file_span(&image, &interpreter_path, true),
        false => ImageFiles::new(&image).span(&interpreter_path).unwrap_or_default(),
    };
    let extra = Extra { object_sites, interpreter };
    let consulted = deps.map(|d| d.consulted).unwrap_or_default();
    let stored = match cache.as_ref().zip(key.as_ref()) {
        Some((cache, key)) => cache
            .store(key, &image, &consulted, &extra.encode())
            .inspect_err(|e| tracing::debug!("cannot keep the root filesystem in the cache: {e}"))
            .ok(),
        None => None,
    };
    let rootfs = match stored {
        Some(mapped) => Rootfs::Mapped(Arc::new(mapped)),
        None => Rootfs::from(image),
    };
    tracing::debug!(took = ?started.elapsed(), "root filesystem built: {} bytes", rootfs.len());
    Ok(with_interpreter(rootfs, extra))
}

fn from_hit(hit: Hit) -> Option<GuestFs> {
    let extra = Extra::decode(&hit.extra)?;
    let (offset, len) = extra.interpreter;
    offset.checked_add(len).filter(|&end| end <= hit.image.bytes().len() as u64)?;
    Some(with_interpreter(Rootfs::Mapped(Arc::new(hit.image)), extra))
}

fn with_interpreter(rootfs: Rootfs, extra: Extra) -> GuestFs {
    let (offset, len) = (extra.interpreter.0 as usize, extra.interpreter.1 as usize);
    let interpreter = rootfs.bytes().get(offset..offset + len).map(<[u8]>::to_vec).unwrap_or_default();
    GuestFs { rootfs, object_sites: extra.object_sites, interpreter }
}

/// Offset and length of the contents of the first (or last) file at `path` in `image`; (0, 0) for none.
fn file_span(image: &[u8], path: &str, first: bool) -> (u64, u64) {
    let Ok(all) = entries(image) else { return (0, 0) };
    let mut files = all.flatten().filter(|e| e.kind == KIND_FILE && e.path == path);
    let found = if first { files.next() } else { files.last() };
    found.map_or((0, 0), |e| (e.data_offset as u64, e.data_len as u64))
}

/// An image's entries by path, the last at each path winning (as the library OS loads them), for finding files
/// as the guest finds them: symbolic links followed (a container image's loader path is often one, and its library
/// directory may be: `/lib` -> `usr/lib`).
struct ImageFiles<'a> {
    entries: HashMap<&'a str, Entry<'a>>,
    image: &'a [u8],
}

impl<'a> ImageFiles<'a> {
    fn new(image: &'a [u8]) -> Self {
        let entries = entries(image).map(|all| all.flatten().map(|e| (e.path, e)).collect()).unwrap_or_default();
        ImageFiles { entries, image }
    }

    /// Offset and length of the contents of the regular file `path` leads to.
    fn span(&self, path: &str) -> Option<(u64, u64)> {
        let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
        let mut at: Vec<String> = Vec::new();
        let mut followed = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                at.pop();
                continue;
            }
            if name == "." {
                continue;
            }
            at.push(name);
            let Some(entry) = self.entries.get(format!("/{}", at.join("/")).as_str()) else { continue };
            if entry.kind == KIND_SYMLINK {
                followed += 1;
                if followed > MAX_LINKS_FOLLOWED {
                    return None;
                }
                let target =
                    std::str::from_utf8(self.image.get(entry.data_offset..entry.data_offset + entry.data_len)?).ok()?;
                at.pop();
                if target.starts_with('/') {
                    at.clear();
                }
                pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
            }
        }
        let entry = self.entries.get(format!("/{}", at.join("/")).as_str())?;
        (entry.kind == KIND_FILE).then_some((entry.data_offset as u64, entry.data_len as u64))
    }
}

/// Everything [`build`] reads that decides the image's bytes, but what a dynamic program's search finds (the entry
/// lists that: `Dependencies::consulted`).
fn recipe(spec: &LaunchSpec, resolv_conf: Option<&str>) -> std::io::Result<Recipe> {
    let mut r = Recipe::new();
    match &spec.source {
        Source::Image { id } => r.add("image", id.to_string().as_bytes()),
        Source::Program { path } => {
            r.add("program", spec.shown.as_bytes());
            r.add_host_file(path)?;
        }
        Source::Bundle { rootfs } => {
            r.add("bundle", rootfs.as_os_str().as_encoded_bytes());
            r.add_host_tree(rootfs)?;
        }
    }
    r.add("resolv.conf", resolv_conf.unwrap_or_default().as_bytes());
    for (host, guest) in &spec.dirs {
        r.add("--dir", guest.as_bytes());
        r.add("host", host.as_os_str().as_encoded_bytes());
        r.add_host_tree(host)?;
    }
    for (host, guest) in &spec.files {
        r.add("--file", guest.as_bytes());
        r.add("host", host.as_os_str().as_encoded_bytes());
        r.add_host_file(host)?;
    }
    Ok(r)
}

/// Builds the image; also counts the syscall sites of a dynamic program's shared objects in it.
fn build(
    spec: &LaunchSpec,
    image_rootfs: &[u8],
    deps: Option<&mut Dependencies>,
    resolv_conf: Option<String>,
) -> Result<(Vec<u8>, Option<SiteCounts>), LaunchError> {
    let mut builder = RootfsBuilder::default();
    if let Some(resolv_conf) = resolv_conf {
        // First, so that the image's or the user's own replaces it.
        builder.add_file("/etc/resolv.conf", 0o644, resolv_conf.as_bytes())?;
    }
    // Then a dynamic program's loader and libraries, which --file and --dir may replace.
    for object in deps.iter().flat_map(|d| std::iter::once(&d.interpreter).chain(&d.libraries)) {
        builder.add_file(&object.guest_path, 0o755, &object.object.bytes)?;
    }
    let found = dynamic::FoundObjects::default();
    let bundle = match &spec.source {
        Source::Bundle { rootfs } => Some(rootfs),
        _ => None,
    };
    // A container's shared objects are rewritten on their way in, as a dynamic host program's are.
    if deps.is_some() || bundle.is_some() {
        builder.set_host_file_filter(dynamic::object_filter(found.clone()));
    }
    if !kiln_abi::rootfs::is_empty(image_rootfs) {
        builder.add_image(image_rootfs).map_err(LaunchError::ImageRootfs)?;
    }
    if let Some(rootfs) = bundle {
        builder.add_host_dir(rootfs, "/").map_err(|e| LaunchError::BundleRootfs(rootfs.clone(), e))?;
    }
    for (host, guest) in &spec.dirs {
        builder.add_host_dir(host, guest).map_err(|e| LaunchError::copy("--dir", host, guest, e))?;
    }
    for (host, guest) in &spec.files {
        builder.add_host_file(host, guest).map_err(|e| LaunchError::copy("--file", host, guest, e))?;
    }
    let mut sites = None;
    if let Some(deps) = deps {
        dynamic::add_libraries_they_need(deps, &found, &mut builder)?;
        sites = Some(found.borrow().iter().fold(deps.site_counts(), |total, &(_, counts)| total + counts));
    } else if bundle.is_some() && !found.borrow().is_empty() {
        sites = Some(found.borrow().iter().fold(SiteCounts::default(), |total, &(_, counts)| total + counts));
    }
    Ok((builder.finish(), sites))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_round_trips_and_refuses_junk() {
        let sites = SiteCounts { relocated: 618, red_zone: 15, in_place: 1, unsafe_sites: 2 };
        for extra in [Extra { object_sites: Some(sites), interpreter: (4096, 230_000) }, Extra::default()] {
            assert_eq!(Extra::decode(&extra.encode()), Some(extra));
        }
        let good = Extra::default().encode();
        assert_eq!(Extra::decode(&good[..good.len() - 1]), None);
        assert_eq!(Extra::decode(&[[9].as_slice(), &good[1..]].concat()), None);
    }

    #[test]
    fn the_loader_is_found_first_or_last() {
        let mut b = RootfsBuilder::default();
        b.add_file("/lib/ld.so", 0o755, b"host").unwrap();
        b.add_file("/lib/ld.so", 0o755, b"image").unwrap();
        let image = b.finish();
        let text = |(o, l): (u64, u64)| image[o as usize..(o + l) as usize].to_vec();
        assert_eq!(text(file_span(&image, "/lib/ld.so", true)), b"host");
        assert_eq!(text(file_span(&image, "/lib/ld.so", false)), b"image");
        assert_eq!(file_span(&image, "/nowhere", true), (0, 0));
    }

    #[test]
    fn an_images_files_are_found_through_its_links() {
        let mut b = RootfsBuilder::default();
        b.add_symlink("/lib", b"usr/lib").unwrap();
        b.add_file("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", 0o755, b"loader").unwrap();
        b.add_symlink("/lib64/ld-linux-x86-64.so.2", b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unwrap();
        b.add_symlink("/loop", b"loop").unwrap();
        let image = b.finish();
        let files = ImageFiles::new(&image);
        let text = |(o, l): (u64, u64)| image[o as usize..(o + l) as usize].to_vec();
        assert_eq!(text(files.span("/lib64/ld-linux-x86-64.so.2").unwrap()), b"loader");
        assert_eq!(
            text(files.span("/lib/x86_64-linux-gnu/../x86_64-linux-gnu/ld-linux-x86-64.so.2").unwrap()),
            b"loader"
        );
        assert_eq!(files.span("/loop"), None);
        assert_eq!(files.span("/lib"), None, "a directory");
    }
}
