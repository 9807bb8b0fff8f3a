#!/usr/bin/env bash
# SMP: a CPU-bound two-thread Rust program (tests/guests/rust/src/bin/spin.rs) natively, in Kiln with --cpus 1 and
# with --cpus 2, alternating, N rounds (default 5). Prints the median wall time each reports and the speed-up of
# --cpus 2 over --cpus 1 (the aim: at least 1.7x on 2 host cores).
#
#   bench/threads.sh [N]
set -euo pipefail
rounds=${1:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cargo build --release --locked --quiet --target x86_64-unknown-linux-musl \
  --manifest-path "$repo/tests/guests/rust/Cargo.toml" --target-dir "$out/guests" >&2
spin="$out/guests/x86_64-unknown-linux-musl/release/spin"

echo "host: $(uname -r), $(nproc) CPUs"
for _ in $(seq "$rounds"); do
  echo "native $("$spin" | sed -n 's/.* in \([0-9.]*\) s/\1/p')"
  echo "cpus1 $("$KILN" run --cpus 1 "$spin" | sed -n 's/.* in \([0-9.]*\) s/\1/p')"
  echo "cpus2 $("$KILN" run --cpus 2 "$spin" | sed -n 's/.* in \([0-9.]*\) s/\1/p')"
done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, secs = line.split()
    runs.setdefault(name, []).append(float(secs))
med = {k: statistics.median(v) for k, v in runs.items()}
print("%-24s %10s" % ("case", "median s"))
for name, label in [("native", "native (2 threads)"), ("cpus1", "kiln run --cpus 1"), ("cpus2", "kiln run --cpus 2")]:
    print("%-24s %10.3f" % (label, med[name]))
print("speed-up of --cpus 2 over --cpus 1: %.2fx; --cpus 2 against native: %.2fx" % (med["cpus1"] / med["cpus2"], med["cpus2"] / med["native"]))
'
