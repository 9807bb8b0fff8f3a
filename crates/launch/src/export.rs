//! An image or program made into a file other hypervisors boot (`kiln export`): the same loading, root filesystem
//! and checks as a launch ([`crate::prepare`]), handed to the VMM's export instead of a VM.

use crate::boot::{configure, explain, Configured};
use crate::error::LaunchError;
use crate::network::Network;
use crate::LaunchSpec;
use kiln_vmm::export::{ExportError, Loader};

/// The PVH ELF of `spec` (`kiln_vmm::export::pvh`), on `builtin_kernel` for a host program, started by `platform`,
/// laid out for `loader`.
pub fn export_pvh(
    spec: &LaunchSpec,
    builtin_kernel: &'static [u8],
    platform: &[u8],
    loader: Loader,
) -> Result<Vec<u8>, LaunchError> {
    if spec.network != Network::None {
        return Err(LaunchError::Export(ExportError::Unsupported("a network card", "no network yet")));
    }
    // Only where each volume is mounted: the host that boots the image attaches the disks (the volume's file, or any
    // disk holding an ext2 filesystem), in this order.
    let mounts: Vec<String> = spec.volumes.iter().map(|(_, mount)| mount.clone()).collect();
    let Configured { kernel, program, config, .. } = configure(spec, builtin_kernel)?;
    kiln_vmm::export::pvh(&kernel, &program, platform, config, &mounts, loader).map_err(|e| match e {
        ExportError::Vm(e) => explain(e, spec),
        other => LaunchError::Export(other),
    })
}
