//! `kiln build`: a `Kiln.toml` project → an image in the store.

use crate::run::KERNEL;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_image::build::{add_project_files, rootfs, store_image, Parts};
use kiln_image::kiln_toml::{self, Binary, Project};
use kiln_image::size::human;
use kiln_image::Reference;
use kiln_launch::home;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The project file
    #[arg(short = 'f', long = "file", value_name = "PATH", default_value = kiln_toml::FILE_NAME)]
    file: PathBuf,
    /// Name and tag for the image (default: Kiln.toml's name, tag latest)
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]", value_parser = parse_reference)]
    tag: Option<Reference>,
    /// Print only the image id
    #[arg(short = 'q', long)]
    quiet: bool,
}

fn parse_reference(s: &str) -> Result<Reference, String> {
    s.parse().map_err(|e: kiln_image::reference::ReferenceError| e.to_string())
}

/// The musl target cargo builds projects' packages for: static binaries, as Kiln runs.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn build(args: BuildArgs) -> Result<u8> {
    let project = kiln_toml::load(&args.file)?;
    let tag = match args.tag {
        Some(tag) => tag,
        None => Reference::new(&project.name, kiln_image::reference::DEFAULT_TAG)?,
    };
    let store = home::store()?;
    if let Binary::Container(from) = &project.binary {
        return crate::container_build::build(&store, &project, from, &tag, args.quiet);
    }
    let (program_path, program) = program(&project, args.quiet)?;
    // Rewriting a large program and packing large directories take a while: a spinner says which is going on.
    let step = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    step.enable_steady_tick(Duration::from_millis(120));
    let steps = || -> Result<(Vec<u8>, Vec<u8>)> {
        step.set_message(format!("preparing {}", program_path.display()));
        let prepared = prepare(&program_path, &program)?;
        step.set_message("packing files and directories");
        Ok((prepared, image_rootfs(&project, &program_path, &program)?))
    };
    let result = steps();
    // Cleared before an error is printed, too.
    step.finish_and_clear();
    let (prepared, fs) = result?;
    let program_name = program_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let program_name = format!("/{program_name}");

    let total = (KERNEL.len() + program.len() + prepared.len() + fs.len()) as u64;
    let bar = if args.quiet { ProgressBar::hidden() } else { bar(total, "storing") };
    let parts = Parts {
        kernel: KERNEL,
        program: &program,
        prepared: &prepared,
        program_path: &program_name,
        rootfs: &fs,
        kiln_version: env!("CARGO_PKG_VERSION"),
    };
    let stored = store_image(&store, &project, &parts, &tag, |n| bar.inc(n));
    bar.finish_and_clear();
    let (digest, manifest) = stored?;
    if args.quiet {
        outln!("{digest}");
    } else {
        let size = manifest.total_size(manifest.to_bytes().len() as u64);
        outln!("built {tag} {} ({})", digest.short(), human(size));
    }
    Ok(0)
}

/// The project's files and directories; for a dynamically linked program, first its loader and libraries, and the
/// shared objects among the project's files rewritten (as `kiln run` does for a host program), so that the image
/// is self-contained. Syscall sites that stay in place are refused: an image does not say it needs page 0.
fn image_rootfs(project: &Project, program_path: &Path, program: &[u8]) -> Result<Vec<u8>> {
    let elf = kiln_vmm::elf::ElfImage::parse(program).map_err(|e| anyhow!("{}: {e}", program_path.display()))?;
    let cache = kiln_launch::home::rewrite_cache_dir().map(kiln_vmm::rewrite_cache::RewriteCache::new);
    let Some(mut deps) = kiln_vmm::dynamic::collect(&elf, program_path, cache.as_ref())
        .with_context(|| format!("{}: dynamically linked", program_path.display()))?
    else {
        return Ok(rootfs(project)?);
    };
    let mut builder = kiln_vmm::rootfs::RootfsBuilder::reproducible();
    for object in std::iter::once(&deps.interpreter).chain(&deps.libraries) {
        builder.add_file(&object.guest_path, 0o755, &object.object.bytes)?;
    }
    let found = kiln_launch::dynamic::FoundObjects::default();
    builder.set_host_file_filter(kiln_launch::dynamic::object_filter(found.clone()));
    add_project_files(project, &mut builder)?;
    kiln_launch::dynamic::add_libraries_they_need(&mut deps, &found, &mut builder)?;
    let in_place = found.borrow().iter().fold(deps.site_counts(), |total, &(_, counts)| total + counts).in_place;
    if in_place > 0 {
        bail!(
            "{}: its shared objects have {in_place} syscall sites Kiln could not move to stubs, which images do not support yet; run it with kiln run",
            program_path.display()
        );
    }
    Ok(builder.finish())
}

/// The program with its syscalls rewritten, as the VMM loads it (`kiln_vmm::rewrite_cache` format).
fn prepare(path: &Path, program: &[u8]) -> Result<Vec<u8>> {
    let elf = kiln_vmm::elf::ElfImage::parse(program).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let prepared = kiln_vmm::loader::prepare_program(&elf, program).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(kiln_vmm::rewrite_cache::encode(&prepared))
}

pub(crate) fn bar(total: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// The program's path and bytes: the file `binary` names, or what cargo builds (with a spinner unless `quiet`).
fn program(project: &Project, quiet: bool) -> Result<(PathBuf, Vec<u8>)> {
    let path = match &project.binary {
        Binary::Path(path) => project.dir.join(path),
        Binary::Cargo { package, bin } => cargo_build(&project.dir, package, bin.as_deref(), quiet)?,
        Binary::Container(_) => unreachable!("built by container_build"),
    };
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("binary {}: no such file", path.display()),
        _ => anyhow!(e).context(format!("cannot read binary {}", path.display())),
    })?;
    Ok((path, bytes))
}

/// `cargo build --release --target x86_64-unknown-linux-musl -p PACKAGE`, in the project's directory; the executable
/// is the one cargo's JSON messages name.
fn cargo_build(dir: &Path, package: &str, bin: Option<&str>, quiet: bool) -> Result<PathBuf> {
    let bin = bin.unwrap_or(package);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let spinner = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    let spinner = spinner.with_message(format!("cargo build -p {package} --bin {bin}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--message-format=json-render-diagnostics", "--target", MUSL_TARGET])
        .args(["-p", package, "--bin", bin])
        .current_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cargo to build the binary")?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut executable = None;
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let message: serde_json::Value = match serde_json::from_str(&line?) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let is_bin = message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
        if message["reason"] == "compiler-artifact" && is_bin && message["target"]["name"] == bin {
            executable = message["executable"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    spinner.finish_and_clear();
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        {
            use std::io::Write as _;
            let _ = write!(std::io::stderr(), "{errors}");
        }
        bail!("binary: cargo could not build package {package} for {MUSL_TARGET} (its errors are above)");
    }
    executable.ok_or_else(|| anyhow!("binary: cargo built package {package} but no executable named {bin}"))
}
