#!/usr/bin/env bash
# What TCP over the loopback costs natively and in Kiln (one and two vCPUs), in one run: bench/sockets.c (a 1-byte
# ping-pong round trip between two threads, connect + accept + close, a 256 MiB stream). Medians of N runs (default 3).
#
#   bench/sockets.sh [N]
set -euo pipefail
rounds=${1:-3}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/sockets" "$repo/bench/sockets.c" -lpthread

echo "host: $(uname -r), $(nproc) CPUs"
for _ in $(seq "$rounds"); do
  "$out/sockets" | sed 's/^/native /'
  "$KILN" run --memory 256M --cpus 1 "$out/sockets" | sed 's/^/kiln1 /'
  "$KILN" run --memory 256M --cpus 2 "$out/sockets" | sed 's/^/kiln2 /'
done | python3 "$repo/bench/medians.py"
