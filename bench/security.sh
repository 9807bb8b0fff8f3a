#!/usr/bin/env bash
# What seccomp and the jail cost `kiln run hello` at start-up (issue 19's aim: at most 0.3 ms): whole processes timed
# alternately in one run (bench/timeit.c), seccomp off against on against --jail, with the default user-mode network
# and with --net none (with seccomp on, the user-mode network's thread starts with the VM instead of at the guest's
# first frame, which hello never sends, so that cost shows apart). --jail needs root; without it those rows are left
# out.
#
#   bench/security.sh [N]      N rounds, default 30; KILN=/path/to/kiln to time a prebuilt binary
set -euo pipefail
rounds=${1:-30}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/hello" "$repo/tests/guests/c/hello.c"
cc -O2 -Wall -o "$out/timeit" "$repo/bench/timeit.c"
"$KILN" run "$out/hello" >/dev/null 2>&1 || { echo "bench: '$KILN run $out/hello' fails; run it by hand" >&2; exit 1; }

echo "host: $(uname -r), $(nproc) CPUs; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
commands=(
  "off=$KILN run --seccomp=off $out/hello"
  "on=$KILN run $out/hello"
  "off-nonet=$KILN run --seccomp=off --net none $out/hello"
  "on-nonet=$KILN run --net none $out/hello"
)
if [ "$(id -u)" = 0 ]; then
  commands+=("jail=$KILN run --jail $out/hello" "jail-nonet=$KILN run --jail --net none $out/hello")
else
  echo "(not root: no --jail rows)"
fi
"$out/timeit" "$rounds" "${commands[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
