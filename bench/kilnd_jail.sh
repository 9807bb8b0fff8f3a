#!/usr/bin/env bash
# kilnd's jailed instances ("jail": true: a jailed process of its own that kilnd supervises, docs/security.md) against
# its default ones (a VM on kilnd's threads), in one kilnd and one run. First ROUNDS rounds, alternating the two: the
# create's time (POST /instances to its 201, which comes once the VM has booted, jailed or not) and the removal's
# (DELETE ?force=true: SIGKILL, the end recorded, the record gone), median and minimum of each. Then N idle instances
# of each kind held at once, and the host memory each costs: kilnd's PSS growth, plus for jailed ones the PSS of their
# processes (the jail's parent and the jailed VMM, /proc/PID/smaps_rollup), divided by N. The program is
# tests/guests/c/waiter.c (musl-gcc -static -O2) waiting in pause(), --net none, 25 MiB of guest memory. Needs root.
#
#   bench/kilnd_jail.sh [ROUNDS] [N]      (defaults: 20 rounds, 50 instances)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rounds=${1:-20} n=${2:-50}
[ "$(id -u)" = 0 ] || { echo "bench: jailed instances need root" >&2; exit 1; }
work="$out/kilnd_jail"
rm -rf "$work" && mkdir -p "$work"
musl-gcc -static -O2 -o "$work/waiter" "$repo/tests/guests/c/waiter.c"
home="$work/home" && mkdir -p "$home"
KILN_HOME="$home" "$KILN" daemon 2>"$work/kilnd.err" &
kpid=$!
trap 'kill "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null || true' EXIT
sock="$home/kilnd.sock"
for _ in $(seq 300); do curl -sf --unix-socket "$sock" http://k/version >/dev/null && break; sleep 0.1; done

# ms NAME JAIL: creates instance NAME (jailed if JAIL is true) and prints the create's time in ms.
create_ms() {
  curl -sf --unix-socket "$sock" -o /dev/null -w '%{time_total}\n' -XPOST http://k/instances \
    -d "{\"image\":\"$work/waiter\",\"name\":\"$1\",\"net\":\"none\",\"memory\":\"25M\",\"jail\":$2}" |
    /usr/bin/python3 -c 'import sys; print(f"{float(sys.stdin.read()) * 1000:.1f}")'
}
remove_ms() {
  curl -sf --unix-socket "$sock" -o /dev/null -w '%{time_total}\n' -XDELETE "http://k/instances/$1?force=true" |
    /usr/bin/python3 -c 'import sys; print(f"{float(sys.stdin.read()) * 1000:.1f}")'
}
stats() { /usr/bin/python3 -c 'import sys, statistics as s; v=[float(x) for x in sys.argv[1:]]; print(f"{s.median(v):.1f} | {min(v):.1f}")' "$@"; }
pss_kib() { # PID...: summed PSS in KiB
  local total=0 v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
descendants() { local p; for p in $(pgrep -P "$1" || true); do echo "$p"; descendants "$p"; done; }

declare -A created removed
for r in $(seq "$rounds"); do
  for jail in false true; do
    created[$jail]+=" $(create_ms "r$r-$jail" "$jail")"
    removed[$jail]+=" $(remove_ms "r$r-$jail")"
  done
done
echo "load: $(uptime)"
echo
echo "| kilnd instance ($rounds rounds, alternated) | create median ms | create min ms | rm -f median ms | rm -f min ms |"
echo "|---|---:|---:|---:|---:|"
for jail in false true; do
  [ "$jail" = true ] && what='jailed ("jail": true: a jailed process kilnd supervises)' || what="on kilnd's threads (default)"
  # shellcheck disable=SC2086
  echo "| $what | $(stats ${created[$jail]}) | $(stats ${removed[$jail]}) |"
done

echo
echo "| kilnd instances held at once | instances | MiB per instance (PSS) |"
echo "|---|---:|---:|"
for jail in false true; do
  before=$(pss_kib "$kpid")
  for i in $(seq "$n"); do create_ms "h$i-$jail" "$jail" >/dev/null; done
  sleep 2
  # shellcheck disable=SC2046
  after=$(($(pss_kib "$kpid") + $(pss_kib $(descendants "$kpid"))))
  [ "$jail" = true ] && what="jailed (kilnd's growth + their processes)" || what="on kilnd's threads (kilnd's growth)"
  echo "| $what | $n | $(/usr/bin/python3 -c "import sys; print(f'{($after - $before) / $n / 1024:.2f}')") |"
  for i in $(seq "$n"); do remove_ms "h$i-$jail" >/dev/null; done
done
echo
echo "load: $(uptime)"
