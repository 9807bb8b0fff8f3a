#!/usr/bin/env bash
# Fresh anonymous memory in Kiln against native, in one run: the cost of a first touch per 4 KiB page in each kind
# of anonymous memory (bench/memtouch.c) in VMs of 64 MiB, 256 MiB and 1 GiB; two heap-heavy programs timed as whole
# processes, alternating with their native runs (bench/goalloc.go: 1 GiB in 64-byte Go objects; tests/guests/rust
# `hashmap`: a 200 MB HashMap built by insertion); and what an idle HTTP server (tests/guests/rust `http_tiny`, one
# request answered) holds of the host's memory in a 64 MiB and a 256 MiB VM (Pss of /proc/PID/smaps_rollup).
#
#   bench/memory.sh [ROUNDS]      (default 5 first-touch runs of each kind per VM size, ROUNDS/2 (at least 3) timed
#                                  rounds of the heap programs; MIB=16 MiB touched per kind; KILN=/path/to/kiln)
#
# Prints markdown tables; figures belong in docs/benchmarks.md. The shadow faults come from `kiln run --stats`.
set -euo pipefail
rounds=${1:-5}
heap_rounds=$((rounds / 2 < 3 ? 3 : rounds / 2))
mib=${MIB:-16}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "bench: building the guests" >&2
musl-gcc -static -O2 -Wall -o "$out/memtouch" "$repo/bench/memtouch.c"
cc -O2 -Wall -o "$out/timeit" "$repo/bench/timeit.c"
CGO_ENABLED=0 GOCACHE="$out/go-cache" GO111MODULE=off go build -o "$out/goalloc" "$repo/bench/goalloc.go"
(
  cd "$repo/tests/guests/rust"
  env -u RUSTFLAGS -u CARGO_BUILD_TARGET cargo build --release --locked --target x86_64-unknown-linux-musl \
    --target-dir "$out/guests" --bin hashmap --bin http_tiny >&2
)
rust_bin="$out/guests/x86_64-unknown-linux-musl/release"

echo "host: $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kiln: $("$KILN" --version 2>/dev/null || echo unknown)"
echo

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# touch KIND [MEMORY]: the median ns/page of `rounds` runs, natively without MEMORY; in Kiln, also the shadow faults of
# the first run.
touch_cost() {
  local kind=$1 memory=${2:-} i line costs=() faults=
  for ((i = 0; i < rounds; i++)); do
    if [ -z "$memory" ]; then
      line=$("$out/memtouch" "$mib" "$kind")
    else
      line=$("$KILN" run --stats --memory "$memory" "$out/memtouch" "$mib" "$kind" 2>"$out/memtouch.err")
      [ -n "$faults" ] || faults=$(sed -n 's/^\[kiln\] \([0-9]*\) guest page faults.*/\1/p' "$out/memtouch.err")
    fi
    costs+=("$(awk '{ print $4 }' <<<"$line")")
  done
  cost=$(printf '%s\n' "${costs[@]}" | median)
  touch_faults=$faults
}

echo "First touch of $mib MiB, one write per 4 KiB page: median ns/page of $rounds runs (x native; shadow faults)"
echo
echo "| memory | native | Kiln 64M | Kiln 256M | Kiln 1G |"
echo "|---|---:|---:|---:|---:|"
for kind in mmap thp fixed reserve brk bss; do
  touch_cost "$kind"
  native=$cost
  row="| $kind | $native"
  for memory in 64M 256M 1G; do
    touch_cost "$kind" "$memory"
    row+=" | $cost ($(awk -v a="$cost" -v b="$native" 'BEGIN { printf "%.2fx", a / b }'); ${touch_faults:-?})"
  done
  echo "$row |"
done
echo

echo "Heap-heavy programs, whole processes, alternating ($heap_rounds rounds):"
echo
echo '```'
"$out/timeit" "$heap_rounds" "native=$out/goalloc" "kiln=$KILN run --memory 2G --cpus 2 $out/goalloc"
echo '```'
echo "(goalloc: 1 GiB in 64-byte objects; Kiln with --memory 2G --cpus 2, natively on $(nproc) CPUs)"
"$KILN" run --stats --memory 2G --cpus 2 "$out/goalloc" 2>&1 | grep -E 'goalloc:|faults|VM exits' | sed 's/^/    /'
echo
echo '```'
"$out/timeit" "$heap_rounds" "native=$rust_bin/hashmap" "kiln=$KILN run --memory 512M $rust_bin/hashmap"
echo '```'
echo "(hashmap: 6.5 M entries, 200 MB; Kiln with --memory 512M)"
"$KILN" run --stats --memory 512M "$rust_bin/hashmap" 2>&1 | grep -E 'hashmap:|faults|VM exits' | sed 's/^/    /'
echo

# pss MEMORY: Pss, Pss_Anon and AnonHugePages (KiB) of an idle http_tiny in Kiln (or natively without MEMORY), one
# request answered.
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true' EXIT
pss() {
  local memory=${1:-} port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ -z "$memory" ]; then
    RUST_MIN_STACK=131072 "$rust_bin/http_tiny" "$port" >/dev/null 2>&1 &
  else
    "$KILN" run --memory "$memory" -p "127.0.0.1:$port:8080" --env RUST_MIN_STACK=131072 "$rust_bin/http_tiny" 8080 \
      >/dev/null 2>&1 &
  fi
  pid=$!
  wait_ready curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port/"
  sleep 2
  awk '/^(Pss|Pss_Anon|AnonHugePages):/ { v[$1] = $2 } END { printf "%.1f | %.1f | %.1f", v["Pss:"] / 1024, v["Pss_Anon:"] / 1024, v["AnonHugePages:"] / 1024 }' \
    "/proc/$pid/smaps_rollup"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}

echo "An idle http_tiny, one request answered: host memory in MiB (/proc/PID/smaps_rollup)"
echo
echo "| where | Pss | Pss_Anon | AnonHugePages |"
echo "|---|---:|---:|---:|"
echo "| native | $(pss) |"
for memory in 64M 256M; do
  echo "| Kiln --memory $memory | $(pss "$memory") |"
done
