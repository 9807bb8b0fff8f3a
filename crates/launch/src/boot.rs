//! The launch itself: a [`LaunchSpec`] made into a VM ready to run, its program and image loaded, its root
//! filesystem built (or taken from the cache), its network card and volumes attached. Running it (the console, the
//! stop signals, the exit) is the launcher's.

use crate::error::LaunchError;
use crate::{guest_fs, volumes, LaunchSpec, Loaded};
use kiln_vmm::boot::BootError;
use kiln_vmm::loader::LoaderError;
use kiln_vmm::ready::ReadyMachine;
use kiln_vmm::rewrite::SiteCounts;
use kiln_vmm::{Vm, VmConfig, VmError};
use std::borrow::Cow;

/// A VM made from a spec, and what the launcher reports about it.
pub struct Prepared {
    pub vm: Vm,
    /// The syscall sites of a dynamic program's shared objects (for `--stats`).
    pub object_sites: Option<SiteCounts>,
    /// What the launcher should tell the user before the program runs (a volume that e2fsck repaired).
    pub notices: Vec<String>,
}

/// Makes the VM `spec` describes, on `builtin_kernel` for a host program: every launcher's one way to the VMM.
pub fn prepare(spec: &LaunchSpec, builtin_kernel: &'static [u8]) -> Result<Prepared, LaunchError> {
    prepare_on(spec, builtin_kernel, None)
}

/// [`prepare`], on `ready` if given: a machine made ahead of time (used if its shape is the spec's).
pub fn prepare_on(
    spec: &LaunchSpec,
    builtin_kernel: &'static [u8],
    ready: Option<ReadyMachine>,
) -> Result<Prepared, LaunchError> {
    // Before anything starts a thread: the user-mode network's relay confines itself at its start.
    kiln_seccomp::set_mode(spec.seccomp.mode());
    let mut notices = Vec::new();
    if spec.seccomp == crate::Seccomp::Off {
        notices
            .push("--seccomp=off: the VMM's threads run without their syscall allow-lists (for debugging only)".into());
    }
    let Configured { kernel, program, mut config, object_sites } = configure(spec, builtin_kernel)?;
    config.net = crate::card::card(&spec.network)?;
    let mut attached = volumes::attach_all(&spec.volumes)?;
    volumes::attach_files(&mut attached, &spec.volume_files)?;
    config.volumes = attached.volumes;
    config.core_file = spec.core_file.clone();
    config.ready = ready;
    let vm = Vm::new(&kernel, &program, config).map_err(|e| explain(e, spec))?;
    notices.extend(attached.notices);
    Ok(Prepared { vm, object_sites, notices })
}

/// Makes the VM `snapshot` holds, to run on where it was paused, with a new network card made for `spec`'s network
/// (`spec` is the launch specification the snapshot keeps): published ports are bound again, so they work as before.
/// Its volumes are opened and locked again, and must be as the snapshot left them; a crash writes its core file where
/// `spec.core_file` says (the launcher sets it for the restored instance: the snapshot's is the old one's).
pub fn restore(spec: &LaunchSpec, snapshot: kiln_vmm::snapshot::Opened) -> Result<Vm, LaunchError> {
    restore_on(spec, snapshot, None)
}

/// [`restore`], into `ready` if given: a machine made ahead of time (used if its shape is the snapshot's).
pub fn restore_on(
    spec: &LaunchSpec,
    snapshot: kiln_vmm::snapshot::Opened,
    ready: Option<ReadyMachine>,
) -> Result<Vm, LaunchError> {
    kiln_seccomp::set_mode(spec.seccomp.mode());
    let volumes = volumes::reattach_all(&spec.volumes)?;
    let net = crate::card::card(&spec.network)?;
    let core_file = spec.core_file.clone();
    Vm::restore(snapshot, kiln_vmm::snapshot::Reattached { net, volumes, core_file, ready }).map_err(LaunchError::Vm)
}

/// What a launch and an export both make of a spec: the library OS and the program, and the VM's configuration
/// without devices (no card, no volumes, no core file: the caller adds what it has).
pub(crate) struct Configured {
    pub kernel: Cow<'static, [u8]>,
    pub program: Vec<u8>,
    pub config: VmConfig,
    pub object_sites: Option<SiteCounts>,
}

/// Loads what `spec` boots, builds its root filesystem and checks its working directory against it.
pub(crate) fn configure(spec: &LaunchSpec, builtin_kernel: &'static [u8]) -> Result<Configured, LaunchError> {
    let store = crate::home::store().ok();
    let loaded = crate::load(spec, store.as_ref(), builtin_kernel)?;
    let guest_fs::GuestFs { rootfs, object_sites, interpreter } = guest_fs::prepare(spec, &loaded)?;
    check_workdir(&spec.workdir, rootfs.bytes())?;
    let Loaded { kernel, program, prepared, program_identity, .. } = loaded;
    let config = VmConfig {
        memory: spec.memory,
        cpus: spec.cpus,
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        exe_path: spec.exe_path.clone(),
        workdir: spec.workdir.clone(),
        trace_syscalls: spec.trace_syscalls,
        rewrite_cache: crate::home::rewrite_cache_dir(),
        prepared,
        program_identity,
        rootfs,
        objects_need_page0: object_sites.is_some_and(|s| s.in_place > 0),
        interpreter,
        net: None,
        volumes: Vec::new(),
        core_file: None,
        nofile: spec.nofile,
        ready: None,
    };
    Ok(Configured { kernel, program, config, object_sites })
}

/// The working directory must be makeable: no name on its way may be a file (or anything but a directory or a
/// symbolic link) of the root filesystem. Said before boot, as one line; a volume's contents are checked at boot.
pub(crate) fn check_workdir(workdir: &str, rootfs: &[u8]) -> Result<(), LaunchError> {
    let Ok(entries) = kiln_abi::rootfs::entries(rootfs) else { return Ok(()) };
    for entry in entries.flatten() {
        let on_the_way = workdir == entry.path || workdir.starts_with(&format!("{}/", entry.path));
        if on_the_way && entry.kind == kiln_abi::rootfs::KIND_FILE {
            return Err(LaunchError::WorkdirIsFile { workdir: workdir.to_string(), path: entry.path.to_string() });
        }
    }
    Ok(())
}

/// Puts the VMM's error in the user's terms: the subject first, then what to do.
pub(crate) fn explain(e: VmError, spec: &LaunchSpec) -> LaunchError {
    let (shown, memory) = (spec.shown.clone(), spec.memory);
    match e {
        VmError::Program(e) => LaunchError::Program { shown, problem: e.to_string() },
        VmError::MemoryTooSmall { minimum, .. } => LaunchError::MemoryTooSmall { memory, minimum },
        VmError::Boot(BootError::Memory(_) | BootError::Loader(LoaderError::Memory(_))) => {
            LaunchError::DoesNotFit { shown, memory }
        }
        other => LaunchError::Vm(other),
    }
}
