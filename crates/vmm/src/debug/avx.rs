//! gdb's view of an x86-64 program with AVX: gdbstub_arch's x86-64 description has the core and SSE registers only,
//! so this one adds gdb's AVX feature (the upper halves `ymm0h`-`ymm15h`, from which gdb makes `ymm0`-`ymm15`) and
//! its Linux feature (`orig_rax`, without which gdb's GNU/Linux amd64 support takes no described registers). The
//! register bytes follow gdbstub_arch's core registers, then the upper halves, then `orig_rax`, in the order the
//! description lists them. The upper halves are the XSAVE area's AVX component (KVM_GET_XSAVE's standard format).

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::kvm_xsave;

/// The upper 128 bits of `ymm0`-`ymm15`.
pub type YmmHigh = [u128; 16];

/// x86-64 with AVX, for gdbstub.
pub enum X86_64Avx {}

impl Arch for X86_64Avx {
    type Usize = u64;
    type Registers = AvxRegs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AvxRegs {
    pub core: X86_64CoreRegs,
    pub ymmh: YmmHigh,
}

/// The bytes of gdbstub_arch's core registers (through `mxcsr`).
const CORE_BYTES: usize = 0x218;
/// `orig_rax` as Linux reports it for a thread not in a syscall: gdb then restarts none.
const NO_SYSCALL: u64 = u64::MAX;

impl Registers for AvxRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for half in &self.ymmh {
            half.to_le_bytes().into_iter().for_each(|b| write_byte(Some(b)));
        }
        NO_SYSCALL.to_le_bytes().into_iter().for_each(|b| write_byte(Some(b)));
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.core.gdb_deserialize(bytes.get(..CORE_BYTES).ok_or(())?)?;
        // A shorter packet leaves the upper halves as they were.
        if let Some(halves) = bytes.get(CORE_BYTES..CORE_BYTES + 16 * 16) {
            for (half, chunk) in self.ymmh.iter_mut().zip(halves.chunks_exact(16)) {
                *half = u128::from_le_bytes(chunk.try_into().map_err(|_| ())?);
            }
        }
        Ok(())
    }
}

/// Where the XSAVE header's XSTATE_BV lies, and the AVX component's bit in it.
const XSTATE_BV: usize = 512;
const AVX_BIT: u64 = 1 << 2;
/// The AVX component's offset in the standard (non-compacted) format, which KVM_GET_XSAVE gives: architectural on
/// every CPU with AVX (CPUID.(EAX=0DH,ECX=2).EBX).
const YMM_HI128: usize = 576;

fn byte_at(xsave: &kvm_xsave, at: usize) -> u8 {
    xsave.region[at / 4].to_le_bytes()[at % 4]
}

fn set_byte(xsave: &mut kvm_xsave, at: usize, value: u8) {
    let mut word = xsave.region[at / 4].to_le_bytes();
    word[at % 4] = value;
    xsave.region[at / 4] = u32::from_le_bytes(word);
}

fn xstate_bv(xsave: &kvm_xsave) -> u64 {
    u64::from_le_bytes(std::array::from_fn(|i| byte_at(xsave, XSTATE_BV + i)))
}

/// The upper halves in `xsave`: zero where the AVX component is in its initial state (XSTATE_BV says so).
pub fn from_xsave(xsave: &kvm_xsave) -> YmmHigh {
    if xstate_bv(xsave) & AVX_BIT == 0 {
        return YmmHigh::default();
    }
    std::array::from_fn(|r| u128::from_le_bytes(std::array::from_fn(|i| byte_at(xsave, YMM_HI128 + 16 * r + i))))
}

/// Writes the upper halves into `xsave`, marking the AVX component in use.
pub fn into_xsave(ymmh: &YmmHigh, xsave: &mut kvm_xsave) {
    for (r, half) in ymmh.iter().enumerate() {
        for (i, b) in half.to_le_bytes().into_iter().enumerate() {
            set_byte(xsave, YMM_HI128 + 16 * r + i, b);
        }
    }
    let bv = xstate_bv(xsave) | AVX_BIT;
    for (i, b) in bv.to_le_bytes().into_iter().enumerate() {
        set_byte(xsave, XSTATE_BV + i, b);
    }
}

/// The target description: gdb's amd64 core, SSE, AVX and Linux features, their registers in the order of the
/// register bytes above (registers are numbered in the order they appear).
const TARGET_XML: &str = concat!(
    r#"<?xml version="1.0"?><target version="1.0"><architecture>i386:x86-64</architecture>"#,
    r#"<feature name="org.gnu.gdb.i386.core">"#,
    r#"<flags id="i386_eflags" size="4">"#,
    r#"<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>"#,
    r#"<field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>"#,
    r#"<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>"#,
    r#"<field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/>"#,
    r#"<field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/>"#,
    r#"<field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>"#,
    r#"<field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/></flags>"#,
    r#"<reg name="rax" bitsize="64" type="int64"/><reg name="rbx" bitsize="64" type="int64"/>"#,
    r#"<reg name="rcx" bitsize="64" type="int64"/><reg name="rdx" bitsize="64" type="int64"/>"#,
    r#"<reg name="rsi" bitsize="64" type="int64"/><reg name="rdi" bitsize="64" type="int64"/>"#,
    r#"<reg name="rbp" bitsize="64" type="data_ptr"/><reg name="rsp" bitsize="64" type="data_ptr"/>"#,
    r#"<reg name="r8" bitsize="64" type="int64"/><reg name="r9" bitsize="64" type="int64"/>"#,
    r#"<reg name="r10" bitsize="64" type="int64"/><reg name="r11" bitsize="64" type="int64"/>"#,
    r#"<reg name="r12" bitsize="64" type="int64"/><reg name="r13" bitsize="64" type="int64"/>"#,
    r#"<reg name="r14" bitsize="64" type="int64"/><reg name="r15" bitsize="64" type="int64"/>"#,
    r#"<reg name="rip" bitsize="64" type="code_ptr"/><reg name="eflags" bitsize="32" type="i386_eflags"/>"#,
    r#"<reg name="cs" bitsize="32" type="int32"/><reg name="ss" bitsize="32" type="int32"/>"#,
    r#"<reg name="ds" bitsize="32" type="int32"/><reg name="es" bitsize="32" type="int32"/>"#,
    r#"<reg name="fs" bitsize="32" type="int32"/><reg name="gs" bitsize="32" type="int32"/>"#,
    r#"<reg name="st0" bitsize="80" type="i387_ext"/><reg name="st1" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st2" bitsize="80" type="i387_ext"/><reg name="st3" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st4" bitsize="80" type="i387_ext"/><reg name="st5" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="st6" bitsize="80" type="i387_ext"/><reg name="st7" bitsize="80" type="i387_ext"/>"#,
    r#"<reg name="fctrl" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fstat" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="ftag" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fiseg" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fioff" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="foseg" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fooff" bitsize="32" type="int" group="float"/>"#,
    r#"<reg name="fop" bitsize="32" type="int" group="float"/>"#,
    r#"</feature><feature name="org.gnu.gdb.i386.sse">"#,
    r#"<vector id="v8bf16" type="bfloat16" count="8"/><vector id="v8h" type="ieee_half" count="8"/>"#,
    r#"<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/>"#,
    r#"<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>"#,
    r#"<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>"#,
    r#"<union id="vec128"><field name="v8_bfloat16" type="v8bf16"/><field name="v8_half" type="v8h"/>"#,
    r#"<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>"#,
    r#"<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>"#,
    r#"<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>"#,
    r#"<field name="uint128" type="uint128"/></union>"#,
    r#"<flags id="i386_mxcsr" size="4">"#,
    r#"<field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/><field name="ZE" start="2" end="2"/>"#,
    r#"<field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>"#,
    r#"<field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/><field name="DM" start="8" end="8"/>"#,
    r#"<field name="ZM" start="9" end="9"/><field name="OM" start="10" end="10"/>"#,
    r#"<field name="UM" start="11" end="11"/><field name="PM" start="12" end="12"/>"#,
    r#"<field name="FZ" start="15" end="15"/></flags>"#,
    r#"<reg name="xmm0" bitsize="128" type="vec128"/><reg name="xmm1" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm2" bitsize="128" type="vec128"/><reg name="xmm3" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm4" bitsize="128" type="vec128"/><reg name="xmm5" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm6" bitsize="128" type="vec128"/><reg name="xmm7" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm8" bitsize="128" type="vec128"/><reg name="xmm9" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm10" bitsize="128" type="vec128"/><reg name="xmm11" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm12" bitsize="128" type="vec128"/><reg name="xmm13" bitsize="128" type="vec128"/>"#,
    r#"<reg name="xmm14" bitsize="128" type="vec128"/><reg name="xmm15" bitsize="128" type="vec128"/>"#,
    r#"<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>"#,
    r#"</feature><feature name="org.gnu.gdb.i386.avx">"#,
    r#"<reg name="ymm0h" bitsize="128" type="uint128"/><reg name="ymm1h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm2h" bitsize="128" type="uint128"/><reg name="ymm3h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm4h" bitsize="128" type="uint128"/><reg name="ymm5h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm6h" bitsize="128" type="uint128"/><reg name="ymm7h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm8h" bitsize="128" type="uint128"/><reg name="ymm9h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm10h" bitsize="128" type="uint128"/><reg name="ymm11h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm12h" bitsize="128" type="uint128"/><reg name="ymm13h" bitsize="128" type="uint128"/>"#,
    r#"<reg name="ymm14h" bitsize="128" type="uint128"/><reg name="ymm15h" bitsize="128" type="uint128"/>"#,
    r#"</feature><feature name="org.gnu.gdb.i386.linux">"#,
    r#"<reg name="orig_rax" bitsize="64" type="int" group="system"/>"#,
    r#"</feature></target>"#,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_and_the_description_lists_as_many_as_are_sent() {
        let mut regs = AvxRegs::default();
        regs.core.rip = 0x401000;
        regs.core.xmm[3] = 7;
        regs.ymmh[15] = u128::MAX - 1;
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), CORE_BYTES + 16 * 16 + 8);
        assert_eq!(bytes[bytes.len() - 8..], [0xff; 8], "orig_rax: no syscall");
        let mut back = AvxRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, regs);
        // The description's registers, by size, add up to the bytes sent.
        let bits: usize = TARGET_XML
            .split("<reg ")
            .skip(1)
            .map(|r| r.split("bitsize=\"").nth(1).unwrap().split('"').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(bits / 8, bytes.len());
        assert!(back.gdb_deserialize(&bytes[..CORE_BYTES - 1]).is_err());
    }

    #[test]
    fn upper_halves_come_from_the_avx_component_only_when_it_is_in_use() {
        let mut xsave = kvm_xsave::default();
        set_byte(&mut xsave, YMM_HI128 + 16, 0xab);
        assert_eq!(from_xsave(&xsave), YmmHigh::default(), "XSTATE_BV says the component is in its initial state");
        let mut halves = YmmHigh::default();
        halves[1] = 0x1122_3344_5566_7788_99aa_bbcc_ddee_ff00;
        halves[14] = 5;
        into_xsave(&halves, &mut xsave);
        assert_eq!(xstate_bv(&xsave) & AVX_BIT, AVX_BIT);
        assert_eq!(from_xsave(&xsave), halves);
        assert_eq!(byte_at(&xsave, YMM_HI128 + 16), 0x00, "little-endian: ymm1h's lowest byte first");
    }
}
