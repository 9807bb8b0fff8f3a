//! A volume at run time: the virtio-blk device over its host file behind its register window. vCPUs' MMIO exits
//! program it and notify its queue; the requests are handled on the notifying vCPU's thread before it resumes, so
//! the guest finds them done in the used ring without an interrupt.

use crate::snapshot::volume::{FileIdentity, VolumeState};
use crate::snapshot::SnapshotError;
use crate::virtio::blk::{Blk, BlkStats};
use crate::virtio::state::TransportState;
use crate::virtio::MmioTransport;
use kiln_abi::boot::BLK_MMIO_SIZE;
use std::fs::File;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError};
use vm_memory::GuestMemoryMmap;

/// What the VMM attaches: the volume's file, opened read-write (and locked by the caller for the VM's lifetime),
/// its name, and where the library OS mounts it.
#[derive(Debug)]
pub struct VolumeConfig {
    pub file: File,
    pub name: String,
    pub mount: String,
}

pub struct Disk {
    window: Range<u64>,
    device: Mutex<MmioTransport<Blk>>,
}

impl Disk {
    pub fn new(blk: Blk, mmio_phys: u64) -> Disk {
        Disk { window: mmio_phys..mmio_phys + BLK_MMIO_SIZE, device: Mutex::new(MmioTransport::new(blk)) }
    }

    fn device(&self) -> MutexGuard<'_, MmioTransport<Blk>> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn claims(&self, addr: u64) -> bool {
        self.window.contains(&addr)
    }

    pub fn read(&self, addr: u64, data: &mut [u8]) {
        self.device().read(addr - self.window.start, data);
    }

    /// A vCPU's write to the registers (a queue notification handles the queued requests); an error says how the
    /// guest broke the queue, and the VM should stop.
    pub fn write(&self, addr: u64, data: &[u8], mem: &GuestMemoryMmap) -> Result<(), String> {
        let mut device = self.device();
        device.write(addr - self.window.start, data, mem);
        device.device.fault().map_or(Ok(()), |why| Err(why.to_string()))
    }

    /// The device as a snapshot keeps it (every vCPU holds, so none is notifying it, and no request is in flight:
    /// each is done within its notification): its queues, and its file's identity once what the guest wrote is on
    /// the host's disk. A write after this moves the file's identity on ([`crate::snapshot::volume::Stamp`]).
    pub(crate) fn snapshot(&self, name: &str) -> Result<VolumeState, SnapshotError> {
        let mut device = self.device();
        if let Some(why) = device.device.fault() {
            return Err(SnapshotError::Unsupported(format!("volume {name}'s device stopped: {why}")));
        }
        let transport = device.save();
        let (file, stamp) = device.device.file_and_stamp();
        let failed = |what| move |source| SnapshotError::Volume { name: name.to_string(), what, source };
        file.sync_data().map_err(failed("cannot write what the guest wrote to the host's disk"))?;
        let identity = FileIdentity::of(file).map_err(failed("cannot read its file's status"))?;
        stamp.set(&identity);
        Ok(VolumeState { name: name.to_string(), file: identity, transport })
    }

    /// Puts a new device's transport where a snapshot's `state` says.
    pub(crate) fn restore(&self, state: &TransportState) -> Result<(), String> {
        self.device().restore(state)
    }

    pub fn stats(&self) -> BlkStats {
        self.device().device.stats
    }
}
