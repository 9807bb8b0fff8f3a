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
# In the same rounds, through two kilnds (`kiln daemon`, each in a Kiln home of its own), one with VMs made ahead of
# time (`--ready-vms READY`, default 4) and one without (`--ready-vms 0`): the restore of the same file
# (`POST /instances/restore`) and a create of the same server (`POST /instances`), each timed from the request to
# the first answer, the instance removed after it.
set -euo pipefail
rounds=${1:-20}
memory=${MEMORY:-64M}
port=${PORT:-18480}
ready=${READY:-4}
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
"$KILN" rm -f snapbench >/dev/null 2>&1 || true

kilnd_pids=()
trap 'kill "${kilnd_pids[@]}" 2>/dev/null; wait' EXIT
start_kilnd() { # NAME READY_VMS
  local home="$out/kilnd-$1"
  rm -rf "$home" && mkdir -p "$home"
  KILN_HOME="$home" "$KILN" daemon --stop-instances --ready-vms "$2" 2>"$out/kilnd-$1.err" &
  kilnd_pids+=($!)
  for _ in $(seq 300); do
    curl -sf --unix-socket "$home/kilnd.sock" http://k/version >/dev/null && return 0
    sleep 0.1
  done
  echo "bench: kilnd $1 did not start ($out/kilnd-$1.err)" >&2
  return 1
}
start_kilnd ready "$ready"
start_kilnd none 0
kilnd=(
  "kilnd restore, $ready ready VMs=kilnd-restore $out/kilnd-ready/kilnd.sock $snap"
  "kilnd restore, none ready=kilnd-restore $out/kilnd-none/kilnd.sock $snap"
  "kilnd create, $ready ready VMs=kilnd-create $out/kilnd-ready/kilnd.sock $memory $out/epollhttp 8080"
  "kilnd create, none ready=kilnd-create $out/kilnd-none/kilnd.sock $memory $out/epollhttp 8080"
)
# A first round untimed: each kilnd's rewrite cache (in its home) gets the server.
python3 "$repo/bench/first_answer.py" 1 "$port" "${kilnd[@]}" >/dev/null
echo
echo "first answer, $rounds alternating rounds (load $(cut -d' ' -f1-3 /proc/loadavg) at the start):"
python3 "$repo/bench/first_answer.py" "$rounds" "$port" "cold kiln run=${run[*]}" "kiln restore=$KILN restore $snap" \
  "${kilnd[@]}"
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
