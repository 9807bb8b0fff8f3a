#!/usr/bin/env bash
# Two builds of kiln against each other on bench/syscalls.c (getppid, clock_gettime, thread create+join, futex
# ping-pong, mprotect, a 64 MiB file read), with --cpus 1 and --cpus 2, alternating BEFORE and AFTER N rounds
# (default 7) so that the host's load hits both alike. Prints each case's medians side by side.
#
#   bench/syscalls-ab.sh BEFORE_KILN AFTER_KILN [N]
set -euo pipefail
before=$1
after=$2
rounds=${3:-7}
KILN=$after
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/syscalls" "$repo/bench/syscalls.c" -lpthread
data="$out/data-64M"
[ -f "$data" ] || head -c "$((64 << 20))" /dev/urandom > "$data"

echo "host: $(uname -r), $(nproc) CPUs; before: $before; after: $after"
for _ in $(seq "$rounds"); do
  for who in before after; do
    kiln=$before
    [ "$who" = after ] && kiln=$after
    for cpus in 1 2; do
      "$kiln" run --memory 384M --cpus "$cpus" --file "$data:/data" "$out/syscalls" /data | sed "s/^/$who-$cpus /"
    done
  done
done | python3 "$repo/bench/medians.py" before-1 after-1 before-2 after-2
