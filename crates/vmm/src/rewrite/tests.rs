use iced_x86::code_asm::*;
use iced_x86::{Code, Decoder, DecoderOptions, IcedError, Instruction, Register};

use super::*;

const BASE: u64 = 0x40_1000;
/// Where the tests map stubs: close enough for rel32.
const STUBS: u64 = 0x80_0000;
/// Where the first stub starts: after the entry slot.
const FIRST_STUB: u64 = STUBS + 16;

/// Emits some instructions.
type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn asm(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(BASE).unwrap()
}

fn rewrite(code: &mut [u8], functions: Vec<FunctionSymbol>) -> RewriteOutput {
    let segments = vec![ExecSegment { vaddr: BASE, bytes: code }];
    rewrite_syscalls(RewriteInput { segments, code_ranges: Vec::new(), functions, stub_base: STUBS }).unwrap()
}

fn decode(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).into_iter().collect()
}

/// The stub at `addr`: its instructions up to the `jmp` back.
fn decode_stub(out: &RewriteOutput, addr: u64) -> Vec<Instruction> {
    let at = (addr - STUBS) as usize;
    let mut stub = Vec::new();
    for ins in Decoder::with_ip(64, &out.stubs[at..], addr, DecoderOptions::NONE) {
        stub.push(ins);
        if ins.code() == Code::Jmp_rel32_64 {
            break;
        }
    }
    stub
}

/// The restart table: (return address of a stub's call, where its syscall restarts).
fn restarts(out: &RewriteOutput) -> Vec<(u64, u64)> {
    let offset = u64::from_le_bytes(out.stubs[RESTART_TABLE_OFFSET].try_into().unwrap()) as usize;
    assert!(offset.is_multiple_of(8) && offset <= out.stubs.len());
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap());
    out.stubs[offset..].chunks(16).map(|e| (word(&e[..8]), word(&e[8..]))).collect()
}

fn codes(bytes: &[u8], ip: u64) -> Vec<Code> {
    decode(bytes, ip).iter().map(Instruction::code).collect()
}

/// Asserts `ins` is `lea delta(%rsp),%rsp`.
fn assert_rsp_adjust(ins: &Instruction, delta: i64) {
    assert_eq!(ins.code(), Code::Lea_r64_m);
    assert_eq!(ins.op0_register(), Register::RSP);
    assert_eq!(ins.memory_base(), Register::RSP);
    assert_eq!(ins.memory_displacement64() as i64, delta);
}

/// Asserts `ins` is `call *entry_slot(%rip)`, 6 bytes long.
fn assert_calls_entry(ins: &Instruction) {
    assert_eq!(ins.code(), Code::Call_rm64);
    assert!(ins.is_ip_rel_memory_operand());
    assert_eq!(ins.ip_rel_memory_address(), STUBS + ENTRY_SLOT.start as u64);
    assert_eq!(ins.len() as u64, kiln_abi::layout::STUB_CALL_LEN);
}

/// Asserts the window at `at` is `jmp stub` padded with int3 to `len` bytes.
fn assert_jump_to(code: &[u8], at: usize, len: usize, stub: u64) {
    let jmp = &decode(&code[at..at + 5], BASE + at as u64)[0];
    assert_eq!(jmp.code(), Code::Jmp_rel32_64);
    assert_eq!(jmp.near_branch_target(), stub);
    assert!(code[at + 5..at + len].iter().all(|&b| b == INT3));
}

#[test]
fn plain_musl_site_moves_to_a_stub_that_calls_the_entry() {
    let mut code = asm(|a| {
        a.mov(eax, 1)?;
        a.syscall()?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated, [BASE + 5]);
    assert!(out.report.in_place.is_empty() && out.report.red_zone.is_empty() && out.report.unsafe_sites.is_empty());
    // `mov $1,%eax; syscall` (7 bytes) became `jmp stub; int3; int3`; the `ret` stays.
    assert_jump_to(&code, 0, 7, FIRST_STUB);
    assert_eq!(code[7], 0xc3);

    // The entry slot, left for the loader, then the stub: no red-zone steps around the call.
    assert_eq!(out.stubs[ENTRY_SLOT], [0; 8]);
    let stub = decode_stub(&out, FIRST_STUB);
    assert_eq!(stub.len(), 3);
    assert_eq!((stub[0].code(), stub[0].immediate32()), (Code::Mov_r32_imm32, 1));
    assert_calls_entry(&stub[1]);
    assert_eq!(stub[2].near_branch_target(), BASE + 7);
    // `mov $1,%eax` can run again: a restarted syscall resumes at the window, in the program's code.
    assert_eq!(restarts(&out), [(stub[1].next_ip(), BASE)]);
}

#[test]
fn a_restart_resumes_at_the_stubs_call_when_the_moved_code_cannot_run_again() {
    let not_again: [Emit; 4] = [
        |a| a.inc(rdi),                                                          // reads what it writes
        |a| a.mov(rdi, rcx),                                                     // %rcx: the syscall clobbers it
        |a| a.mov(edx, dword_ptr(rdi)).and_then(|_| a.mov(dword_ptr(rdi), esi)), // a load, then a store
        |a| a.cmovne(rsi, rdx).and_then(|_| a.xor(edi, edi)),                    // reads flags the xor then sets
    ];
    for (i, before) in not_again.iter().enumerate() {
        let mut code = asm(|a| {
            before(a)?;
            a.syscall()?;
            a.ret()
        });
        let out = rewrite(&mut code, Vec::new());
        assert_eq!(out.report.relocated.len(), 1, "case {i}");
        assert!(restarts(&out).is_empty(), "case {i}");
    }
    // Go's way: the arguments from the caller's frame, the result back into it; %rsp is not moved by the stub.
    let mut code = asm(|a| {
        a.mov(rdi, qword_ptr(rsp + 16))?;
        a.mov(rax, qword_ptr(rsp + 8))?;
        a.syscall()?;
        a.mov(qword_ptr(rsp + 40), rax)?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated, [BASE + 10]);
    assert_eq!(restarts(&out)[0].1, BASE + 5);
}

#[test]
fn prefixed_site_that_cannot_move_keeps_its_length() {
    // `66 0f 05`: a prefix the CPU ignores; `66 ff d0` would be a 16-bit call. A `ret` follows and nothing precedes:
    // 3 bytes are no room for a `jmp`, so the site stays, as `call *%rax` into page 0.
    let mut code = vec![0x66, 0x0f, 0x05, 0xc3];
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.in_place, [BASE]);
    assert!(out.report.relocated.is_empty() && out.report.unsafe_sites.is_empty() && out.stubs.is_empty());
    assert_eq!(code, [NOP, 0xff, 0xd0, 0xc3]);
}

#[test]
fn a_site_between_branches_stays_in_place_and_is_safe_outside_the_red_zone() {
    let mut code = asm(|a| {
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.syscall()?; // a loop target: nothing before it may move
        a.jne(again)?; // a branch: nothing after it may move
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.in_place, [BASE]);
    assert!(out.report.unsafe_sites.is_empty() && out.report.relocated.is_empty());
    assert_eq!(code[..2], CALL_RAX);
}

#[test]
fn syscall_bytes_inside_other_instructions_are_left_alone() {
    let mut code = asm(|a| {
        a.mov(eax, 0x050f)?; // immediate
        a.mov(eax, dword_ptr(rax + 0x050f))?; // displacement
        a.mov(dword_ptr(rdi), ecx)?; // ModRM 0x0f, then `05 imm32` (add): `0f 05` straddles two instructions
        a.add(eax, 0x1234_5678)?;
        a.ret()
    });
    assert_eq!(code.windows(2).filter(|w| w == &[0x0f, 0x05]).count(), 3);
    let before = code.clone();
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(code, before);
    assert!(out.report.in_place.is_empty() && out.report.relocated.is_empty());
}

#[test]
fn two_sites() {
    let mut code = asm(|a| {
        a.mov(eax, 39)?;
        a.syscall()?;
        a.mov(edi, eax)?;
        a.mov(eax, 60)?;
        a.syscall()?;
        a.hlt()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated, [BASE + 5, BASE + 14]);
    // `mov $39,%eax; syscall`, then (after `mov %eax,%edi`) `mov $60,%eax; syscall`: each its own stub. The first
    // is 16 bytes (mov 5, call 6, jmp 5), so the second starts 16 bytes later.
    assert_jump_to(&code, 0, 7, FIRST_STUB);
    assert_jump_to(&code, 9, 7, FIRST_STUB + 16);
    let second = decode(&out.stubs[32..], FIRST_STUB + 16);
    assert_eq!(second[0].immediate32(), 60);
    assert_calls_entry(&second[1]);
    assert_eq!(second[2].near_branch_target(), BASE + 16);
}

#[test]
fn invalid_bytes_are_skipped_one_at_a_time() {
    // `06` (push es) and `27` (daa) are invalid in 64-bit mode; a lone trailing `0f` is truncated.
    let mut code = vec![0x06, 0x27, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05, 0x0f];
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated, [BASE + 7]);
    assert_jump_to(&code, 2, 7, FIRST_STUB);
    assert_eq!(code[..2], [0x06, 0x27]);
    assert_eq!(code[9], 0x0f);
}

#[test]
fn red_zone_leaf_is_relocated_to_a_stub() {
    let mut code = asm(|a| {
        a.mov(qword_ptr(rsp - 8), rdi)?;
        a.mov(eax, 39)?;
        a.syscall()?;
        a.mov(rdi, qword_ptr(rsp - 8))?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    let site = BASE + 10; // 5-byte store, 5-byte mov
    assert_eq!(out.report.relocated, [site]);
    assert_eq!(out.report.red_zone, [site]);
    assert!(out.report.in_place.is_empty() && out.report.unsafe_sites.is_empty());

    // `mov $39,%eax; syscall` (7 bytes) became `jmp stub; int3; int3`.
    assert_jump_to(&code, 5, 7, FIRST_STUB);
    assert_eq!(codes(&code[12..], BASE + 12), [Code::Mov_r64_rm64, Code::Retnq]);

    let stub = decode_stub(&out, FIRST_STUB);
    assert_eq!(stub.len(), 5);
    assert_rsp_adjust(&stub[0], -128);
    assert_eq!((stub[1].code(), stub[1].immediate32()), (Code::Mov_r32_imm32, 39));
    assert_calls_entry(&stub[2]);
    assert_rsp_adjust(&stub[3], 128);
    assert_eq!(stub[4].flow_control(), iced_x86::FlowControl::UnconditionalBranch);
    assert_eq!(stub[4].near_branch_target(), site + 2);
    // %rsp has moved when it calls: a restart runs only the call again, so the table does not name it.
    assert!(restarts(&out).is_empty());
}

#[test]
fn relocation_moves_instructions_after_the_site_and_retargets_rip_relative_ones() {
    let mut code = asm(|a| {
        let mut data = a.create_label();
        a.mov(qword_ptr(rsp - 16), rsi)?;
        a.mov(eax, dword_ptr(rsp + 8))?; // touches %rsp: cannot move
        a.syscall()?;
        a.mov(rdx, qword_ptr(data))?; // RIP-relative, moved after the call
        a.mov(rsi, qword_ptr(rsp - 16))?;
        a.ret()?;
        a.set_label(&mut data)?;
        a.dq(&[0])
    });
    let data = decode(&code[11..18], BASE + 11)[0].ip_rel_memory_address();
    assert_eq!(data, BASE + 24);
    let out = rewrite(&mut code, Vec::new());
    let site = BASE + 9;
    assert_eq!(out.report.relocated, [site]);
    assert_jump_to(&code, 9, 9, FIRST_STUB);

    let stub = decode_stub(&out, FIRST_STUB);
    let stub_codes: Vec<Code> = stub.iter().map(Instruction::code).collect();
    assert_eq!(stub_codes[..4], [Code::Lea_r64_m, Code::Call_rm64, Code::Lea_r64_m, Code::Mov_r64_rm64]);
    assert!(stub[3].is_ip_rel_memory_operand());
    assert_eq!(stub[3].ip_rel_memory_address(), data);
    assert_eq!(stub[4].near_branch_target(), site + 9);
}

#[test]
fn red_zone_site_that_is_a_branch_target_is_unsafe() {
    let mut code = asm(|a| {
        let mut again = a.create_label();
        a.mov(qword_ptr(rsp - 8), rdi)?;
        a.mov(eax, 39)?;
        a.set_label(&mut again)?;
        a.syscall()?; // a loop target: nothing before it may move
        a.mov(rdi, qword_ptr(rsp - 8))?; // touches %rsp: nothing after it may move
        a.test(eax, eax)?;
        a.jne(again)?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.unsafe_sites, [BASE + 10]);
    assert_eq!(out.report.in_place, [BASE + 10]);
    assert!(out.report.relocated.is_empty() && out.stubs.is_empty());
    assert_eq!(code[10..12], CALL_RAX);
}

#[test]
fn two_red_zone_sites_get_separate_stubs() {
    let mut code = asm(|a| {
        a.mov(qword_ptr(rsp - 8), rdi)?;
        a.mov(eax, 1)?;
        a.syscall()?;
        a.mov(eax, 2)?;
        a.syscall()?;
        a.mov(rdi, qword_ptr(rsp - 8))?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated, [BASE + 10, BASE + 17]);
    assert_eq!(out.report.red_zone, [BASE + 10, BASE + 17]);
    assert_jump_to(&code, 5, 7, FIRST_STUB);
    // Each stub is 26 bytes, the next starts on a 16-byte boundary.
    assert_jump_to(&code, 12, 7, FIRST_STUB + 32);
    let second = decode(&out.stubs[48..], FIRST_STUB + 32);
    assert_eq!(second[1].immediate32(), 2);
}

#[test]
fn rbp_frame_leaf_is_flagged_but_a_function_with_a_frame_is_not() {
    let leaf = |a: &mut CodeAssembler| {
        a.push(rbp)?;
        a.mov(rbp, rsp)?;
        a.mov(qword_ptr(rbp - 8), rdi)?;
        a.mov(eax, 1)?;
        a.syscall()?;
        a.pop(rbp)?;
        a.ret()
    };
    let mut code = asm(leaf);
    assert_eq!(rewrite(&mut code, Vec::new()).report.red_zone.len(), 1);

    let mut code = asm(|a| {
        a.push(rbp)?;
        a.mov(rbp, rsp)?;
        a.sub(rsp, 16)?;
        a.mov(qword_ptr(rbp - 8), rdi)?;
        a.mov(eax, 1)?;
        a.syscall()?;
        a.leave()?;
        a.ret()
    });
    let out = rewrite(&mut code, Vec::new());
    assert_eq!(out.report.relocated.len(), 1);
    assert!(out.report.red_zone.is_empty());
}

#[test]
fn symbols_bound_the_function() {
    // Without symbols the window heuristic sees one function (no `ret` between), so the site is flagged; the
    // symbol table says the red-zone store belongs to a different function.
    let build = |a: &mut CodeAssembler| {
        a.mov(qword_ptr(rsp - 8), rdi)?;
        a.nop()?;
        a.mov(eax, 1)?; // second function starts here, at BASE + 6
        a.syscall()?;
        a.ret()
    };
    let mut code = asm(build);
    assert_eq!(rewrite(&mut code, Vec::new()).report.red_zone, [BASE + 11]);

    let mut code = asm(build);
    let functions = vec![FunctionSymbol { vaddr: BASE, size: 6 }, FunctionSymbol { vaddr: BASE + 6, size: 8 }];
    let out = rewrite(&mut code, functions);
    assert_eq!(out.report.relocated, [BASE + 11]);
    assert!(out.report.red_zone.is_empty());
}

#[test]
fn only_code_ranges_are_decoded() {
    let mut bytes = asm(|a| {
        a.mov(eax, 1)?;
        a.syscall()?;
        a.ret()
    });
    bytes.extend_from_slice(&[0x0f, 0x05]); // data after .text, e.g. a constant in the same segment
    let code_end = BASE + 8;
    let segments = vec![ExecSegment { vaddr: BASE, bytes: &mut bytes }];
    let input = RewriteInput { segments, code_ranges: vec![(BASE, code_end)], functions: Vec::new(), stub_base: STUBS };
    let out = rewrite_syscalls(input).unwrap();
    assert_eq!(out.report.relocated, [BASE + 5]);
    assert_eq!(bytes[8..], [0x0f, 0x05]);
}

#[test]
fn bad_inputs_are_errors() {
    let run = |code_ranges: Vec<(u64, u64)>, stub_base| {
        let mut bytes = asm(|a| {
            a.mov(qword_ptr(rsp - 8), rdi)?;
            a.mov(eax, 1)?;
            a.syscall()?;
            a.ret()
        });
        let segments = vec![ExecSegment { vaddr: BASE, bytes: &mut bytes }];
        rewrite_syscalls(RewriteInput { segments, code_ranges, functions: Vec::new(), stub_base }).err()
    };
    assert!(matches!(run(vec![(BASE, BASE + 0x100)], STUBS), Some(RewriteError::CodeRangeOutsideSegments { .. })));
    assert!(matches!(run(vec![(BASE + 4, BASE)], STUBS), Some(RewriteError::EmptyCodeRange { .. })));
    let overlap = vec![(BASE, BASE + 8), (BASE + 4, BASE + 12)];
    assert!(matches!(run(overlap, STUBS), Some(RewriteError::OverlappingCode { .. })));
}

#[test]
fn a_site_whose_stub_would_be_out_of_reach_stays_in_place() {
    // A program spanning over 2 GiB (a huge bss) puts the stub area after it, beyond a rel32 `jmp`.
    let mut code = asm(|a| {
        a.mov(eax, 1)?;
        a.syscall()?;
        a.ret()
    });
    let segments = vec![ExecSegment { vaddr: BASE, bytes: &mut code }];
    let far = BASE + (3 << 30);
    let out =
        rewrite_syscalls(RewriteInput { segments, code_ranges: vec![], functions: vec![], stub_base: far }).unwrap();
    assert_eq!(out.report.in_place, [BASE + 5]);
    assert!(out.report.relocated.is_empty() && out.stubs.is_empty());
    assert_eq!(code[5..7], CALL_RAX);
}

#[test]
fn a_stub_area_at_the_end_of_the_address_space_leaves_the_site_in_place() {
    // Found by fuzz/rewrite: the stub's return address was added up without a check, and overflowed; and a stub
    // could run past the end of the address space.
    for stub_base in [u64::MAX - 0x14, u64::MAX - 0x1f] {
        let mut code = asm(|a| {
            a.mov(eax, 1)?;
            a.syscall()?;
            a.ret()
        });
        let vaddr = u64::MAX - 0xfff;
        let segments = vec![ExecSegment { vaddr, bytes: &mut code }];
        let input = RewriteInput { segments, code_ranges: vec![], functions: vec![], stub_base };
        let out = rewrite_syscalls(input).unwrap();
        assert_eq!(out.report.in_place, [vaddr + 5], "{stub_base:#x}");
        assert!(out.report.relocated.is_empty() && out.stubs.is_empty());
        assert_eq!(code[5..7], CALL_RAX);
    }
}

#[test]
fn indexed_red_zone_walk_in_a_frameless_leaf_is_relocated() {
    // mov %r10,(%rsp,%r9); mov $39,%eax; syscall; mov (%rsp,%r9),%r10; ret
    let mut code = vec![0x4e, 0x89, 0x14, 0x0c, 0xb8, 0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x4e, 0x8b, 0x14, 0x0c, 0xc3];
    let out = rewrite_syscalls(RewriteInput {
        segments: vec![ExecSegment { vaddr: 0x401000, bytes: &mut code }],
        code_ranges: vec![],
        functions: vec![],
        stub_base: 0x500000,
    })
    .unwrap();
    assert_eq!(out.report.relocated, vec![0x401009]);
    assert_eq!(out.report.red_zone, vec![0x401009]);
    assert_eq!(code[4], 0xe9, "the window now jumps to the stub");
}
