#!/usr/bin/env bash
# fsync'd 4 KiB writes per second on a volume in Kiln against the same program natively, on the same host file
# system (the volume's file and the native file are both under target/bench): bench/fsync.c appends COUNT 4 KiB
# blocks with fsync after each, then overwrites one block COUNT times with fdatasync. Also the VM exits and host
# flushes (fdatasync of the volume file) per operation in Kiln. Medians of N runs (default 3).
#
#   bench/volumes.sh [N] [COUNT]
set -euo pipefail
rounds=${1:-3}
count=${2:-500}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/fsync" "$repo/bench/fsync.c"
"$KILN" volume rm bench >/dev/null 2>&1 || true
"$KILN" volume create bench --size 1G >/dev/null
trap '"$KILN" volume rm bench >/dev/null 2>&1 || true' EXIT

echo "host: $(uname -r), $(nproc) CPUs; file system of target/bench: $(stat -f -c %T "$out")"
for _ in $(seq "$rounds"); do
  "$out/fsync" "$out/native-fsync.dat" "$count" | sed 's/^/native /'
  "$KILN" run --stats -v bench:/data "$out/fsync" /data/f "$count" 2>"$out/volume-stats" | sed 's/^/kiln /'
  # Two cases of COUNT operations each: exits and flushes per operation.
  exits=$(sed -n 's/^\[kiln\] \([0-9]*\) VM exits.*/\1/p' "$out/volume-stats")
  flushes=$(sed -n 's/^\[kiln\] volume bench: .* \([0-9]*\) flushes.*/\1/p' "$out/volume-stats")
  echo "kiln vm_exits_per_op $(python3 -c "print($exits / (2 * $count))")"
  echo "kiln host_flushes_per_op $(python3 -c "print($flushes / (2 * $count))")"
done | python3 "$repo/bench/medians.py" native kiln
