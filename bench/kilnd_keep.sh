#!/usr/bin/env bash
# The pause a kilnd restart (or upgrade: stop the old binary, start the new) costs the instances it runs: N idle HTTP
# instances (tests/guests/c/hitcount.c, 25 MiB, user-mode network, a published port each) kept across the restart
# (each paused at its quiescent point and written to its folder, run on by the next kilnd from there) against the
# same N stopped with the old kilnd and booted again by the new one (`kiln daemon --stop-instances`, --restart
# always), in one run. See bench/kilnd_keep.py for the columns.
#
#   bench/kilnd_keep.sh [N...]      (default: 1 100; PORT=19100 the first published port)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -gt 0 ] && counts=("$@") || counts=(1 100)
work="$out/kilnd-keep"
rm -rf "$work" && mkdir -p "$work"
musl-gcc -static -O2 -o "$work/hitcount" "$repo/tests/guests/c/hitcount.c"
echo "host: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 "$repo/bench/kilnd_keep.py" "$KILN" "$work" "$work/hitcount" "${counts[@]}"
