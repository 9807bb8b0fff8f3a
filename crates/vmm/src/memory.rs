//! Guest RAM: anonymous `MAP_NORESERVE` host memory (a page costs the host only once touched), reached only through
//! vm-memory's checked accessors, plus the boot-time frame allocator that lays out everything the VMM puts in it.
//!
//! The host mapping starts on a 2 MiB boundary, so that guest-physical and host-virtual addresses agree modulo 2 MiB:
//! with [`HugePages::Yes`] it is also `MADV_HUGEPAGE`, and then a 2 MiB guest page (the direct map) behind a host
//! transparent huge page costs one shadow fault instead of 512 (`probes/first-touch.c`), for 2 MiB of host memory
//! as soon as any byte of it is touched.

use kiln_abi::layout::{page_align_up, HUGE_PAGE_SIZE, PAGE_SIZE};
use kiln_abi::paging::{FrameSource, PhysMemory};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Whether guest RAM is backed by the host's transparent huge pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePages {
    Yes,
    No,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot reserve {size} bytes of guest memory")]
    Reserve {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory access at {addr:#x} (+{len}) is outside guest RAM")]
    OutOfRange { addr: u64, len: u64 },
    #[error("guest memory is full: {needed} bytes were needed, {available} were left")]
    Full { needed: u64, available: u64 },
    #[error("cannot map a file into guest memory at {addr:#x}")]
    MapFile {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read a file into guest memory at {addr:#x}")]
    ReadFile {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make guest memory of the host mapping")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    #[error("cannot make guest memory of the host mapping")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

pub struct GuestRam {
    /// Declared before `host`: dropped (and so unused) before the mapping goes.
    mem: GuestMemoryMmap,
    host: HostMapping,
    size: u64,
    huge: HugePages,
}

/// The host mapping behind guest RAM, which vm-memory borrows (it unmaps only what it mapped itself).
struct HostMapping {
    addr: usize,
    len: usize,
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `GuestRam::new` and nothing uses it any more (vm-memory's view is gone).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

impl HostMapping {
    /// `size` bytes of anonymous, private, not-reserved memory starting on a 2 MiB boundary: a larger mapping is
    /// made, and what lies before the boundary and after the end is unmapped again.
    fn new_aligned(size: usize) -> std::io::Result<Self> {
        let align = HUGE_PAGE_SIZE as usize;
        let len = size.checked_add(align).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing: it aliases nothing.
        let raw = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let raw = raw as usize;
        let addr = raw.next_multiple_of(align);
        let (head, tail) = (addr - raw, len - (addr - raw) - size);
        // SAFETY: both ranges lie in the mapping just made, outside the part kept; nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((addr + size) as *mut libc::c_void, tail);
            }
        }
        Ok(Self { addr, len: size })
    }
}

impl GuestRam {
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        Self::with_huge_pages(size, HugePages::No)
    }

    pub fn with_huge_pages(size: u64, huge: HugePages) -> Result<Self, MemoryError> {
        let reserve = |source| MemoryError::Reserve { size, source };
        let bytes = usize::try_from(size).map_err(|_| reserve(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        let host = HostMapping::new_aligned(bytes).map_err(reserve)?;
        if huge == HugePages::Yes {
            // SAFETY: advice on the mapping just made, which this object owns. Where the host has THP disabled,
            // it fails and changes nothing: the memory stays in 4 KiB pages.
            unsafe { libc::madvise(host.addr as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: `host` is a mapping of exactly `bytes` bytes with these protections and flags, and it outlives
        // the region (`GuestRam` drops `mem` before `host`).
        let region =
            unsafe { MmapRegion::build_raw(host.addr as *mut u8, bytes, libc::PROT_READ | libc::PROT_WRITE, flags) }
                .map_err(MemoryError::Region)?;
        // At guest-physical 0, so nothing can overflow.
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| reserve(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(MemoryError::Regions)?;
        Ok(Self { mem, host, size, huge })
    }

    /// Whether the host backs this memory with transparent huge pages (asked for; THP may still be off).
    pub fn huge_pages(&self) -> HugePages {
        self.huge
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn inner(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Host address of guest-physical 0, for KVM_SET_USER_MEMORY_REGION.
    pub fn host_base(&self) -> u64 {
        self.host.addr as u64
    }

    fn check(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        match addr.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError::OutOfRange { addr, len }),
        }
    }

    /// Drops the host pages behind the page-aligned guest range `[addr, addr+len)`: it reads as zero afterwards and
    /// costs the host nothing until written (MADV_DONTNEED on private anonymous memory).
    pub fn discard(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        self.check(addr, len)?;
        let page = kiln_abi::layout::PAGE_SIZE;
        if !addr.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        if len == 0 {
            return Ok(());
        }
        let host = self.host_base() + addr;
        // SAFETY: [host, host+len) lies inside the guest RAM mapping (checked above), which this object owns; the
        // guest said it no longer uses it, and zero pages are what both sides expect there.
        let r = unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        Ok(())
    }

    /// Backs the page-aligned guest range at `addr` with `len` bytes of `file` from the page-aligned `offset`,
    /// privately (MAP_PRIVATE): the guest reads the file through the host's page cache, pages come in when touched,
    /// and a write makes a private copy of its page, never changing the file. The rest of the last page reads as
    /// zero. The range stays in the one memory slot, and in `--memory`: it replaces RAM, it adds none. Where `addr` and
    /// `offset` agree modulo 2 MiB, the host can map whole 2 MiB windows of the file with one entry each.
    pub fn map_file(&self, addr: u64, file: &std::fs::File, offset: u64, len: u64) -> Result<(), MemoryError> {
        let size = page_align_up(len);
        self.check(addr, size)?;
        if !addr.is_multiple_of(PAGE_SIZE) || !offset.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(MemoryError::OutOfRange { addr, len });
        }
        let host = self.host_base() + addr;
        // SAFETY: [host, host+size) lies inside the guest RAM mapping (checked above), which this object owns and
        // which no Rust reference points into (vm-memory's accessors copy); MAP_FIXED replaces those pages of it
        // with the file's, and the whole mapping, these pages included, is unmapped when the RAM is dropped.
        let mapped = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                std::os::fd::AsRawFd::as_raw_fd(file),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(MemoryError::MapFile { addr, source: std::io::Error::last_os_error() });
        }
        // SAFETY: advice on the mapping just made: where the file is not in the page cache yet, a fault reads it in
        // 2 MiB folios, which the host maps with 2 MiB entries (where the range is congruent to the file offset).
        unsafe { libc::madvise(host as *mut libc::c_void, size as usize, libc::MADV_HUGEPAGE) };
        Ok(())
    }

    /// Copies `len` bytes of `file`, from `offset`, into guest RAM at `addr`: read straight into guest memory, which
    /// stays this process's own (anonymous, in huge pages where the RAM has them).
    pub fn read_file(&self, addr: u64, file: &std::fs::File, offset: u64, len: u64) -> Result<(), MemoryError> {
        use std::io::{Seek, SeekFrom};
        self.check(addr, len)?;
        let read = |source| MemoryError::ReadFile { addr, source };
        let count = usize::try_from(len).map_err(|_| MemoryError::OutOfRange { addr, len })?;
        let mut file = file;
        file.seek(SeekFrom::Start(offset)).map_err(read)?;
        // One read may stop short (a signal, a huge range): it goes on from there, and only the file's end stops it.
        let mut done = 0;
        while done < count {
            let at = GuestAddress(addr + done as u64);
            let n = self.mem.read_volatile_from(at, &mut file, count - done).map_err(|e| match e {
                vm_memory::GuestMemoryError::IOError(e) => read(e),
                _ => MemoryError::OutOfRange { addr, len },
            })?;
            if n == 0 {
                return Err(read(std::io::ErrorKind::UnexpectedEof.into()));
            }
            done += n;
        }
        Ok(())
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.check(addr, bytes.len() as u64)?;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange { addr, len: bytes.len() as u64 })
    }

    pub fn read(&self, addr: u64, bytes: &mut [u8]) -> Result<(), MemoryError> {
        self.check(addr, bytes.len() as u64)?;
        self.mem
            .read_slice(bytes, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange { addr, len: bytes.len() as u64 })
    }

    pub fn read_vec(&self, addr: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(addr, len)?;
        let mut v = vec![0; len as usize];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    pub fn read_obj<T: vm_memory::ByteValued>(&self, addr: u64) -> Result<T, MemoryError> {
        self.check(addr, std::mem::size_of::<T>() as u64)?;
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange { addr, len: std::mem::size_of::<T>() as u64 })
    }

    pub fn write_obj<T: vm_memory::ByteValued>(&self, addr: u64, value: T) -> Result<(), MemoryError> {
        self.check(addr, std::mem::size_of::<T>() as u64)?;
        self.mem
            .write_obj(value, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange { addr, len: std::mem::size_of::<T>() as u64 })
    }
}

/// Page-table code reaches guest RAM through this; the page-table builder only touches frames it allocated, so an
/// access outside RAM is a VMM bug and panics.
impl PhysMemory for GuestRam {
    fn read_u64(&self, phys: u64) -> u64 {
        self.read_obj(phys).expect("page table frame inside guest RAM")
    }
    fn write_u64(&mut self, phys: u64, value: u64) {
        self.write_obj(phys, value).expect("page table frame inside guest RAM")
    }
}

/// Hands out guest-physical memory from the bottom of RAM while the VMM builds the boot layout. What it has not handed
/// out when the guest starts belongs to the library OS.
#[derive(Debug)]
pub struct BootAllocator {
    next: u64,
    end: u64,
}

impl BootAllocator {
    pub fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// `size` bytes, page-aligned, zero (guest RAM starts zeroed and nothing is handed out twice).
    pub fn alloc(&mut self, size: u64) -> Result<u64, MemoryError> {
        let size = kiln_abi::layout::page_align_up(size.max(1));
        let start = self.next;
        match start.checked_add(size) {
            Some(end) if end <= self.end => {
                self.next = end;
                Ok(start)
            }
            _ => Err(MemoryError::Full { needed: size, available: self.end.saturating_sub(start) }),
        }
    }

    /// `size` bytes from an address congruent to `vaddr` modulo 2 MiB, so that a mapping at `vaddr` can use 2 MiB
    /// pages for its 2 MiB-aligned parts. The pages skipped to get there (less than 2 MiB) stay unused.
    pub fn alloc_congruent(&mut self, size: u64, vaddr: u64) -> Result<u64, MemoryError> {
        let start = self.next;
        let skip = vaddr.wrapping_sub(start) & (HUGE_PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        self.next = start.saturating_add(skip).min(self.end);
        self.alloc(size).inspect_err(|_| self.next = start)
    }

    /// Leaves the pages up to the next 2 MiB boundary unused (or up to the end, if that comes first).
    pub fn skip_to_huge_boundary(&mut self) {
        self.next = self.next.next_multiple_of(HUGE_PAGE_SIZE).min(self.end);
    }

    pub fn next_free(&self) -> u64 {
        self.next
    }
}

impl FrameSource for BootAllocator {
    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        self.alloc(PAGE_SIZE).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congruent_allocations_skip_to_the_address_modulo_two_mib() {
        let mut a = BootAllocator::new(0x1000, 16 << 20);
        let phys = a.alloc_congruent(0x30_0000, 0x5555_5555_4000).unwrap();
        assert_eq!((phys % HUGE_PAGE_SIZE, a.next_free()), (0x15_4000, phys + 0x30_0000));
        assert_eq!(a.alloc_congruent(0x1000, 0x40_0000).unwrap(), 6 << 20);
        // Refused when the skip and the size do not fit, and nothing is taken.
        let next = a.next_free();
        assert!(a.alloc_congruent(12 << 20, 0).is_err());
        assert_eq!(a.next_free(), next);
        a.skip_to_huge_boundary();
        assert_eq!(a.next_free(), 8 << 20);
        a.skip_to_huge_boundary();
        assert_eq!(a.next_free(), 8 << 20, "on a boundary already");
    }

    #[test]
    fn allocator_is_page_granular_and_bounded() {
        let mut a = BootAllocator::new(0x1000, 0x5000);
        assert_eq!(a.alloc(1).unwrap(), 0x1000);
        assert_eq!(a.alloc(0x1001).unwrap(), 0x2000);
        assert!(matches!(a.alloc(0x2000), Err(MemoryError::Full { .. })));
        assert_eq!(a.alloc(0x1000).unwrap(), 0x4000);
    }

    /// Whether the host page behind guest-physical `addr` is resident.
    fn resident(ram: &GuestRam, addr: u64) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: one page inside the mapping `ram` owns; mincore only reports on it.
        let r = unsafe { libc::mincore((ram.host_base() + addr) as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec[0] & 1 != 0
    }

    #[test]
    fn huge_page_ram_is_aligned_and_discarding_part_of_it_gives_the_pages_back() {
        let ram = GuestRam::with_huge_pages(8 << 20, HugePages::Yes).unwrap();
        assert_eq!(ram.host_base() % HUGE_PAGE_SIZE, 0);
        for page in (0..8 << 20).step_by(4096) {
            ram.write(page, &[7]).unwrap();
        }
        let (at, len) = ((2 << 20) + 0x3000, 0x2000);
        ram.discard(at, len).unwrap();
        for (addr, kept) in [(at - 0x1000, true), (at, false), (at + 0x1000, false), (at + len, true)] {
            // Before the read, which maps the host's zero page.
            assert_eq!(resident(&ram, addr), kept, "{addr:#x}");
            assert_eq!(ram.read_vec(addr, 1).unwrap(), [if kept { 7 } else { 0 }], "{addr:#x}");
        }
    }

    #[test]
    fn ram_refuses_out_of_range_access() {
        let ram = GuestRam::new(0x10000).unwrap();
        ram.write(0xfff8, &[1; 8]).unwrap();
        assert!(ram.write(0xfff9, &[1; 8]).is_err());
        assert!(ram.read_vec(u64::MAX - 2, 8).is_err());
    }

    #[test]
    fn a_mapped_file_reads_through_and_writes_stay_private() {
        let path = std::env::temp_dir().join(format!("kiln-map-file-{}", std::process::id()));
        std::fs::write(&path, [b"x".repeat(4096), b"image".to_vec()].concat()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let ram = GuestRam::new(0x10000).unwrap();
        ram.write(0x3000, &[9; 8]).unwrap();
        ram.map_file(0x2000, &file, 4096, 5).unwrap();
        assert_eq!(ram.read_vec(0x2000, 6).unwrap(), b"image\0");
        assert_eq!(ram.read_vec(0x3000, 8).unwrap(), [9; 8], "only the file's pages are replaced");
        ram.write(0x2000, b"guest").unwrap();
        assert_eq!(ram.read_vec(0x2000, 5).unwrap(), b"guest");
        assert_eq!(&std::fs::read(&path).unwrap()[4096..], b"image", "the file is unchanged");
        assert!(ram.map_file(0xf000, &file, 4096, 0x2000).is_err(), "past the end of RAM");
        assert!(ram.map_file(0x2001, &file, 4096, 5).is_err(), "unaligned");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_read_into_ram_lands_at_its_address_and_a_short_file_is_an_error() {
        let path = std::env::temp_dir().join(format!("kiln-read-file-{}", std::process::id()));
        std::fs::write(&path, [b"x".repeat(4096), b"image".to_vec()].concat()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let ram = GuestRam::new(0x10000).unwrap();
        ram.read_file(0x2003, &file, 4096, 5).unwrap();
        assert_eq!(ram.read_vec(0x2002, 7).unwrap(), b"\0image\0");
        assert!(matches!(ram.read_file(0x2000, &file, 4096, 6), Err(MemoryError::ReadFile { .. })), "past its end");
        assert!(ram.read_file(0xfffe, &file, 0, 5).is_err(), "past the end of RAM");
        std::fs::remove_file(&path).unwrap();
    }
}
