//! `kiln export`: an image or program as a file other hypervisors boot. `--format pvh` writes one ELF with a PVH
//! entry (QEMU's `-kernel`, Firecracker, Cloud Hypervisor; docs/deploy.md), resolved as `kiln run` resolves it.

use crate::size::parse_size;
use anyhow::{Context, Result};
use kiln_launch::network::{NetMode, NetworkFlags};
use kiln_launch::{home, parse_env, parse_mapping, parse_mount, parse_workdir, Overrides};
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// One ELF with a PVH entry note: `qemu-system-x86_64 -kernel FILE`, Firecracker, Cloud Hypervisor
    Pvh,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// What to write
    #[arg(long, value_enum, default_value = "pvh")]
    format: Format,
    /// The file to write
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Guest memory the image is laid out for (K, M or G suffix; default 64M, or the image's); give the VM at least
    /// this much and a few MiB more for its firmware
    #[arg(long, short = 'm', value_parser = parse_size)]
    memory: Option<u64>,
    /// Set an environment variable in the program (repeatable; the boot command line's NAME=VALUE words add more)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// The directory the program starts in (absolute)
    #[arg(long, short = 'w', value_name = "DIR", value_parser = parse_workdir)]
    workdir: Option<String>,
    /// Put a host file into the guest's filesystem (repeatable)
    #[arg(long = "file", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    files: Vec<(PathBuf, String)>,
    /// Put a host directory, recursively, into the guest's filesystem (repeatable)
    #[arg(long = "dir", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    dirs: Vec<(PathBuf, String)>,
    /// Mount a volume at /path (repeatable, up to 4): the host that boots the image attaches the disk, a virtio-blk
    /// device per volume in this order (NAME's file, from `kiln volume inspect NAME`, or any disk with ext2 on it)
    #[arg(long = "volume", short = 'v', value_name = "NAME:/path", value_parser = parse_mount)]
    volumes: Vec<(String, String)>,
    /// An image (NAME[:TAG] or id) or a Linux x86-64 executable, then the program's arguments (for an image: instead
    /// of its args; the boot command line's words after `--` replace them again)
    #[arg(value_name = "IMAGE|PROGRAM [ARGS]", required = true, num_args = 1.., trailing_var_arg = true)]
    command: Vec<String>,
}

pub fn export(args: ExportArgs) -> Result<u8> {
    let mut words = args.command.iter().cloned();
    let target = words.next().unwrap_or_default();
    let overrides = Overrides {
        args: words.collect(),
        memory: args.memory,
        cpus: Some(1),
        env: args.env,
        workdir: args.workdir,
        files: args.files,
        dirs: args.dirs,
        volumes: args.volumes,
        // An exported image has no network card yet.
        network: NetworkFlags { mode: NetMode::None, ..NetworkFlags::default() },
        trace_syscalls: false,
        stats: false,
        stop_timeout: None,
        core_file: None,
    };
    let store = home::store().ok();
    let _reading = store.as_ref().map(|s| s.read_lock()).transpose()?;
    let spec = kiln_launch::resolve(store.as_ref(), &target, &overrides)?;
    let bytes = match args.format {
        Format::Pvh => kiln_launch::export_pvh(&spec, crate::run::KERNEL, kiln_libos::PVH_PLATFORM)?,
    };
    write_whole(&args.output, &bytes)?;
    outln!("{}: {} bytes ({})", args.output.display(), bytes.len(), spec.shown);
    Ok(0)
}

/// Writes `bytes` to a temporary file beside `path` and renames it there: a failed export leaves nothing half-written.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".kiln-export-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}
