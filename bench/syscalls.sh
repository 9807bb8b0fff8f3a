#!/usr/bin/env bash
# What common syscalls cost natively and in Kiln (one and two vCPUs), in one run: bench/syscalls.c (getppid round
# trip, clock_gettime,
# thread create+join, futex ping-pong, sequential read of a SIZE file: 256 MiB by default, from the root filesystem
# in Kiln via --file, from the host's page cache natively). Medians of N runs (default 3).
#
#   bench/syscalls.sh [N] [SIZE_MIB]
set -euo pipefail
rounds=${1:-3}
size_mib=${2:-256}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/syscalls" "$repo/bench/syscalls.c" -lpthread
data="$out/data-${size_mib}M"
[ -f "$data" ] || head -c "$((size_mib << 20))" /dev/urandom > "$data"
memory="$((size_mib * 2 + 256))M"

echo "host: $(uname -r), $(nproc) CPUs; file: ${size_mib} MiB"
for _ in $(seq "$rounds"); do
  "$out/syscalls" "$data" | sed 's/^/native /'
  "$KILN" run --memory "$memory" --cpus 1 --file "$data:/data" "$out/syscalls" /data | sed 's/^/kiln1 /'
  "$KILN" run --memory "$memory" --cpus 2 --file "$data:/data" "$out/syscalls" /data | sed 's/^/kiln2 /'
done | python3 "$repo/bench/medians.py"
