#!/usr/bin/env bash
# Scale to zero and back: an idle HTTP server (bench/epollhttp.c, one epoll loop, static musl) snapshotted with
# `kiln snapshot`, then `kiln restore`d to its first HTTP answer, side by side with a cold `kiln run` of the same
# server to its first answer (rewrite cache warm, as for any repeated run), in alternating rounds. Also prints the
# snapshot's size (apparent and on disk) and how long `kiln snapshot` took.
#
#   bench/snapshot.sh [ROUNDS]      (default 20; MEMORY=64M kiln's --memory, PORT=18480 the published port)
#
# Both are timed from the start of the process to a complete answer to GET / through the published port
# (bench/first_answer.py). The restores all restore one file, which is in the host's page cache after the first.
set -euo pipefail
rounds=${1:-20}
memory=${MEMORY:-64M}
port=${PORT:-18480}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -o "$out/epollhttp" "$repo/bench/epollhttp.c"
snap="$out/epollhttp.snap"
rm -rf "$KILN_HOME" "$snap"
run=("$KILN" run --memory "$memory" -p "127.0.0.1:$port:8080" "$out/epollhttp" 8080)

echo "host: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
# The instance to snapshot: up, and answering once (its first request's pages are in the snapshot, as for a server
# that served before it was scaled to zero).
"$KILN" run -d --name snapbench --memory "$memory" -p "127.0.0.1:$port:8080" "$out/epollhttp" 8080 >/dev/null
pid=$("$KILN" inspect snapbench | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["pid"])')
wait_ready curl -sf "http://127.0.0.1:$port/"
start=$EPOCHREALTIME
"$KILN" snapshot snapbench "$snap" >/dev/null
took=$(python3 -c "print(f'{($EPOCHREALTIME - $start) * 1000:.1f}')")
apparent=$(stat -c %s "$snap")
on_disk=$(( $(stat -c %b "$snap") * $(stat -c %B "$snap") ))
echo "snapshot of the idle server (--memory $memory): $((apparent >> 20)) MiB apparent, $((on_disk >> 10)) KiB on disk;" \
  "kiln snapshot took $took ms (pause, write, fdatasync, the instance's end)"
echo
echo "first answer, $rounds alternating rounds:"
python3 "$repo/bench/first_answer.py" "$rounds" "$port" "cold kiln run=${run[*]}" "kiln restore=$KILN restore $snap"
"$KILN" rm -f snapbench >/dev/null 2>&1 || true
