//! A virtio-mmio device's transport state as a snapshot keeps it: what the driver negotiated and where its queues
//! are and how far each has gone. The rings themselves are in guest memory, which the snapshot keeps anyway.

use super::{MmioTransport, VirtioDevice, STATUS_DRIVER_OK};
use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub status: u32,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueState>,
}

fn split(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn save(&self) -> TransportState {
        TransportState {
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .map(|q| QueueState {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                    event_idx: q.event_idx_enabled(),
                })
                .collect(),
        }
    }

    /// Puts a new device's transport where `state` says, as if its driver had set it up so; an error (nothing
    /// usable) for a state this device cannot have had: more queues, a queue larger than it offers, features it does
    /// not offer.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        if state.queues.len() != self.queues.len() {
            return Err(format!("{} queues, where the device has {}", state.queues.len(), self.queues.len()));
        }
        if state.driver_features & !self.device.features() != 0 {
            return Err(format!("features {:#x} the device does not offer", state.driver_features));
        }
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            if s.size > q.max_size() {
                return Err(format!("a queue of {} entries, where the device has at most {}", s.size, q.max_size()));
            }
            q.set_size(s.size);
            let (low, high) = split(s.desc_table);
            q.set_desc_table_address(low, high);
            let (low, high) = split(s.avail_ring);
            q.set_avail_ring_address(low, high);
            let (low, high) = split(s.used_ring);
            q.set_used_ring_address(low, high);
            q.set_next_avail(s.next_avail);
            q.set_next_used(s.next_used);
            q.set_event_idx(s.event_idx);
            q.set_ready(s.ready);
        }
        self.status = state.status;
        self.driver_features = state.driver_features;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.device.activate(self.driver_features);
        }
        Ok(())
    }
}
