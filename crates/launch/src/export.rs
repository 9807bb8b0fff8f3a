//! An image or program made into a file other hypervisors boot (`kiln export`): the same loading, root filesystem
//! and checks as a launch ([`crate::prepare`]), handed to the VMM's export instead of a VM.

use crate::boot::{check_workdir, explain};
use crate::error::LaunchError;
use crate::network::Network;
use crate::{guest_fs, LaunchSpec, Loaded};
use kiln_vmm::export::ExportError;
use kiln_vmm::VmConfig;

/// The PVH ELF of `spec` (`kiln_vmm::export::pvh`), on `builtin_kernel` for a host program, started by `platform`.
pub fn export_pvh(spec: &LaunchSpec, builtin_kernel: &'static [u8], platform: &[u8]) -> Result<Vec<u8>, LaunchError> {
    if spec.network != Network::None {
        return Err(LaunchError::Export(ExportError::Unsupported("a network card", "no network yet")));
    }
    if !spec.volumes.is_empty() {
        return Err(LaunchError::Export(ExportError::Unsupported("a volume", "no disks yet")));
    }
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
    };
    kiln_vmm::export::pvh(&kernel, &program, platform, config).map_err(|e| match e {
        ExportError::Vm(e) => explain(e, spec),
        other => LaunchError::Export(other),
    })
}
