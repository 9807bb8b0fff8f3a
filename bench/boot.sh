#!/usr/bin/env bash
# Times `kiln run hello` against a native exec of the same static binary and against the VM floor, in one run,
# alternating, as whole processes; then reports how many VM exits one `kiln run hello` makes.
#
#   bench/boot.sh [N]          N rounds, default 30
#
# hello is tests/guests/c/hello.c built with `musl-gcc -static -O2`; the floor is bench/floor.c (create a VM with
# 64 MiB and one vCPU, enter CPL 3, one port-I/O exit, exit). Set KILN=/path/to/kiln to time a prebuilt binary instead
# of building `cargo build --release -p kiln`. Results belong in docs/benchmarks.md.
#
# VM exits: `kiln run --stats` prints `[kiln] N VM exits, M syscalls` to stderr at exit; the script reads N from one
# extra run (not timed).
set -euo pipefail
rounds=${1:-30}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/hello" "$repo/tests/guests/c/hello.c"
cc -O2 -Wall -o "$out/floor" "$repo/bench/floor.c"
cc -O2 -Wall -o "$out/timeit" "$repo/bench/timeit.c"

# Each must work before it is worth timing.
"$out/hello" >/dev/null 2>&1 || { echo "bench: $out/hello fails natively" >&2; exit 1; }
"$out/floor" || { echo "bench: the VM floor fails (is /dev/kvm usable?)" >&2; exit 1; }
"$KILN" run "$out/hello" >/dev/null 2>&1 || { echo "bench: '$KILN run $out/hello' fails; run it by hand" >&2; exit 1; }

echo "host: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kiln: $("$KILN" --version 2>/dev/null || echo unknown)"
echo
# kiln keeps rewritten programs in $KILN_HOME/cache; the timed runs after the warm-up round find hello there, as any
# repeated run of a binary does. The breakdown below shows a first (cold) run too.
rm -rf "$KILN_HOME"
"$out/timeit" "$rounds" "kiln=$KILN run $out/hello" "native=$out/hello" "floor=$out/floor"

stats=$("$KILN" run --stats "$out/hello" 2>&1 >/dev/null | grep -oE '[0-9]+ VM exits' | head -n1 || true)
exits=${stats%% *}
echo
if [ -n "$exits" ]; then
  echo "VM exits per 'kiln run hello': $exits"
else
  echo "VM exits per 'kiln run hello': not reported (no '[kiln] N VM exits' line from 'kiln run --stats')"
fi

# Where the time of one `kiln run hello` goes, from kiln's debug log (medians of 10 runs): process start-up (timed as
# `kiln --version`), then the phases Vm::new logs, cumulative from its start.
echo
phases() {
  python3 -c '
import re, statistics, sys
unit = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
runs = [{k: float(v) * unit[u] for k, v, u in re.findall(r"(\w+)=([0-9.]+)(ns|µs|us|ms|s)\b", line)} for line in sys.stdin]
runs = [r for r in runs if "total" in r]
if not runs:
    sys.exit("  (no VM ready line in the debug log)")
med = lambda k: statistics.median(r[k] for r in runs)
print("  parse + rewrite the program (%s): %.2f" % (sys.argv[1], med("prepared_at")))
print("  KVM: VM, vCPU, memory, CPUID, TSC:      %.2f" % (med("machine_ready") - med("prepared_at")))
print("  boot layout (page tables, load, stack): %.2f" % (med("built") - med("machine_ready")))
print("  registers:                              %.2f" % (med("total") - med("built")))
' "$1"
}
debug_run() {
  KILN_LOG=kiln_vmm=debug "$KILN" run "$out/hello" 2>&1 >/dev/null | grep 'VM ready' || true
}
echo "breakdown of 'kiln run hello' (medians of 10 runs, ms):"
"$out/timeit" 10 "startup=$KILN --version" | awk '$1 == "startup" {printf "  process start-up and exit (kiln --version): %s\n", $2}'
for _ in $(seq 10); do debug_run; done | phases "cached"
for i in $(seq 10); do KILN_HOME="$out/kiln-cold-$i" debug_run; rm -rf "$out/kiln-cold-$i"; done | phases "first run"
