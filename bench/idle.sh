#!/usr/bin/env bash
# What idle instances cost the host: starts N idle `kiln run -d` HTTP servers (tiny_http, the test guest of
# tests/http.rs, each on its own published port), waits for them to settle, sums the kiln processes' utime + stime
# (/proc/PID/stat) over SECONDS, and removes them; first with a kiln from before idle VMs stopped polling, then with
# this tree's, in the same run. Prints a markdown table: CPU in all (% of one core) and per instance, and how often
# their threads woke up (voluntary context switches).
#
#   bench/idle.sh [N] [SECONDS]      (default 1000 instances, 60 s; KILN_OLD=/path/to/kiln instead of building
#                                     OLD, a git revision, default the parent of the commit "Idle VMs block ...";
#                                     MEMORY=64M each (guest RAM is reserved, not committed); PORT_BASE=21000;
#                                     PARALLEL=4 starts at a time)
#
# Each instance is a process with a few threads and ~7 MB of host memory (the script counts 16 MB each and refuses a
# count the host's available memory cannot hold).
set -euo pipefail
count=${1:-1000}
seconds=${2:-60}
memory=${MEMORY:-64M}
port_base=${PORT_BASE:-21000}
parallel=${PARALLEL:-4}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
new_kiln="$out/kiln-idle-new"
cp "$KILN" "$new_kiln"

free_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if ((count * 16 * 1024 > free_kb)); then
  echo "bench: $count instances need about $((count * 16)) MB; only $((free_kb / 1024)) MB are available" >&2
  exit 1
fi

src=
ids=()
home=
cleanup() {
  if [ -n "${src:-}" ] && [ -d "$src" ]; then
    git -C "$repo" worktree remove --force "$src" 2>/dev/null || true
  fi
  if [ -n "$home" ] && [ ${#ids[@]} -gt 0 ]; then
    printf '%s\n' "${ids[@]}" | KILN_HOME="$home" xargs -n 100 "$kiln" rm -f >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

old_kiln=${KILN_OLD:-}
if [ -z "$old_kiln" ]; then
  rev=${OLD:-$(git -C "$repo" log -1 --format=%H --grep='^Idle VMs block instead of polling')^}
  echo "bench: building the old kiln ($(git -C "$repo" rev-parse --short "$rev"))" >&2
  # Outside the repository, whose workspace would otherwise claim the old tree's kernel/.
  src=$(mktemp -d "${TMPDIR:-/tmp}/kiln-idle-old.XXXXXX")
  git -C "$repo" worktree add --detach "$src" "$rev" >&2
  # A target directory of its own: Kiln's crates have the same artifact names in both trees, so cargo could take one
  # tree's for the other's. It starts from a copy of this tree's dependencies, without Kiln's crates' fingerprints.
  target="${CARGO_TARGET_DIR:-$repo/target}"
  old_target="$out/idle-old-target"
  rm -rf "$old_target"
  for d in release x86_64-unknown-linux-musl/release; do
    if [ -d "$target/$d" ]; then
      mkdir -p "$old_target/$d"
      cp -a "$target/$d/." "$old_target/$d/"
      rm -rf "$old_target/$d/.fingerprint"/kiln*
    fi
  done
  # Its own .cargo/config.toml applies from its directory.
  (cd "$src" && CARGO_TARGET_DIR="$old_target" cargo build --release --locked -p kiln >&2)
  old_kiln="$out/kiln-idle-old"
  cp "$old_target/x86_64-unknown-linux-musl/release/kiln" "$old_kiln"
  git -C "$repo" worktree remove --force "$src"
  rm -rf "$old_target"
fi

echo "bench: building the guest" >&2
(
  cd "$repo/tests/guests/rust"
  env -u RUSTFLAGS -u CARGO_BUILD_TARGET cargo build --release --locked --target x86_64-unknown-linux-musl \
    --target-dir "$out/guests" --bin http_tiny >&2
)
guest="$out/guests/x86_64-unknown-linux-musl/release/http_tiny"

# utime + stime of every pid given, in clock ticks: fields 14 and 15, counted after the command name (which may hold
# spaces) in parentheses. One awk for all, so that the sample is quick and costs the measured processes nothing.
ticks() {
  printf '/proc/%s/stat\n' "$@" | xargs awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }' 2>/dev/null |
    awk '{ t += $1 } END { print t + 0 }'
}

# Wake-ups of every thread of every pid given: a thread that sleeps again after waking has switched out voluntarily.
wakeups() {
  local pid
  for pid in "$@"; do printf '/proc/%s/task/*/status\n' "$pid"; done | xargs sh -c 'cat $@ 2>/dev/null' sh |
    awk '/^voluntary_ctxt_switches/ { t += $2 } END { print t + 0 }'
}

# measure KILN LABEL: sets `row` to "LABEL|instances|seconds|ticks". (Not in a subshell: the trap must see `ids`.)
measure() {
  kiln=$1
  home="$out/idle-home-$2"
  rm -rf "$home"
  mkdir -p "$home"
  export KILN_HOME="$home"
  echo "bench: starting $count instances with the $2 kiln" >&2
  ids=()
  local list="$out/idle-ids-$2"
  seq 0 $((count - 1)) | xargs -P "$parallel" -I{} sh -c \
    'p=$(('"$port_base"' + {})); "$0" run -d --name "idle-{}" --memory "$1" -p "127.0.0.1:$p:8080" \
      --env RUST_MIN_STACK=131072 "$2" 8080' \
    "$kiln" "$memory" "$guest" >"$list" || true
  mapfile -t ids <"$list"
  if [ ${#ids[@]} -ne "$count" ]; then
    echo "bench: only ${#ids[@]} of $count instances started" >&2
    exit 1
  fi
  local pids=() id
  for id in "${ids[@]}"; do
    pids+=("$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$home/instances/$id/record.json")")
  done
  # Every server answers: the instances are up and idle, not still booting.
  curl -sf -m 10 "http://127.0.0.1:$port_base/" >/dev/null
  curl -sf -m 10 "http://127.0.0.1:$((port_base + count - 1))/" >/dev/null
  sleep 5
  echo "bench: measuring for $seconds s" >&2
  local before after woken
  woken=$(wakeups "${pids[@]}")
  before=$(ticks "${pids[@]}")
  sleep "$seconds"
  after=$(ticks "${pids[@]}")
  woken=$(($(wakeups "${pids[@]}") - woken))
  local alive=0 pid
  for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=$((alive + 1)); done
  if [ "$alive" -ne "$count" ]; then
    echo "bench: only $alive of $count instances still run" >&2
    exit 1
  fi
  row="$2|$count|$seconds|$((after - before))|$woken"
  printf '%s\n' "${ids[@]}" | xargs -n 100 "$kiln" rm -f >/dev/null
  ids=()
}

rows=()
measure "$old_kiln" old
rows+=("$row")
measure "$new_kiln" new
rows+=("$row")
hz=$(getconf CLK_TCK)
echo
echo "| kiln | idle instances | measured | CPU (utime + stime) | of one core | per instance | thread wake-ups per s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
  IFS='|' read -r label n secs t w <<<"$row"
  awk -v l="$label" -v n="$n" -v s="$secs" -v t="$t" -v w="$w" -v hz="$hz" 'BEGIN {
    cpu = t / hz
    printf "| %s | %d | %d s | %.2f s | %.2f%% | %.1f us/s | %.1f |\n", l, n, s, cpu, 100 * cpu / s, 1e6 * cpu / s / n, w / s
  }'
done
