//! virtio-blk over a host file (a volume): one request queue; each request is a chain of a 16-byte header (type,
//! sector), data buffers and a one-byte status. Every request is checked before the file is touched: the header and
//! status descriptors' lengths and directions, data buffers of the direction the type needs, whole sectors, at most
//! [`MAX_REQUEST`] bytes, inside the file. A request that fails a check gets VIRTIO_BLK_S_IOERR (or, with no status
//! byte to write, or a chain that loops, is returned unused) and is counted; nothing the guest sends reaches the file
//! unchecked. A queue the guest broke (an available index too far ahead, a head outside the descriptor table) stops the VM with why.
//!
//! Requests are handled in ring order before the notification's exit returns, so a FLUSH after writes in one batch
//! covers them. FLUSH is `fdatasync` on the host file: once the guest sees its status, the bytes are on the host's
//! disk.

use super::{collect_chain, give_back, next_chain, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::snapshot::volume::Stamp;
use std::fs::File;
use std::os::unix::fs::FileExt;
use virtio_queue::{desc::split::Descriptor, Queue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const DEVICE_TYPE: u32 = 2;
pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR: u64 = 512;
/// Most data bytes one request may move (the guest driver stays below; more is refused, not split).
pub const MAX_REQUEST: usize = 1 << 20;
const HEADER_LEN: u32 = 16;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Descriptors one request may chain: a queue's worth. virtio-queue follows indirect tables (never offered here) of
/// up to 65,535 descriptors, which must not size what the host collects.
const MAX_CHAIN: usize = QUEUE_SIZE as usize;
/// VIRTIO_BLK_ID_BYTES.
const ID_LEN: usize = 20;

/// What the device did, for `--stats` and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Queue notifications (each one a VM exit).
    pub notifications: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests refused as malformed, or failed by the host file.
    pub errors: u64,
}

pub struct Blk {
    file: File,
    id: String,
    capacity_sectors: u64,
    buffer: Vec<u8>,
    /// The descriptors of the request at hand (kept between requests).
    descs: Vec<Descriptor>,
    pub stats: BlkStats,
    /// Why the device stopped: the guest broke its queue (an available index too far ahead, a head no request can
    /// be returned to), so nothing more it queues can be answered.
    fault: Option<String>,
    /// The file as the last snapshot saw it, until the next write (`snapshot::volume`).
    stamp: Stamp,
}

/// Why a request failed; its status byte.
struct Refused(u8);

impl Blk {
    /// A device over `file`, whose length (whole sectors of it) is the capacity; `id` is what GET_ID answers.
    pub fn new(file: File, id: &str) -> std::io::Result<Blk> {
        let capacity_sectors = file.metadata()?.len() / SECTOR;
        Ok(Blk {
            file,
            id: id.to_string(),
            capacity_sectors,
            buffer: Vec::new(),
            descs: Vec::new(),
            stats: BlkStats::default(),
            fault: None,
            stamp: Stamp::default(),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    /// The volume's host file and what a snapshot leaves in the device (see [`Stamp`]).
    pub(crate) fn file_and_stamp(&mut self) -> (&File, &mut Stamp) {
        (&self.file, &mut self.stamp)
    }

    /// Handles every request the driver queued; whether any went back to it. A broken queue stops the device, with
    /// the reason in [`Blk::fault`].
    pub fn process(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while self.fault.is_none() {
            let chain = match next_chain(queue, mem) {
                Ok(chain) => chain,
                Err(why) => {
                    self.fault = Some(why);
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut descs = std::mem::take(&mut self.descs);
            let written = if collect_chain(chain, MAX_CHAIN, &mut descs) {
                self.request(&descs, mem)
            } else {
                self.stats.errors += 1;
                0
            };
            self.descs = descs;
            if let Err(e) = give_back(queue, mem, head, written) {
                self.stats.errors += 1;
                self.fault = Some(format!("request {head} cannot be returned ({e})"));
                break;
            }
            used = true;
        }
        used
    }

    /// Why the device stopped, if the guest broke its queue.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// One request: the bytes written into the guest's buffers (data and status).
    fn request(&mut self, descs: &[Descriptor], mem: &GuestMemoryMmap) -> u32 {
        let status = descs.last().filter(|d| descs.len() >= 2 && d.is_write_only() && d.len() >= 1);
        let header = descs.first().filter(|d| !d.is_write_only() && d.len() >= HEADER_LEN);
        let (Some(status), Some(header)) = (status, header) else {
            self.stats.errors += 1;
            return 0;
        };
        let mut raw = [0u8; HEADER_LEN as usize];
        let (code, data_written) = match mem.read_slice(&mut raw, header.addr()) {
            Err(_) => (S_IOERR, 0),
            Ok(()) => {
                let kind = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
                let sector = u64::from_le_bytes(raw[8..].try_into().expect("8 bytes"));
                match self.execute(kind, sector, &descs[1..descs.len() - 1], mem) {
                    Ok(n) => (S_OK, n),
                    Err(Refused(code)) => (code, 0),
                }
            }
        };
        if code != S_OK {
            self.stats.errors += 1;
        }
        match mem.write_obj(code, status.addr()) {
            Ok(()) => data_written + 1,
            Err(_) => data_written,
        }
    }

    fn execute(&mut self, kind: u32, sector: u64, data: &[Descriptor], mem: &GuestMemoryMmap) -> Result<u32, Refused> {
        match kind {
            T_IN | T_OUT => {
                let device_writes = kind == T_IN;
                let len = self.check_data(sector, data, device_writes)?;
                let offset = sector * SECTOR;
                self.buffer.resize(len, 0);
                if device_writes {
                    self.file.read_exact_at(&mut self.buffer, offset).map_err(|_| Refused(S_IOERR))?;
                    scatter(&self.buffer, data, mem)?;
                    self.stats.reads += 1;
                    self.stats.bytes_read += len as u64;
                    Ok(len as u32)
                } else {
                    gather(&mut self.buffer, data, mem)?;
                    self.file.write_all_at(&self.buffer, offset).map_err(|_| Refused(S_IOERR))?;
                    self.stamp.after_write(&self.file);
                    self.stats.writes += 1;
                    self.stats.bytes_written += len as u64;
                    Ok(0)
                }
            }
            T_FLUSH => {
                if !data.is_empty() {
                    return Err(Refused(S_IOERR));
                }
                self.file.sync_data().map_err(|_| Refused(S_IOERR))?;
                self.stats.flushes += 1;
                Ok(0)
            }
            T_GET_ID => {
                let [d] = data else { return Err(Refused(S_IOERR)) };
                if !d.is_write_only() {
                    return Err(Refused(S_IOERR));
                }
                let mut id = [0u8; ID_LEN];
                let n = self.id.len().min(ID_LEN);
                id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
                let n = (d.len() as usize).min(ID_LEN);
                mem.write_slice(&id[..n], d.addr()).map_err(|_| Refused(S_IOERR))?;
                Ok(n as u32)
            }
            _ => Err(Refused(S_UNSUPP)),
        }
    }

    /// The data bytes of a read or write: every buffer of the right direction, whole sectors, within the limit and
    /// the device.
    fn check_data(&self, sector: u64, data: &[Descriptor], device_writes: bool) -> Result<usize, Refused> {
        let mut len = 0usize;
        for d in data {
            if d.is_write_only() != device_writes {
                return Err(Refused(S_IOERR));
            }
            len += d.len() as usize;
            if len > MAX_REQUEST {
                return Err(Refused(S_IOERR));
            }
        }
        if len == 0 || !(len as u64).is_multiple_of(SECTOR) {
            return Err(Refused(S_IOERR));
        }
        let end = sector.checked_add(len as u64 / SECTOR).ok_or(Refused(S_IOERR))?;
        if end > self.capacity_sectors {
            return Err(Refused(S_IOERR));
        }
        Ok(len)
    }
}

/// Copies `bytes` into the guest buffers `data`, in order.
fn scatter(bytes: &[u8], data: &[Descriptor], mem: &GuestMemoryMmap) -> Result<(), Refused> {
    let mut at = 0;
    for d in data {
        let n = d.len() as usize;
        mem.write_slice(&bytes[at..at + n], d.addr()).map_err(|_| Refused(S_IOERR))?;
        at += n;
    }
    Ok(())
}

/// Copies the guest buffers `data`, in order, into `bytes`.
fn gather(bytes: &mut [u8], data: &[Descriptor], mem: &GuestMemoryMmap) -> Result<(), Refused> {
    let mut at = 0;
    for d in data {
        let n = d.len() as usize;
        mem.read_slice(&mut bytes[at..at + n], GuestAddress(d.addr().0)).map_err(|_| Refused(S_IOERR))?;
        at += n;
    }
    Ok(())
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: capacity (in sectors) first; nothing else is offered.
        let config = self.capacity_sectors.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, _features: u64) {}

    fn notify(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        self.stats.notifications += 1;
        if let Some(q) = queues.get_mut(index) {
            self.process(q, mem);
        }
    }

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{desc, mem, start, NEXT, WRITE};
    use crate::virtio::MmioTransport;
    use virtio_queue::mock::MockSplitQueue;

    const HDR: u64 = 0x3_0000;
    const DATA: u64 = 0x4_0000;
    const STATUS: u64 = 0x5_0000;

    /// A device over a fresh 64 KiB file, its queue set up through the registers as a driver would.
    fn device(mem: &GuestMemoryMmap) -> (MmioTransport<Blk>, MockSplitQueue<'_, GuestMemoryMmap>, File) {
        let path =
            std::env::temp_dir().join(format!("kiln-blk-{}-{:?}", std::process::id(), std::thread::current().id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(64 << 10).unwrap();
        let q = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let t = start(Blk::new(file.try_clone().unwrap(), "vol").unwrap(), &[&q], mem);
        (t, q, file)
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap, at: u64) -> u8 {
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn notify(t: &mut MmioTransport<Blk>, mem: &GuestMemoryMmap) {
        t.write(0x50, &0u32.to_le_bytes(), mem);
    }

    #[test]
    fn writes_reach_the_file_and_read_back_with_a_flush_between() {
        let mem = mem();
        let (mut t, q, file) = device(&mem);
        let mut capacity = [0u8; 8];
        t.read(0x100, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 128);
        mem.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
        header(&mem, HDR, T_OUT, 4);
        header(&mem, HDR + 16, T_FLUSH, 0);
        header(&mem, HDR + 32, T_IN, 4);
        q.add_desc_chains(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 1024, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
                desc(HDR + 16, 16, NEXT, 4),
                desc(STATUS + 1, 1, WRITE, 0),
                desc(HDR + 32, 16, NEXT, 6),
                desc(DATA + 0x1000, 1024, WRITE | NEXT, 7),
                desc(STATUS + 2, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        mem.write_slice(&[0xff; 3], GuestAddress(STATUS)).unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 3, "one notification handles the whole batch");
        assert_eq!([status(&mem, STATUS), status(&mem, STATUS + 1), status(&mem, STATUS + 2)], [S_OK; 3]);
        let mut on_disk = [0u8; 1024];
        file.read_exact_at(&mut on_disk, 4 * 512).unwrap();
        assert_eq!(on_disk, [0x5a; 1024]);
        let mut back = [0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(DATA + 0x1000)).unwrap();
        assert_eq!(back, [0x5a; 1024]);
        let s = t.device.stats;
        assert_eq!((s.writes, s.flushes, s.reads, s.errors, s.notifications), (1, 1, 1, 0, 1));
    }

    #[test]
    fn bad_requests_get_an_error_status_and_leave_the_file_alone() {
        let mem = mem();
        let (mut t, q, file) = device(&mem);
        mem.write_slice(&[0x77; 4096], GuestAddress(DATA)).unwrap();
        header(&mem, HDR, T_OUT, 127); // two sectors from the last one: past the end
        header(&mem, HDR + 16, T_OUT, 0); // a device-writable buffer for a write
        header(&mem, HDR + 32, T_OUT, 0); // not whole sectors
        header(&mem, HDR + 48, 99, 0); // unknown type
        header(&mem, HDR + 64, T_OUT, u64::MAX); // sector arithmetic that overflows
        q.add_desc_chains(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 1024, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
                desc(HDR + 16, 16, NEXT, 4),
                desc(DATA, 512, WRITE | NEXT, 5),
                desc(STATUS + 1, 1, WRITE, 0),
                desc(HDR + 32, 16, NEXT, 7),
                desc(DATA, 100, NEXT, 8),
                desc(STATUS + 2, 1, WRITE, 0),
                desc(HDR + 48, 16, NEXT, 10),
                desc(STATUS + 3, 1, WRITE, 0),
                desc(HDR + 64, 16, NEXT, 12),
                desc(DATA, 512, NEXT, 13),
                desc(STATUS + 4, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 5);
        let codes: Vec<u8> = (0..5).map(|i| status(&mem, STATUS + i)).collect();
        assert_eq!(codes, [S_IOERR, S_IOERR, S_IOERR, S_UNSUPP, S_IOERR]);
        assert_eq!(t.device.stats.errors, 5);
        assert_eq!(t.device.stats.writes, 0);
        let mut whole = vec![0u8; 64 << 10];
        file.read_exact_at(&mut whole, 0).unwrap();
        assert!(whole.iter().all(|&b| b == 0));
    }

    #[test]
    fn oversized_requests_and_buffers_outside_guest_memory_are_refused() {
        let mem = mem();
        let (mut t, q, file) = device(&mem);
        mem.write_slice(&[0x66; 4096], GuestAddress(DATA)).unwrap();
        for (i, at) in (0..4).map(|i| (i, HDR + 16 * i)) {
            header(&mem, at, if i == 2 { T_IN } else { T_OUT }, 0);
        }
        // Two buffers of 2 GiB: their sum must size no allocation (virtio-queue ends a chain past 4 GiB itself).
        q.add_desc_chains(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(DATA, 0x7fff_fe00, NEXT, 2),
                desc(DATA, 0x7fff_fe00, NEXT, 3),
                desc(STATUS, 1, WRITE, 0),
                desc(HDR + 16, 16, NEXT, 5),
                desc(DATA, (MAX_REQUEST + 512) as u32, NEXT, 6),
                desc(STATUS + 1, 1, WRITE, 0),
                desc(HDR + 32, 16, NEXT, 8),
                desc(1 << 40, 512, WRITE | NEXT, 9),
                desc(STATUS + 2, 1, WRITE, 0),
                desc(HDR + 48, 16, NEXT, 11),
                desc((1 << 20) - 256, 512, NEXT, 12), // straddles the end of guest memory
                desc(u64::MAX - 100, 512, NEXT, 13),  // an address whose end wraps
                desc(STATUS + 3, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 4);
        let codes: Vec<u8> = (0..4).map(|i| status(&mem, STATUS + i)).collect();
        assert_eq!(codes, [S_IOERR; 4]);
        assert_eq!((t.device.stats.errors, t.device.stats.writes), (4, 0));
        assert!(t.device.buffer.capacity() <= MAX_REQUEST, "no guest-sized allocation");
        let mut whole = vec![0u8; 64 << 10];
        file.read_exact_at(&mut whole, 0).unwrap();
        assert!(whole.iter().all(|&b| b == 0), "nothing reached the file");
    }

    #[test]
    fn get_id_answers_the_volume_name_within_the_buffer() {
        let mem = mem();
        let (mut t, q, _) = device(&mem);
        header(&mem, HDR, T_GET_ID, 0);
        mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
        q.add_desc_chains(&[desc(HDR, 16, NEXT, 1), desc(DATA, 2, WRITE | NEXT, 2), desc(STATUS, 1, WRITE, 0)], 0)
            .unwrap();
        notify(&mut t, &mem);
        assert_eq!(status(&mem, STATUS), S_OK);
        let mut id = [0u8; 4];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"vo\xee\xee", "two bytes asked for, two written");
    }

    #[test]
    fn a_chain_longer_than_a_queue_is_refused_unread() {
        let mem = mem();
        let (mut t, q, file) = device(&mem);
        const TABLE: u64 = 0x6_0000;
        // A header, 288 buffers of 16 bytes (nine sectors, within the device) and a status: 290 descriptors.
        const LEN: u16 = 290;
        header(&mem, HDR, T_OUT, 0);
        mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
        for i in 0..LEN {
            let d = match i {
                0 => desc(HDR, 16, NEXT, 1),
                _ if i == LEN - 1 => desc(STATUS, 1, WRITE, 0),
                _ => desc(DATA, 16, NEXT, i + 1),
            };
            mem.write_obj(d, GuestAddress(TABLE + 16 * u64::from(i))).unwrap();
        }
        const INDIRECT: u16 = 4;
        q.add_desc_chains(&[desc(TABLE, 16 * u32::from(LEN), INDIRECT, 0)], 0).unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 1, "returned");
        assert_eq!((t.device.stats.errors, t.device.stats.writes), (1, 0));
        let mut first = [0u8; 512];
        file.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(first, [0; 512], "nothing reached the file");
    }

    #[test]
    fn a_looping_chain_is_refused_untouched() {
        let mem = mem();
        let (mut t, q, _) = device(&mem);
        header(&mem, HDR, T_IN, 0);
        mem.write_slice(&[0x42; 1024], GuestAddress(DATA)).unwrap();
        // A read whose buffers point back at each other: walked as far as virtio-queue goes (a queue's worth), it
        // would look like a read of 14 sectors into two buffers, the last taken for the status.
        q.add_desc_chains(
            &[desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 2), desc(DATA + 512, 512, WRITE | NEXT, 1)],
            0,
        )
        .unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 1, "returned");
        assert_eq!((t.device.stats.errors, t.device.stats.reads), (1, 0));
        let mut data = [0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert_eq!(data, [0x42; 1024], "nothing written into the buffers");
    }

    #[test]
    fn an_available_index_too_far_ahead_stops_the_device() {
        let mem = mem();
        let (mut t, q, _) = device(&mem);
        q.avail().idx().store(17);
        notify(&mut t, &mem);
        assert!(t.device.fault().is_some_and(|f| f.contains("available ring")), "{:?}", t.device.fault());
        assert_eq!(q.used().idx().load(), 0);
    }

    #[test]
    fn a_head_outside_the_descriptor_table_stops_the_device() {
        let mem = mem();
        let (mut t, q, _) = device(&mem);
        header(&mem, HDR, T_FLUSH, 0);
        q.add_desc_chains(&[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)], 0).unwrap();
        q.avail().ring().ref_at(0).unwrap().store(999);
        notify(&mut t, &mem);
        assert!(t.device.fault().is_some_and(|f| f.contains("request 999")), "{:?}", t.device.fault());
        assert_eq!(q.used().idx().load(), 0);
    }

    #[test]
    fn chains_without_a_header_or_status_are_returned_unused() {
        let mem = mem();
        let (mut t, q, _) = device(&mem);
        q.add_desc_chains(
            &[
                desc(HDR, 16, 0, 0),           // a header alone
                desc(HDR, 8, NEXT, 2),         // a header too short
                desc(STATUS, 1, WRITE, 0),     //
                desc(HDR, 16, NEXT, 4),        // a read-only status
                desc(STATUS, 1, 0, 0),         //
                desc(1 << 40, 16, NEXT, 6),    // a header outside guest memory
                desc(STATUS + 3, 1, WRITE, 0), //
            ],
            0,
        )
        .unwrap();
        notify(&mut t, &mem);
        assert_eq!(q.used().idx().load(), 4);
        assert_eq!(t.device.stats.errors, 4);
        assert_eq!(status(&mem, STATUS + 3), S_IOERR);
    }
}
