//! Where a thread stopped in a syscall stands in the program's own code. A thread blocked in a relocated syscall site
//! resumes at the return address of its stub's `call` (the stub area after the program, which no symbol or unwind
//! table covers, so a debugger or unwinder shown that address is lost); its registers then are exactly those right
//! after the original `syscall`, since the stub moved the instructions after the site behind the call. So the
//! debugger is shown the instruction after the site, with the stack pointer the program had there.
//!
//! The map comes from the stub area as loaded: each stub's `call [entry slot]` and the `jmp` back that ends it, paired
//! in order with the relocated sites (the rewriter emits stubs in site order); if any pair does not fit, no map.

use super::memory;
use crate::memory::GuestRam;
use crate::rewrite::{RewriteReport, ENTRY_SLOT, RESTART_TABLE_OFFSET};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use std::collections::BTreeMap;

/// The largest stub area read (a program's has a stub of a few dozen bytes per site).
const MAX_STUB_AREA: u64 = 16 << 20;
/// A window (the instructions around a site moved to its stub) ends at most this far past the site.
const MAX_WINDOW_AFTER_SITE: u64 = 64;
/// A red-zone stub's call is made with %rsp this much lower than the program's.
const RED_ZONE: u64 = 128;
const SYSCALL_LEN: u64 = 2;

/// Where a stub's call returns -> (the address after its `syscall` in the program, what to add to %rsp there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StubReturns(BTreeMap<u64, (u64, u64)>);

impl StubReturns {
    /// Reads the stub area at `stubs` (as loaded, through the page tables at `pml4`) against the rewrite's report.
    pub fn read(ram: &GuestRam, pml4: u64, stubs: std::ops::Range<u64>, report: &RewriteReport) -> Self {
        let len = stubs.end.saturating_sub(stubs.start);
        if len == 0 || len > MAX_STUB_AREA {
            return Self::default();
        }
        let mut bytes = vec![0u8; len as usize];
        let mut done = 0;
        while done < bytes.len() {
            let n = memory::read(ram, pml4, stubs.start + done as u64, &mut bytes[done..]);
            if n == 0 {
                return Self::default();
            }
            done += n;
        }
        Self::parse(&bytes, stubs.start, report).unwrap_or_default()
    }

    fn parse(area: &[u8], base: u64, report: &RewriteReport) -> Option<Self> {
        let table = u64::from_le_bytes(area.get(RESTART_TABLE_OFFSET)?.try_into().ok()?) as usize;
        let code = area.get(RESTART_TABLE_OFFSET.end..table.min(area.len()))?;
        let slot = base + ENTRY_SLOT.start as u64;
        let mut decoder = Decoder::with_ip(64, code, base + RESTART_TABLE_OFFSET.end as u64, DecoderOptions::NONE);
        // (return address of a call, where the stub's jmp back goes)
        let mut stubs = Vec::new();
        let mut call_return = None;
        for instr in &mut decoder {
            let calls_entry = instr.mnemonic() == Mnemonic::Call
                && instr.op0_kind() == OpKind::Memory
                && instr.memory_base() == Register::RIP
                && instr.memory_displacement64() == slot;
            if calls_entry {
                call_return = Some(instr.next_ip());
            } else if instr.flow_control() == FlowControl::UnconditionalBranch
                && instr.op0_kind() == OpKind::NearBranch64
            {
                if let Some(ret) = call_return.take() {
                    stubs.push((ret, instr.near_branch_target()));
                }
            }
        }
        let mut sites = report.relocated.clone();
        sites.sort_unstable();
        if sites.len() != stubs.len() {
            return None;
        }
        let mut map = BTreeMap::new();
        for (&site, &(ret, back)) in sites.iter().zip(&stubs) {
            if back <= site || back - site > MAX_WINDOW_AFTER_SITE {
                return None;
            }
            let extra = if report.red_zone.contains(&site) { RED_ZONE } else { 0 };
            map.insert(ret, (site + SYSCALL_LEN, extra));
        }
        Some(Self(map))
    }

    /// For a thread that resumes at `rip` with %rsp `rsp`: where it stands in the program's code, and its %rsp there.
    pub fn in_program(&self, rip: u64, rsp: u64) -> Option<(u64, u64)> {
        self.0.get(&rip).map(|&(at, extra)| (at, rsp.wrapping_add(extra)))
    }

    /// The other way: the stub's return address for a thread shown at `shown` (`None`: not a site's).
    pub fn stub_return(&self, shown: u64) -> Option<(u64, u64)> {
        self.0.iter().find(|(_, &(at, _))| at == shown).map(|(&ret, &(_, extra))| (ret, extra))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
