//! The snapshot file: a header (magic, format version, where the state and RAM lie, the state's SHA-256), the state as
//! JSON, and guest RAM from a 2 MiB boundary to the end of the file, written only where the guest has data (the file
//! is sparse: `du` counts what was written). Every field is checked against the file's real length before anything
//! is allocated or mapped from it.

use super::{io_err, MachineState, SnapshotError, Written};
use crate::memory::GuestRam;
use kiln_abi::layout::{HUGE_PAGE_SIZE, PAGE_SIZE};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"KILNSNAP";
pub const FORMAT_VERSION: u32 = 1;
/// The header's fixed fields; the state starts at [`STATE_OFFSET`].
const HEADER_LEN: usize = 72;
const STATE_OFFSET: u64 = 4096;
/// Largest state section read (a VM of 64 vCPUs needs well under 2 MiB).
const MAX_STATE: u64 = 16 << 20;
/// RAM is read and written in pieces of this size.
const CHUNK: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub state_len: u64,
    pub memory_offset: u64,
    pub memory_len: u64,
    pub state_sha256: [u8; 32],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.state_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.memory_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.memory_len.to_le_bytes());
        b[40..72].copy_from_slice(&self.state_sha256);
        b
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and checks the header of `file` (whose name is `path`, for messages) against its length.
pub fn read_header(file: &File, path: &Path) -> Result<Header, SnapshotError> {
    let shown = path.display().to_string();
    let not = |why: String| SnapshotError::NotASnapshot { path: shown.clone(), why };
    let damaged = |why: String| SnapshotError::Damaged { path: shown.clone(), why };
    let len = file.metadata().map_err(io_err(path, "cannot read its size"))?.len();
    if len < HEADER_LEN as u64 {
        return Err(not(format!("it is {len} bytes, shorter than a snapshot's header")));
    }
    let mut b = [0u8; HEADER_LEN];
    file.read_exact_at(&mut b, 0).map_err(io_err(path, "cannot read its header"))?;
    if b[..8] != MAGIC {
        return Err(not("it does not start with KILNSNAP".into()));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { path: shown, found: version });
    }
    let header = Header {
        version,
        state_len: u64_at(&b, 16),
        memory_offset: u64_at(&b, 24),
        memory_len: u64_at(&b, 32),
        state_sha256: b[40..72].try_into().expect("32 bytes"),
    };
    if header.state_len == 0 || header.state_len > MAX_STATE {
        return Err(damaged(format!("its state section is said to be {} bytes", header.state_len)));
    }
    if !header.memory_offset.is_multiple_of(HUGE_PAGE_SIZE)
        || header.memory_offset < STATE_OFFSET + header.state_len
        || header.memory_len == 0
        || !header.memory_len.is_multiple_of(PAGE_SIZE)
    {
        return Err(damaged("its header's layout is impossible".into()));
    }
    match header.memory_offset.checked_add(header.memory_len) {
        Some(end) if end == len => Ok(header),
        Some(end) => Err(damaged(format!("it is {len} bytes, but its header says {end} (cut short or appended to)"))),
        None => Err(damaged("its header's memory size overflows".into())),
    }
}

/// Reads the state section `header` describes, checked against its digest.
pub(crate) fn read_state(file: &File, path: &Path, header: &Header) -> Result<MachineState, SnapshotError> {
    let damaged = |why: String| SnapshotError::Damaged { path: path.display().to_string(), why };
    // Bounded by MAX_STATE and by the file's length (read_header).
    let mut state = vec![0u8; header.state_len as usize];
    file.read_exact_at(&mut state, STATE_OFFSET).map_err(io_err(path, "cannot read its state"))?;
    if Sha256::digest(&state)[..] != header.state_sha256 {
        return Err(damaged("its state does not match its digest".into()));
    }
    let machine: MachineState =
        serde_json::from_slice(&state).map_err(|e| damaged(format!("its state does not parse ({e})")))?;
    if machine.memory != header.memory_len {
        return Err(damaged(format!(
            "its state says {} bytes of RAM, its header {}",
            machine.memory, header.memory_len
        )));
    }
    Ok(machine)
}

/// Writes a snapshot of `state` and the `touched` ranges of `ram` to `path`, through a temporary file beside it that
/// is renamed over `path` once complete: a failed snapshot leaves nothing half-written.
pub(crate) fn write(
    path: &Path,
    state: &MachineState,
    ram: &GuestRam,
    touched: &[Range<u64>],
) -> Result<Written, SnapshotError> {
    let json = serde_json::to_vec(state).expect("the machine state serialises");
    let memory_offset = (STATE_OFFSET + json.len() as u64).next_multiple_of(HUGE_PAGE_SIZE);
    let header = Header {
        version: FORMAT_VERSION,
        state_len: json.len() as u64,
        memory_offset,
        memory_len: ram.size(),
        state_sha256: Sha256::digest(&json).into(),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(path, "cannot create the snapshot file"))?;
        let len = memory_offset + ram.size();
        file.set_len(len).map_err(io_err(path, "cannot size the snapshot file"))?;
        file.write_all_at(&header.encode(), 0).map_err(io_err(path, "cannot write the snapshot"))?;
        file.write_all_at(&json, STATE_OFFSET).map_err(io_err(path, "cannot write the snapshot"))?;
        let memory_bytes =
            write_ram(&file, memory_offset, ram, touched).map_err(io_err(path, "cannot write the snapshot"))?;
        file.sync_data().map_err(io_err(path, "cannot write the snapshot to disk"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "cannot put the snapshot in place"))?;
        Ok(Written { memory_bytes, file_len: len })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes the pages of `touched` that are not all zero; returns how many bytes.
fn write_ram(file: &File, offset: u64, ram: &GuestRam, touched: &[Range<u64>]) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut written = 0;
    for range in touched {
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(CHUNK);
            let chunk = &mut buf[..n as usize];
            ram.read(at, chunk).map_err(|e| std::io::Error::other(e.to_string()))?;
            // Runs of pages with data, written one pwrite each.
            let mut run: Option<usize> = None;
            let pages = chunk.len() / PAGE_SIZE as usize;
            for page in 0..=pages {
                let data = page < pages && {
                    let p = &chunk[page * PAGE_SIZE as usize..(page + 1) * PAGE_SIZE as usize];
                    p.iter().any(|&b| b != 0)
                };
                match (data, run) {
                    (true, None) => run = Some(page),
                    (false, Some(first)) => {
                        let bytes = &chunk[first * PAGE_SIZE as usize..page * PAGE_SIZE as usize];
                        file.write_all_at(bytes, offset + at + (first as u64) * PAGE_SIZE)?;
                        written += bytes.len() as u64;
                        run = None;
                    }
                    _ => {}
                }
            }
            at += n;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::MachineState;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kiln-snapfile-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(crate) fn machine(memory: u64) -> MachineState {
        let boot: crate::boot::BootState = serde_json::from_value(serde_json::json!({
            "pml4": 4096, "boot_info_phys": 0, "gdt_phys": 0, "vcpus": [], "stats_phys": 0, "threads_phys": 0,
            "first_instruction": 0, "stack_bottom": 0, "host_signals_phys": 0, "fault_entry": 0,
            "kernel_span": {"start": 0, "end": 0}, "vdso_code": [],
            "program": {"base": 0, "entry": 0, "phdr": 0, "end": 0, "break_mapped_end": 0,
                        "stubs": {"start": 0, "end": 0},
                        "report": {"relocated": [], "red_zone": [], "in_place": [], "unsafe_sites": []},
                        "dynamic": null},
            "rootfs": {"phys": 0, "len": 0}, "auxv": []
        }))
        .unwrap();
        MachineState {
            memory,
            host: crate::arch::HostKind::Paravirtual,
            tsc_hz: 1,
            guest_tsc: 2,
            taken_unix_ns: 3,
            trace_syscalls: false,
            boot,
            vcpus: Vec::new(),
            net: None,
            volumes: Vec::new(),
            core_program: Default::default(),
            launch: serde_json::json!({"name": "web"}),
            cpuid: None,
        }
    }

    #[test]
    fn a_snapshot_reads_back_and_is_sparse() {
        let d = dir();
        let path = d.join("snap");
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write(PAGE_SIZE, b"hello").unwrap();
        ram.write(5 << 20, b"world").unwrap();
        // A touched page of zeros is left out.
        let touched = [0..2 * PAGE_SIZE, (5 << 20)..(5 << 20) + PAGE_SIZE];
        let written = write(&path, &machine(8 << 20), &ram, &touched).unwrap();
        assert_eq!(written.memory_bytes, 2 * PAGE_SIZE);
        let file = File::open(&path).unwrap();
        let header = read_header(&file, &path).unwrap();
        let state = read_state(&file, &path, &header).unwrap();
        assert_eq!((state.memory, state.launch["name"].as_str()), (8 << 20, Some("web")));
        let mut word = [0u8; 5];
        file.read_exact_at(&mut word, header.memory_offset + (5 << 20)).unwrap();
        assert_eq!(&word, b"world");
        use std::os::unix::fs::MetadataExt;
        let on_disk = file.metadata().unwrap().blocks() * 512;
        assert!(on_disk < 1 << 20, "{on_disk} bytes on disk for 8 KiB of data");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let d = dir();
        let path = d.join("snap");
        let ram = GuestRam::new(4 << 20).unwrap();
        write(&path, &machine(4 << 20), &ram, &[]).unwrap();
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8]| {
            let p = d.join("bad");
            std::fs::write(&p, bytes).unwrap();
            let f = File::open(&p).unwrap();
            read_header(&f, &p).and_then(|h| read_state(&f, &p, &h)).unwrap_err().to_string()
        };
        assert!(check(b"short").contains("shorter than a snapshot's header"));
        assert!(check(&[b'x'; 4096]).contains("does not start with KILNSNAP"));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(check(&v2).contains("format version 2"));
        assert!(check(&good[..good.len() - 4096]).contains("cut short"));
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&huge).contains("state section is said to be"));
        let mut flipped = good.clone();
        flipped[STATE_OFFSET as usize + 3] ^= 1;
        assert!(check(&flipped).contains("does not match its digest"));
        let mut sized = good;
        sized[32..40].copy_from_slice(&(u64::MAX - 4095).to_le_bytes());
        assert!(check(&sized).contains("overflows"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
