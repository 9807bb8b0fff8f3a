#!/usr/bin/env bash
# Instances held by kilnd against `kiln run -d` (an instance process each) and crun (an OCI container each), in one
# run: for each N, N idle instances of the same static program (tests/guests/c/waiter.c, `musl-gcc -static -O2`,
# waiting in pause(); --net none and 25 MiB of guest memory for Kiln) started one after the other, then all removed.
# Prints starts per second (first start to the last one's return: kilnd's create answers once the VM runs, `kiln run
# -d` once the instance process has booted it, `crun run -d` once the container process runs) and the host memory
# each instance costs: for kilnd the growth of kilnd's PSS over its idle PSS, for the others the PSS of the
# processes holding the instances (from /proc/PID/smaps_rollup), divided by N. Kernel memory (page tables, KVM's
# structures, stacks) is not in PSS for any of them.
#
# Then, through kilnd, HTTP instances (tests/guests/c/flaky.c, answering every request; 25 MiB, user-mode network,
# a published port): start to first HTTP answer (median and 90th percentile of FIRST_ANSWERS one after the other)
# against `kiln run -d` without kilnd; and a service of ROLLING replicas (health-checked every 500 ms) brought up,
# then updated to a new version with --max-surge SURGE --max-unavailable 0 while one client sends request after
# request (each on a new connection) through the service's port: time to all ready, kilnd's PSS growth per replica,
# the update's time, requests sent and failed, and the service's removal (bench/kilnd_service.py).
#
#   bench/kilnd.sh [N...]      (default: 50 500 1000; crun needs root and is skipped without it)
#   ROLLING=100 SURGE=10 FIRST_ANSWERS=20 (defaults; ROLLING=0 or FIRST_ANSWERS=0 skip those parts)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -gt 0 ] && counts=("$@") || counts=(50 500 1000)
work="$out/kilnd"
rm -rf "$work" && mkdir -p "$work"
musl-gcc -static -O2 -o "$work/waiter" "$repo/tests/guests/c/waiter.c"
musl-gcc -static -O2 -o "$work/flaky" "$repo/tests/guests/c/flaky.c"
cc -O2 -o "$work/floor" "$repo/bench/floor.c"
rolling=${ROLLING:-100} surge=${SURGE:-10} first_answers=${FIRST_ANSWERS:-20}
for tool in curl; do command -v "$tool" >/dev/null || { echo "bench: no $tool" >&2; exit 1; }; done

pss_kib() { # PID...: summed PSS in KiB
  local total=0 v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
now_ms() { date +%s%3N; }
rate() { /usr/bin/python3 -c "import sys; n,ms=int(sys.argv[1]),int(sys.argv[2]); print(f'{n*1000/max(ms,1):.1f}')" "$@"; }
mib() { /usr/bin/python3 -c "import sys; print(f'{int(sys.argv[1])/int(sys.argv[2])/1024:.2f}')" "$@"; }

run_kilnd() { # N
  local n=$1 home="$work/kilnd-home" sock
  rm -rf "$home"; mkdir -p "$home"
  KILN_HOME="$home" "$KILN" daemon 2>"$work/kilnd.err" &
  local kpid=$!
  sock="$home/kilnd.sock"
  for _ in $(seq 300); do curl -sf --unix-socket "$sock" http://k/version >/dev/null && break; sleep 0.1; done
  local before start end after
  before=$(pss_kib "$kpid")
  start=$(now_ms)
  for i in $(seq "$n"); do
    curl -sf --unix-socket "$sock" -XPOST http://k/instances \
      -d "{\"image\":\"$work/waiter\",\"name\":\"w$i\",\"net\":\"none\",\"memory\":\"25M\"}" >/dev/null
  done
  end=$(now_ms)
  sleep 2
  after=$(pss_kib "$kpid")
  echo "| kilnd | $n | $(rate "$n" $((end - start))) | $(mib $((after - before)) "$n") |"
  kill "$kpid"; wait "$kpid" || true
}

run_detached() { # N
  local n=$1 home="$work/proc-home"
  rm -rf "$home"; mkdir -p "$home"
  local start end pids
  start=$(now_ms)
  for i in $(seq "$n"); do
    KILN_HOME="$home" "$KILN" run -d --name "w$i" --net none -m 25M "$work/waiter" >/dev/null
  done
  end=$(now_ms)
  sleep 2
  pids=$(cat "$home"/instances/*/record.json | /usr/bin/python3 -c 'import sys,json,re
for m in re.finditer(r"\"pid\": (\d+)", sys.stdin.read()): print(m.group(1))')
  # shellcheck disable=SC2086
  echo "| kiln run -d | $n | $(rate "$n" $((end - start))) | $(mib "$(pss_kib $pids)" "$n") |"
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
}

run_crun() { # N
  local n=$1 bundle="$work/bundle" start end pids=()
  rm -rf "$bundle"; mkdir -p "$bundle/rootfs"
  cp "$work/waiter" "$bundle/rootfs/waiter"
  (cd "$bundle" && crun spec)
  /usr/bin/python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/waiter"]; c["process"]["terminal"] = False
json.dump(c, open(p, "w"))
PY
  # Some hosts refuse containers with cgroups (crun: "cgroups in hybrid mode not supported"): said in the table.
  # Tried as is, then without a cgroup manager (with no cgroup resources or namespace in the spec).
  local why crun=(crun)
  if ! why=$(crun run -d --bundle "$bundle" kilnd-bench-probe </dev/null 2>&1); then
    /usr/bin/python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); linux = c["linux"]
linux.pop("resources", None); linux.pop("cgroupsPath", None)
linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "cgroup"]
json.dump(c, open(p, "w"))
PY
    crun=(crun --cgroup-manager=disabled)
    if ! why=$("${crun[@]}" run -d --bundle "$bundle" kilnd-bench-probe </dev/null 2>&1); then
      echo "| crun (also --cgroup-manager=disabled) | $n | could not start a container: $(echo "$why" | head -n1) | |"
      return 0
    fi
  fi
  "${crun[@]}" delete -f kilnd-bench-probe >/dev/null 2>&1 || true
  start=$(now_ms)
  for i in $(seq "$n"); do
    "${crun[@]}" run -d --bundle "$bundle" "kilnd-bench-$i" </dev/null >/dev/null 2>&1
  done
  end=$(now_ms)
  sleep 2
  for i in $(seq "$n"); do
    pids+=("$("${crun[@]}" state "kilnd-bench-$i" | /usr/bin/python3 -c 'import sys,json; print(json.load(sys.stdin)["pid"])')")
  done
  echo "| ${crun[*]} | $n | $(rate "$n" $((end - start))) | $(mib "$(pss_kib "${pids[@]}")" "$n") |"
  for i in $(seq "$n"); do "${crun[@]}" delete -f "kilnd-bench-$i" >/dev/null 2>&1 || true; done
}

run_floor() { # N: the bare-VM floor (bench/floor.c: a process that makes a KVM VM and runs one exit), one after the other
  local n=$1 start end
  start=$(now_ms)
  for _ in $(seq "$n"); do "$work/floor"; done
  end=$(now_ms)
  echo "| bare VM floor (a process each, then gone) | $n | $(rate "$n" $((end - start))) | |"
}

echo "load: $(uptime)"
echo
echo "| runtime | instances | starts/s | MiB per instance (PSS) |"
echo "|---|---|---|---|"
for n in "${counts[@]}"; do
  run_kilnd "$n"
  run_detached "$n"
  if [ "$(id -u)" = 0 ] && command -v crun >/dev/null; then run_crun "$n"; fi
  run_floor "$n"
done

run_services() { # kilnd with the HTTP instances and a service
  local home="$work/service-home" sock
  rm -rf "$home"; mkdir -p "$home"
  KILN_HOME="$home" "$KILN" daemon 2>"$work/kilnd-service.err" &
  local kpid=$!
  sock="$home/kilnd.sock"
  for _ in $(seq 300); do curl -sf --unix-socket "$sock" http://k/version >/dev/null && break; sleep 0.1; done
  if [ "$first_answers" -gt 0 ]; then
    echo
    echo "| start to first HTTP answer | instances | median ms | p90 ms |"
    echo "|---|---|---|---|"
    /usr/bin/python3 "$repo/bench/kilnd_service.py" first-answer "$sock" "$work/flaky" "$first_answers"
    KILN_HOME="$work/answer-home" /usr/bin/python3 "$repo/bench/kilnd_service.py" process-answer "$KILN" \
      "$work/flaky" "$first_answers"
  fi
  if [ "$rolling" -gt 0 ]; then
    echo
    echo "| replicas | surge | all ready | MiB per replica (kilnd PSS) | update | requests (answers) | failed | removal |"
    echo "|---|---|---|---|---|---|---|---|"
    /usr/bin/python3 "$repo/bench/kilnd_service.py" rolling "$sock" "$work/flaky" "$rolling" "$surge" "$kpid"
  fi
  kill "$kpid"; wait "$kpid" || true
}
run_services
echo
echo "load: $(uptime)"
