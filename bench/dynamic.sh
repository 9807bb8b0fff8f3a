#!/usr/bin/env bash
# Times dynamically linked programs under `kiln run` against their native runs, in one run, alternating, as whole
# processes: tests/guests/c/hello.c built by the host's cc (glibc, dynamic), and Debian's python3 -c pass with its
# standard library (--dir); then how many VM exits each makes.
#
#   bench/dynamic.sh [N]       N rounds, default 20
#
# Set KILN=/path/to/kiln to time a prebuilt binary instead of building `cargo build --release -p kiln`. The rewritten
# libraries come from kiln's cache after the warm-up round, as on any repeated run. Results belong in
# docs/benchmarks.md.
set -euo pipefail
rounds=${1:-20}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cc -O2 -o "$out/hello-dynamic" "$repo/tests/guests/c/hello.c"
cc -O2 -Wall -o "$out/timeit" "$repo/bench/timeit.c"
python=/usr/bin/python3
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
pyrun="$KILN run --memory 512M --dir $stdlib:$stdlib $python -c pass"

"$KILN" run "$out/hello-dynamic" >/dev/null 2>&1 || { echo "bench: '$KILN run $out/hello-dynamic' fails" >&2; exit 1; }
$pyrun || { echo "bench: '$pyrun' fails" >&2; exit 1; }

echo "host: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kiln: $("$KILN" --version 2>/dev/null || echo unknown)"
echo
"$out/timeit" "$rounds" "kiln-hello=$KILN run $out/hello-dynamic" "native-hello=$out/hello-dynamic" \
  "kiln-python=$pyrun" "native-python=$python -c pass"
echo
for what in "$KILN run --stats $out/hello-dynamic" "$KILN run --stats --memory 512M --dir $stdlib:$stdlib $python -c pass"; do
  echo "$(echo "$what" | awk '{print $NF == "pass" ? "python3 -c pass" : "hello-dynamic"}'): $($what 2>&1 >/dev/null | grep -E 'VM exits' | sed 's/^\[kiln\] //')"
done
