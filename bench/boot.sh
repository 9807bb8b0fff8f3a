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
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=${1:-30}
out="${CARGO_TARGET_DIR:-$repo/target}/bench"
mkdir -p "$out"

if [ -z "${KILN:-}" ]; then
  echo "bench: building kiln (release)" >&2
  cargo build --release --locked -p kiln --manifest-path "$repo/Cargo.toml" >&2
  KILN="${CARGO_TARGET_DIR:-$repo/target}/release/kiln"
fi
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
"$out/timeit" "$rounds" "kiln=$KILN run $out/hello" "native=$out/hello" "floor=$out/floor"

stats=$("$KILN" run --stats "$out/hello" 2>&1 >/dev/null | grep -oE '[0-9]+ VM exits' | head -n1 || true)
exits=${stats%% *}
echo
if [ -n "$exits" ]; then
  echo "VM exits per 'kiln run hello': $exits"
else
  echo "VM exits per 'kiln run hello': not reported (no '[kiln] N VM exits' line from 'kiln run --stats')"
fi
