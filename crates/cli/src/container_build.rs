//! `kiln build` of a project whose `from` names a container image: the image read and flattened
//! (`kiln_container`), its program found in its own root file system, and everything in that file system put into
//! the Kiln image's root filesystem, with every shared object rewritten when the program is dynamically linked (its
//! loader and libraries come from the image, never from the host). The image config's Entrypoint/Cmd, Env,
//! WorkingDir and ExposedPorts become the image's program and arguments, environment, working directory and ports;
//! `Kiln.toml`'s own `args`, `env`, `workdir` and `ports` override them, and its `files` and `dirs` go on top.

use crate::image_build::bar;
use crate::run::KERNEL;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use kiln_container::program::{self, Program};
use kiln_container::tree::{Node, Tree};
use kiln_container::{ContainerImage, Source};
use kiln_image::build::{add_project_files, store_image, Parts};
use kiln_image::kiln_toml::{Binary, Project, DEFAULT_MEMORY};
use kiln_image::size::human;
use kiln_image::{Digest, Reference, Store};
use kiln_vmm::elf::{ElfImage, ElfKind};
use kiln_vmm::rewrite::SiteCounts;
use kiln_vmm::rewrite_cache::RewriteCache;
use kiln_vmm::rootfs::RootfsBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub fn build(store: &Store, project: &Project, from: &str, tag: &Reference, quiet: bool) -> Result<u8> {
    let (digest, manifest, config_digest) = import(store, project, from, tag, quiet)?;
    if quiet {
        outln!("{digest}");
    } else {
        let size = manifest.total_size(manifest.to_bytes().len() as u64);
        outln!("built {tag} {} ({}) from {from} ({config_digest})", digest.short(), human(size));
    }
    Ok(0)
}

/// `kiln run oci-archive:...` (and the other sources): the container image made a Kiln image, tagged after where
/// it came from (`app.tar` → `app:latest`, as `docker load` tags what it loads), and its id, to run.
pub fn import_for_run(store: &Store, from: &str) -> Result<Digest> {
    let dir = std::env::current_dir().context("cannot tell the current directory")?;
    let source = Source::parse(from, &dir)?;
    let (name, tag) = run_name(&source);
    let project = Project {
        dir,
        name: name.clone(),
        binary: Binary::Container(from.to_string()),
        args: Vec::new(),
        env: Default::default(),
        files: Default::default(),
        dirs: Default::default(),
        memory: DEFAULT_MEMORY,
        cpus: 1,
        ports: Vec::new(),
        volumes: Default::default(),
        workdir: None,
    };
    let reference = Reference::new(&name, &tag)?;
    Ok(import(store, &project, from, &reference, true)?.0)
}

/// An image name and tag for a container image run straight from where it is: the file's or directory's name (or
/// the reference's last path component and tag), in the letters image names allow.
fn run_name(source: &Source) -> (String, String) {
    let (base, tag) = match source {
        Source::OciArchive { path, reference } | Source::DockerArchive { path, reference } => {
            (path.file_stem().map(|s| s.to_string_lossy().into_owned()), reference.clone())
        }
        Source::OciLayout { dir, reference } => {
            (dir.file_name().map(|s| s.to_string_lossy().into_owned()), reference.clone())
        }
        Source::Registry(reference) => {
            let last = reference.rsplit('/').next().unwrap_or(reference);
            let (name, tag) = last.split_once('@').or_else(|| last.split_once(':')).unwrap_or((last, "latest"));
            (Some(name.to_string()), Some(tag.to_string()))
        }
    };
    let clean = |s: &str, allowed: &dyn Fn(char) -> bool| -> String {
        s.to_lowercase().chars().map(|c| if allowed(c) { c } else { '-' }).collect::<String>()
    };
    let name = clean(&base.unwrap_or_default(), &|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let name = name.trim_matches(['.', '_', '-']).chars().take(64).collect::<String>();
    let tag =
        clean(&tag.unwrap_or_else(|| "latest".into()), &|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let tag = tag.trim_matches(['.', '-']).chars().take(64).collect::<String>();
    (if name.is_empty() { "container".into() } else { name }, if tag.is_empty() { "latest".into() } else { tag })
}

/// Reads `from`, makes it a Kiln image with `project`'s settings on top, and stores it as `tag`.
fn import(
    store: &Store,
    project: &Project,
    from: &str,
    tag: &Reference,
    quiet: bool,
) -> Result<(Digest, kiln_image::Manifest, String)> {
    let source = Source::parse(from, &project.dir)?;
    let step = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    step.enable_steady_tick(Duration::from_millis(120));
    step.set_message(format!("reading {from}"));
    let built = read_and_convert(project, &source, &step).with_context(|| format!("from {from}"));
    step.finish_and_clear();
    let Converted { image, program, bytes, prepared, rootfs, sites } = built?;
    if image.settings.user_is_not_root() && !quiet {
        errln!(
            "kiln: note: the image's User {:?} is not applied: a Kiln program starts as root (ids are not enforced)",
            image.settings.user.as_deref().unwrap_or_default()
        );
    }
    tracing::debug!(
        "{from}: {} layers, {} entries, {} of files, {} device nodes and FIFOs left out; {sites}",
        image.layers,
        image.totals.entries,
        human(image.totals.file_bytes),
        image.totals.specials
    );

    let configured = configure(project, &image, &program, rootfs.len() as u64);
    let total = (KERNEL.len() + bytes.len() + prepared.len() + rootfs.len()) as u64;
    let bar = if quiet { ProgressBar::hidden() } else { bar(total, "storing") };
    let parts = Parts {
        kernel: KERNEL,
        program: &bytes,
        prepared: &prepared,
        program_path: &program.path,
        rootfs: &rootfs,
        kiln_version: env!("CARGO_PKG_VERSION"),
    };
    let stored = store_image(store, &configured, &parts, tag, |n| bar.inc(n));
    bar.finish_and_clear();
    let (digest, manifest) = stored?;
    Ok((digest, manifest, image.config_digest))
}

struct Converted {
    image: ContainerImage,
    program: Program,
    bytes: Vec<u8>,
    prepared: Vec<u8>,
    rootfs: Vec<u8>,
    sites: SiteCounts,
}

fn read_and_convert(project: &Project, source: &Source, step: &ProgressBar) -> Result<Converted> {
    let image = load(source)?;
    let args = (!project.args.is_empty()).then_some(project.args.as_slice());
    let program = program::find(&image.tree, &image.settings, args)?;
    let (_, _, bytes) = image.tree.file(&program.resolved).map_err(|e| anyhow!("its program: {e}"))?;
    let bytes = bytes.to_vec();
    let shown = format!("{} (in the image)", program.path);
    let elf = ElfImage::parse(&bytes).map_err(|e| anyhow!("{shown}: {e}"))?;
    let dynamic = elf.interpreter.is_some();
    if let Some(interpreter) = &elf.interpreter {
        if image.tree.file(interpreter).is_err() {
            bail!("{shown} is dynamically linked, and its loader {interpreter} is not in the image");
        }
    }
    step.set_message(format!("preparing {}", program.path));
    let prepared = prepare(&elf, &bytes).map_err(|e| anyhow!("{shown}: {e}"))?;
    if dynamic {
        step.set_message("rewriting the image's shared objects");
    }
    let (rootfs, sites) = rootfs(project, &image.tree, dynamic)?;
    Ok(Converted { image, program, bytes, prepared, rootfs, sites })
}

/// Reads the container image `source` names. A registry's is fetched first (`kiln_registry`: every blob checked
/// against its digest, the registry's credentials as `kiln pull` finds them) into an OCI layout of this process's
/// own under `$KILN_HOME/cache/layouts`, removed once read.
fn load(source: &Source) -> Result<ContainerImage> {
    let Source::Registry(reference) = source else { return Ok(kiln_container::load(source)?) };
    let name = kiln_registry::RemoteName::parse(reference)?;
    let dir = kiln_launch::home::cache_dir("layouts")
        .ok_or_else(|| anyhow!("there is no home to download {reference} into: set KILN_HOME"))?
        .join(std::process::id().to_string());
    let options = kiln_registry::Options {
        ca_cert: None,
        insecure: false,
        credentials: kiln_registry::credentials::Sources::from_env(kiln_launch::home::kiln_home().as_deref()),
    };
    let fetched = kiln_registry::fetch_to_layout(&name, &dir, &options, std::sync::Arc::new(kiln_registry::NoProgress));
    let image = match fetched {
        Ok(_) => kiln_container::load(&Source::OciLayout { dir: dir.clone(), reference: None }).map_err(Into::into),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// The program with its syscalls rewritten, as the VMM loads it, through the rewrite cache: a large program (python3
/// is 6.8 MB) is decoded once, not at each import.
fn prepare(elf: &ElfImage, bytes: &[u8]) -> Result<Vec<u8>, kiln_vmm::loader::LoaderError> {
    let prepared = match kiln_launch::home::rewrite_cache_dir().map(RewriteCache::new) {
        Some(cache) => cache.prepare(elf, bytes)?.0,
        None => kiln_vmm::loader::prepare_program(elf, bytes)?,
    };
    Ok(kiln_vmm::rewrite_cache::encode(&prepared))
}

/// The image's files (shared objects rewritten if `rewrite_objects`), then the project's `dirs` and `files`.
fn rootfs(project: &Project, tree: &Tree, rewrite_objects: bool) -> Result<(Vec<u8>, SiteCounts)> {
    let (rewritten, sites) = match rewrite_objects {
        true => shared_objects(tree)?,
        false => (HashMap::new(), SiteCounts::default()),
    };
    let mut builder = RootfsBuilder::reproducible();
    // The exact size of the contents, so that the buffer (of 72 MiB for Debian's python3) is never copied to grow.
    let mut data = 0;
    tree.walk(|path, node| {
        data += match node {
            Node::File { data, .. } => rewritten.get(path).map_or(data.len(), Vec::len).next_multiple_of(8),
            Node::Symlink { target } => target.len().next_multiple_of(8),
            Node::Dir { .. } => 0,
        }
    });
    builder.reserve(data);
    let mut failed = None;
    tree.walk(|path, node| {
        if failed.is_some() {
            return;
        }
        let added = match node {
            Node::Dir { mode, .. } => builder.add_dir(path, *mode),
            Node::Symlink { target } => builder.add_symlink(path, target.as_bytes()),
            Node::File { mode, data } => builder.add_file(path, *mode, rewritten.get(path).unwrap_or(data)),
        };
        if let Err(e) = added {
            failed = Some(anyhow::Error::from(e).context(format!("the image's {path}")));
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    add_project_files(project, &mut builder)?;
    Ok((builder.finish(), sites))
}

/// Every shared object in `tree`, rewritten, by path; with their syscall sites, none of which may stay in place.
/// A first import rewrites them all (python3's 60 take seconds), so they are shared out among the host's CPUs.
fn shared_objects(tree: &Tree) -> Result<(HashMap<String, Vec<u8>>, SiteCounts)> {
    let mut elf_files: Vec<(String, &[u8])> = Vec::new();
    tree.walk(|path, node| {
        if let Node::File { data, .. } = node {
            if data.starts_with(b"\x7fELF") {
                elf_files.push((path.to_string(), data));
            }
        }
    });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(elf_files.len().max(1));
    let done: Vec<Vec<(usize, Result<Option<Rewritten>>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let elf_files = &elf_files;
                scope.spawn(move || {
                    let cache = kiln_launch::home::rewrite_cache_dir().map(RewriteCache::new);
                    (worker..elf_files.len())
                        .step_by(workers)
                        .map(|i| (i, shared_object(&elf_files[i].0, elf_files[i].1, cache.as_ref())))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rewriting thread does not panic")).collect()
    });
    let mut results: Vec<_> = done.into_iter().flatten().collect();
    results.sort_by_key(|(i, _)| *i);
    let mut rewritten = HashMap::new();
    let mut sites = SiteCounts::default();
    for (i, result) in results {
        let path = &elf_files[i].0;
        match result.with_context(|| format!("the image's {path}"))? {
            Some((_, counts)) if counts.in_place > 0 => bail!(
                "the image's {path} has {} syscall sites Kiln could not move to stubs, which images do not support yet",
                counts.in_place
            ),
            Some((bytes, counts)) => {
                sites = sites + counts;
                rewritten.insert(path.clone(), bytes);
            }
            None => {}
        }
    }
    Ok((rewritten, sites))
}

/// A shared object's bytes as rewritten, and its syscall sites.
type Rewritten = (Vec<u8>, SiteCounts);

/// A shared object (or a position-independent executable, which the loader maps the same way) rewritten for the
/// guest, with its sites; `None` for any other file, ELF files Kiln cannot read included (as `--dir` does).
fn shared_object(path: &str, data: &[u8], cache: Option<&RewriteCache>) -> Result<Option<Rewritten>> {
    if !data.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let Ok(elf) = ElfImage::parse_any(data) else { return Ok(None) };
    if elf.kind == ElfKind::Exec || !elf.segments.iter().any(|s| s.executable) {
        return Ok(None);
    }
    let object = kiln_vmm::dynamic::rewrite(Path::new(path), data, cache)?;
    let counts = object.report.counts();
    Ok(Some((object.bytes, counts)))
}

/// The project as the image's settings fill it in: what `Kiln.toml` sets wins. Memory is at least the root
/// filesystem's size plus the default, since the root filesystem lies in guest memory.
fn configure(project: &Project, image: &ContainerImage, program: &Program, rootfs_len: u64) -> Project {
    let mut configured = project.clone();
    configured.args = program.args.clone();
    let mut env: std::collections::BTreeMap<String, String> = image
        .settings
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    env.extend(project.env.clone());
    configured.env = env;
    if configured.workdir.is_none() {
        configured.workdir = image.settings.workdir.clone().filter(|w| kiln_image::is_workdir(w));
    }
    if configured.ports.is_empty() {
        configured.ports = image.settings.exposed_ports.iter().filter_map(|p| published(p)).collect();
    }
    let needed = rootfs_len.next_multiple_of(1 << 20) + DEFAULT_MEMORY;
    configured.memory = project.memory.max(needed);
    configured
}

/// `PORT/tcp` exposed → `PORT:PORT` published on the same host port (`PORT:PORT/udp` for UDP).
fn published(exposed: &str) -> Option<String> {
    let (port, protocol) = exposed.split_once('/').unwrap_or((exposed, "tcp"));
    let port: u16 = port.parse().ok()?;
    match protocol {
        "tcp" => Some(format!("{port}:{port}")),
        "udp" => Some(format!("{port}:{port}/udp")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use kiln_container::Source;
    use std::path::Path;

    #[test]
    fn images_run_straight_from_a_source_are_named_after_it() {
        let name = |s: &str| super::run_name(&Source::parse(s, Path::new("/p")).unwrap());
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(name("docker-archive:build/My App.tar"), pair("my-app", "latest"));
        assert_eq!(name("oci-archive:app.tar:v2"), pair("app", "v2"));
        assert_eq!(name("oci:/srv/layouts/web:1.0"), pair("web", "1.0"));
        assert_eq!(name("registry:ghcr.io/acme/api:2.1"), pair("api", "2.1"));
        assert_eq!(name("registry:localhost:5000/hello"), pair("hello", "latest"));
        assert_eq!(name("oci-archive:..tar"), pair("container", "latest"));
    }
    #[test]
    fn exposed_ports_are_published_on_the_same_host_port() {
        assert_eq!(super::published("80/tcp").as_deref(), Some("80:80"));
        assert_eq!(super::published("53/udp").as_deref(), Some("53:53/udp"));
        assert_eq!(super::published("8080").as_deref(), Some("8080:8080"));
        assert_eq!(super::published("1-2/tcp"), None);
        assert_eq!(super::published("9/sctp"), None);
    }
}
