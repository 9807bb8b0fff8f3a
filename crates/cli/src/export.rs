//! `kiln export`: an image or program as a file other hypervisors boot, resolved as `kiln run` resolves it. `--format
//! pvh` writes one ELF with a PVH entry (QEMU's `-kernel`, Firecracker, Cloud Hypervisor); `--format raw|qcow2` a
//! UEFI-bootable disk holding that ELF and Kiln's UEFI loader (OVMF, clouds' UEFI images; docs/deploy.md).

use crate::size::parse_size;
use anyhow::{Context, Result};
use kiln_launch::network::{NetMode, NetworkFlags};
use kiln_launch::{home, parse_env, parse_mapping, parse_mount, parse_workdir, Overrides};
use kiln_vmm::export::Loader;
use std::io::{Seek as _, Write as _};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// One ELF with a PVH entry note: `qemu-system-x86_64 -kernel FILE`, Firecracker, Cloud Hypervisor
    Pvh,
    /// A raw GPT disk image that UEFI firmware boots (OVMF, EC2, GCE; Azure after conversion to VHD)
    Raw,
    /// The same disk as a qcow2 image
    Qcow2,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// What to write
    #[arg(long, value_enum, default_value = "pvh")]
    format: Format,
    /// The file to write
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// The boot command line of a disk image (`raw`, `qcow2`; what QEMU's -append gives a PVH image): NAME=VALUE
    /// words, `ip=...`, then `-- ARGS` replacing the program's arguments
    #[arg(long, value_name = "WORDS")]
    cmdline: Option<String>,
    /// The size of a disk image (`raw`, `qcow2`; K, M or G suffix, rounded up to whole MiB): GCE takes only whole
    /// GiB; default: as small as it fits
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    disk_size: Option<u64>,
    /// Guest memory the image is laid out for (K, M or G suffix; default 64M, or the image's); give the VM at least
    /// this much and a few MiB more for its firmware
    #[arg(long, short = 'm', value_parser = parse_size)]
    memory: Option<u64>,
    /// vCPUs the image runs on at most (default 1, or the image's): it starts as many as the machine has, up to these
    /// (the boot command line's `nr_cpus=N` lowers it)
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
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
    if matches!(args.format, Format::Pvh) && (args.cmdline.is_some() || args.disk_size.is_some()) {
        anyhow::bail!(
            "--cmdline and --disk-size are for disk images (--format raw or qcow2); a PVH image's command line is the \
             host's (QEMU -append, Firecracker boot_args)"
        );
    }
    let mut words = args.command.iter().cloned();
    let target = words.next().unwrap_or_default();
    let overrides = Overrides {
        args: words.collect(),
        memory: args.memory,
        cpus: args.cpus,
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
    let pvh = |loader| kiln_launch::export_pvh(&spec, crate::run::KERNEL, kiln_libos::PVH_PLATFORM, loader);
    let disk = |payload: Vec<u8>| {
        kiln_uefi_disk::disk(&payload, args.cmdline.as_deref().unwrap_or(""), args.disk_size)
            .context("cannot make the disk image")
    };
    let size = match args.format {
        Format::Pvh => write_whole(&args.output, &Image::Bytes(pvh(Loader::Pvh)?))?,
        Format::Raw => write_whole(&args.output, &Image::Sparse(disk(pvh(Loader::Uefi)?)?))?,
        Format::Qcow2 => {
            let qcow2 = kiln_uefi_disk::qcow2::from_disk(&disk(pvh(Loader::Uefi)?)?);
            write_whole(&args.output, &Image::Bytes(qcow2))?
        }
    };
    outln!("{}: {} bytes ({})", args.output.display(), size, spec.shown);
    Ok(0)
}

/// What an export writes: bytes, or a disk whose blocks of zeroes become holes in the file.
enum Image {
    Bytes(Vec<u8>),
    Sparse(kiln_uefi_disk::Disk),
}

/// Writes `image` to a temporary file beside `path` and renames it there: a failed export leaves nothing
/// half-written. Returns the file's size.
fn write_whole(path: &std::path::Path, image: &Image) -> Result<u64> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".kiln-export-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = |file: &mut std::fs::File| match image {
        Image::Bytes(bytes) => file.write_all(bytes).map(|()| bytes.len() as u64),
        Image::Sparse(disk) => {
            for (offset, bytes) in disk.data() {
                file.seek(std::io::SeekFrom::Start(offset))?;
                file.write_all(bytes)?;
            }
            file.set_len(disk.size()).map(|()| disk.size())
        }
    };
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| write(&mut f).and_then(|size| f.sync_all().map(|()| size)))
        .and_then(|size| std::fs::rename(&tmp, path).map(|()| size));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}
