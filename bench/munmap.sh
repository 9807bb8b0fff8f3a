#!/usr/bin/env bash
# munmap of a huge PROT_NONE reservation with three pages committed in it (tests/guests/c/reserve.c given N: reserve
# 2^N bytes, commit the first, middle and last page, time the munmap), for 2^30, 2^40 and 2^44 bytes: an old kiln
# against a new one and native Linux, alternating, N rounds (default 5); prints each case's median in microseconds.
#
#   bench/munmap.sh BEFORE_KILN [AFTER_KILN] [N]
#
# BEFORE_KILN is a release kiln built from an older commit, e.g. in a temporary worktree:
#   git worktree add --detach /tmp/kiln-old COMMIT && (cd /tmp/kiln-old && cargo build --release -p kiln)
#   bench/munmap.sh /tmp/kiln-old/target/x86_64-unknown-linux-musl/release/kiln
# AFTER_KILN defaults to this tree's release kiln (built). Results belong in docs/benchmarks.md.
set -euo pipefail
before=$1
[ -n "${2:-}" ] && KILN=$2
rounds=${3:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/reserve" "$repo/tests/guests/c/reserve.c"

echo "host: $(uname -r), $(nproc) CPUs; before: $before; after: $KILN"
for _ in $(seq "$rounds"); do
  for bits in 30 40 44; do
    "$out/reserve" "$bits" | sed "s/^munmap 2^\([0-9]*\): \([0-9.]*\) us$/native munmap_2^\1_us \2/"
    for who in before after; do
      kiln=$before
      [ "$who" = after ] && kiln=$KILN
      "$kiln" run "$out/reserve" "$bits" | sed "s/^munmap 2^\([0-9]*\): \([0-9.]*\) us$/$who munmap_2^\1_us \2/"
    done
  done
done | python3 "$repo/bench/medians.py" before after native
