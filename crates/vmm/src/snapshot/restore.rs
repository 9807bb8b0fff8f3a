//! Making a VM of a snapshot: the file is opened and checked whole before anything is made from it ([`Opened`]),
//! then a new VM gets its RAM from the file (copied, or for a large snapshot a private mapping: `fill.rs`; writes stay
//! in this process), its vCPUs their states, its network card and volumes the queues they had. The launcher supplies
//! the card's backend (a new one: see `docs/snapshots.md` for what survives) and the volumes' files, which must be
//! the ones the snapshot's VM had, unchanged (`volume.rs`).

use super::file::{read_header, read_state, Header};
use super::volume::FileIdentity;
use super::{io_err, CpuidLeaf, MachineState, SnapshotError};
use crate::boot::MIN_MEMORY;
use crate::core_dump::CoreSetup;
use crate::disk::{Disk, VolumeConfig};
use crate::netcard::{NetCard, NetConfig};
use crate::ready::{ReadyMachine, Shape};
use crate::virtio::blk::Blk;
use crate::vm::{create_machine, finish_machine, Devices, Machine, MAX_VCPUS};
use crate::{exit_state, Vm, VmError};
use kiln_abi::boot::MAX_VOLUMES;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A snapshot file, checked, not yet made a VM.
pub struct Opened {
    file: File,
    path: PathBuf,
    header: Header,
    machine: MachineState,
}

impl Opened {
    /// Opens and checks the snapshot at `path`: header, state, and every address the VMM will use against the RAM
    /// size. One error sentence for a file that is not a snapshot, is damaged, or was made by another version.
    pub fn open(path: &Path) -> Result<Opened, SnapshotError> {
        let file = File::open(path).map_err(io_err(path, "cannot open the snapshot"))?;
        let header = read_header(&file, path)?;
        let machine = read_state(&file, path, &header)?;
        check(&machine).map_err(|why| SnapshotError::Damaged { path: path.display().to_string(), why })?;
        Ok(Opened { file, path: path.to_path_buf(), header, machine })
    }

    /// The launcher's description of the instance, as the snapshot keeps it.
    pub fn launch(&self) -> &serde_json::Value {
        &self.machine.launch
    }

    /// Whether the VM had a network card (the restore then needs one).
    pub fn has_net(&self) -> bool {
        self.machine.net.is_some()
    }

    pub fn memory(&self) -> u64 {
        self.machine.memory
    }

    /// The shape of its VM, which a ready machine must have to be restored into.
    pub fn shape(&self) -> Shape {
        Shape { memory: self.machine.memory, cpus: self.machine.vcpus.len() as u32 }
    }

    /// The names of the VM's volumes, in its order (the restore needs each).
    pub fn volumes(&self) -> Vec<&str> {
        self.machine.volumes.iter().map(|v| v.name.as_str()).collect()
    }
}

/// What a restore gives the VM anew: the host's ends of its devices, which a snapshot does not hold.
#[derive(Default)]
pub struct Reattached {
    /// The network card's new backend and addresses: one if the snapshot's VM had a card, none otherwise.
    pub net: Option<NetConfig>,
    /// The snapshot's volumes by name, in its order ([`Opened::volumes`]): each the file its VM had, opened read-write
    /// and locked by the caller, unchanged since the snapshot (checked here).
    pub volumes: Vec<VolumeConfig>,
    /// Where a crash writes its core file, as [`crate::VmConfig::core_file`]; None for none.
    pub core_file: Option<PathBuf>,
    /// A machine made ahead of time ([`crate::ready::ReadyMachine`]): used if its shape is the snapshot's VM's
    /// ([`Opened::shape`]), else dropped and one made now.
    pub ready: Option<ReadyMachine>,
}

fn check(m: &MachineState) -> Result<(), String> {
    let cpus = m.vcpus.len();
    if cpus == 0 || cpus > MAX_VCPUS as usize || cpus != m.boot.vcpus.len() {
        return Err(format!("it has {cpus} vCPU states for {} vCPUs", m.boot.vcpus.len()));
    }
    if m.volumes.len() > MAX_VOLUMES {
        return Err(format!("it has {} volumes; Kiln mounts at most {MAX_VOLUMES}", m.volumes.len()));
    }
    if m.memory < MIN_MEMORY {
        return Err(format!("its RAM ({} bytes) is smaller than any VM's", m.memory));
    }
    for (i, state) in m.vcpus.iter().enumerate() {
        state.check().map_err(|why| format!("vCPU {i}'s state: {why}"))?;
    }
    if m.cpuid.as_ref().is_some_and(|leaves| leaves.is_empty() || CpuidLeaf::to_kvm(leaves).is_none()) {
        return Err(format!("its CPUID has {} entries", m.cpuid.as_ref().map_or(0, Vec::len)));
    }
    let b = &m.boot;
    let inside = |addr: u64| addr < m.memory;
    let fixed = [b.pml4, b.threads_phys, b.host_signals_phys, b.stats_phys, b.rootfs.phys];
    if !fixed.into_iter().chain(b.vcpus.iter().map(|v| v.hypercall_block_phys)).all(inside)
        || b.rootfs.phys.checked_add(b.rootfs.len).is_none_or(|end| end > m.memory)
    {
        return Err("its boot layout lies outside its RAM".into());
    }
    Ok(())
}

impl Vm {
    /// The VM `snapshot` holds, ready to run on from where it was paused, with the devices' host ends `reattached`.
    pub fn restore(snapshot: Opened, reattached: Reattached) -> Result<Vm, VmError> {
        let started = std::time::Instant::now();
        let Opened { file, path, header, machine } = snapshot;
        let Reattached { net, volumes, core_file, ready } = reattached;
        let foreign = |why: String| SnapshotError::Foreign { path: path.display().to_string(), why };
        if machine.net.is_some() != net.is_some() {
            let had = if machine.net.is_some() { "had a network card" } else { "had no network card" };
            return Err(foreign(format!("its VM {had}, and this launch differs")).into());
        }
        check_volumes(&path, &machine, &volumes)?;
        let cpus = machine.vcpus.len() as u32;
        let given = machine.cpuid.as_deref().and_then(CpuidLeaf::to_kvm);
        let Machine { kvm, vm, vcpus, ram, tsc_hz, synced_state, cpuid, .. } = match ready {
            Some(ready) if ready.shape() == Shape { memory: machine.memory, cpus } => finish_machine(ready, given)?,
            _ => create_machine(machine.memory, cpus, given)?,
        };
        if tsc_hz != machine.tsc_hz {
            let why =
                format!("it was taken on a host whose TSC runs at {} Hz; this one's runs at {tsc_hz}", machine.tsc_hz);
            return Err(foreign(why).into());
        }
        let machine_ready = started.elapsed();
        let filled = super::fill::fill(&ram, &file, header.memory_offset, &path)?;
        let synced_state = synced_state && machine.host.syncs_exit_state();
        let mut vcpus = vcpus;
        if !synced_state {
            vcpus.iter_mut().for_each(exit_state::unsync);
        }
        // The guest's clocks read the TSC: it goes on by the wall-clock time the snapshot spent on disk.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let away = u128::from(now.saturating_sub(machine.taken_unix_ns));
        let tsc = machine.guest_tsc.saturating_add((away * u128::from(tsc_hz) / 1_000_000_000) as u64);
        for (vcpu, state) in vcpus.iter().zip(&machine.vcpus) {
            state.load(vcpu, tsc).map_err(|(what, source)| VmError::Kvm { what, source })?;
        }
        let card = match (net, &machine.net) {
            (Some(n), Some(state)) => {
                let card =
                    NetCard::new(n.backend, n.mac, crate::boot::net_mmio_phys(machine.memory)).publishing(n.publish);
                card.restore(state).map_err(|why| SnapshotError::Damaged {
                    path: path.display().to_string(),
                    why: format!("its network card's state: {why}"),
                })?;
                Some(card)
            }
            _ => None,
        };
        let mut disks = Vec::with_capacity(volumes.len());
        for (i, (v, state)) in volumes.into_iter().zip(&machine.volumes).enumerate() {
            let blk = Blk::new(v.file, &v.name).map_err(|source| VmError::Volume { name: v.name.clone(), source })?;
            let disk = Disk::new(blk, crate::boot::volume_mmio_phys(machine.memory, i));
            disk.restore(&state.transport).map_err(|why| SnapshotError::Damaged {
                path: path.display().to_string(),
                why: format!("volume {}'s device state: {why}", v.name),
            })?;
            disks.push((v.name, disk));
        }
        let core_program = machine.core_program;
        let devices = Devices {
            core: core_file.map(|path| CoreSetup::new(path, core_program.clone(), machine.boot.auxv.clone())),
            core_program,
            net: card,
            disks,
            trace_syscalls: machine.trace_syscalls,
        };
        let kind = (machine.host, synced_state, tsc_hz);
        tracing::debug!(path = %path.display(), cpus, ?machine_ready, ?filled, total = ?started.elapsed(), "restored");
        // A later snapshot of this VM finds the pages it was given in its RAM, unless they are still the file's.
        let source = (filled == super::fill::Filled::Mapped).then_some((file, header.memory_offset));
        Ok(Vm::assemble((kvm, vm, vcpus), ram, machine.boot, kind, devices, (source, cpuid)))
    }
}

/// The launch's volumes must be the snapshot's, by name and in order, each its very file as it was then.
fn check_volumes(path: &Path, machine: &MachineState, volumes: &[VolumeConfig]) -> Result<(), SnapshotError> {
    let had: Vec<&str> = machine.volumes.iter().map(|v| v.name.as_str()).collect();
    let given: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    if had != given {
        let list = |names: &[&str]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        let why = format!("its VM had volumes {}, and this launch attaches {}", list(&had), list(&given));
        return Err(SnapshotError::Foreign { path: path.display().to_string(), why });
    }
    for (state, v) in machine.volumes.iter().zip(volumes) {
        let now = FileIdentity::of(&v.file).map_err(|source| SnapshotError::Volume {
            name: v.name.clone(),
            what: "cannot read its file's status",
            source,
        })?;
        if let Some(why) = state.file.change(&now) {
            return Err(SnapshotError::VolumeChanged { path: path.display().to_string(), name: v.name.clone(), why });
        }
    }
    Ok(())
}
