#!/usr/bin/env bash
# Unmodified HTTP servers (a C server on one epoll loop, bench/epollhttp.c; tiny_http on std threads, axum on tokio,
# Go's net/http: the test guests of tests/http.rs)
# under wrk, in one run, each three ways: in Kiln behind -p (user-mode network), in Kiln on a tap device in a network
# namespace this script makes, and natively on the host's loopback. Prints a markdown table: requests per second,
# latency percentiles, errors, VM exits per request (kiln --stats) and host CPU seconds per 1,000 requests
# (utime + stime of the kiln or native process).
#
#   bench/http.sh [SECONDS]      (default 30 per server and place; CONNECTIONS=64 THREADS=2 override wrk's,
#                                 MEMORY=256M kiln's --memory, SERVERS="epoll tiny_http axum go" which run)
#
# Needs root for the tap rows (skipped without it) and installs wrk with apt-get when it is missing.
set -euo pipefail
duration=${1:-30}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
memory=${MEMORY:-256M}
only=${SERVERS:-epoll tiny_http axum go}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q wrk >&2 || { apt-get update -q >&2 && apt-get install -y -q wrk >&2; }
fi

echo "bench: building the guests" >&2
(
  cd "$repo/tests/guests/rust"
  env -u RUSTFLAGS -u CARGO_BUILD_TARGET cargo build --release --locked --target x86_64-unknown-linux-musl \
    --target-dir "$out/guests" --bin http_tiny --bin http_axum >&2
)
rust_bin="$out/guests/x86_64-unknown-linux-musl/release"
(cd "$repo/tests/guests/go" && CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off GOCACHE="$out/go-cache" \
  go build -o "$out/go-http" .)

musl-gcc -static -O2 -o "$out/epollhttp" "$repo/bench/epollhttp.c"

# name, program, its arguments before the port (Go takes "serve PORT", the others "PORT")
servers=("epoll C|$out/epollhttp|" "tiny_http|$rust_bin/http_tiny|" "axum|$rust_bin/http_axum|" "go net/http|$out/go-http|serve")
# tiny_http runs a thread per connection; Kiln backs whole thread stacks with guest memory, so keep them small (the
# same everywhere, so that the three places run the same program).
program_env=(--env RUST_MIN_STACK=131072)
kiln_flags=(run --stats --cpus 2 --memory "$memory" "${program_env[@]}")

ns=kiln-bench-$$
tap=kbtap0
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

have_tap=0
if [ "$(id -u)" -eq 0 ] && ip netns add "$ns" 2>/dev/null; then
  ip -n "$ns" tuntap add dev "$tap" mode tap
  ip -n "$ns" addr add 10.0.4.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  ip -n "$ns" link set lo up
  have_tap=1
else
  echo "bench: not root or no network namespaces: the tap rows are left out" >&2
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# measure NAME WHERE URL NETNS STDERR_FILE: wrk against the running server $pid, then stop it, then one table row.
measure() {
  local name=$1 where=$2 url=$3 netns=$4 errfile=$5 exec=()
  [ -n "$netns" ] && exec=(ip netns exec "$netns")
  wait_ready "${exec[@]}" curl -sf --max-time 1 -o /dev/null "$url"
  local before after report
  before=$(cpu_ticks "$pid")
  report=$("${exec[@]}" wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url")
  after=$(cpu_ticks "$pid")
  # SIGTERM: kiln forwards it to the program, which dies of it; kiln then prints its --stats lines.
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "bench: $name ($where) still running 10 s after SIGTERM; killing it" >&2
    kill -KILL "$pid"
  fi
  wait "$pid" 2>/dev/null || true
  pid=
  local exits=""
  if [ -n "$errfile" ]; then
    exits=$(sed -n 's/^\[kiln\] \([0-9]*\) VM exits.*/\1/p' "$errfile")
    [ -n "$exits" ] || echo "bench: kiln printed no stats for $name ($where): $(tail -n 3 "$errfile")" >&2
  fi
  REPORT=$report python3 - "$name" "$where" "$((after - before))" "$(getconf CLK_TCK)" "$exits" <<'EOF'
import os, re, sys
name, where, ticks, hz, exits = sys.argv[1:]
r = os.environ["REPORT"]
def find(pattern, default="0"):
    m = re.search(pattern, r, re.M)
    return m.group(1) if m else default
requests = int(find(r"^\s*(\d+) requests in"))
rps = float(find(r"^Requests/sec:\s*([\d.]+)"))
p50 = find(r"^\s*50%\s+(\S+)", "?")
p99 = find(r"^\s*99%\s+(\S+)", "?")
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", find(r"^\s*Socket errors: (.*)$", "")))
non2xx = int(find(r"^\s*Non-2xx or 3xx responses: (\d+)"))
cpu = int(ticks) / int(hz) / requests * 1000 if requests else float("nan")
per_request = f"{int(exits) / requests:.2f}" if exits and requests else "-"
print(f"| {name} | {where} | {rps:,.0f} | {p50} | {p99} | {errors} | {non2xx} | {per_request} | {cpu:.3f} |")
EOF
}

echo "host: $(uname -r), $(nproc) CPUs; wrk -t$threads -c$connections -d${duration}s --latency, GET /; kiln --cpus 2 --memory $memory"
echo
echo "| server | where | req/s | p50 | p99 | socket errors | non-2xx | VM exits/request | host CPU s/1k requests |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for entry in "${servers[@]}"; do
  IFS='|' read -r name program pre <<<"$entry"
  case " $only " in *" ${name%% *} "*) ;; *) continue ;; esac
  pre_args=()
  [ -n "$pre" ] && pre_args=("$pre")

  port=$(free_port)
  "$KILN" "${kiln_flags[@]}" -p "127.0.0.1:$port:8080" "$program" "${pre_args[@]}" >/dev/null 2>"$out/http-kiln.err" &
  pid=$!
  measure "$name" "kiln -p" "http://127.0.0.1:$port/" "" "$out/http-kiln.err"

  if [ "$have_tap" = 1 ]; then
    # `ip netns exec` execs kiln, so $! is kiln itself.
    ip netns exec "$ns" "$KILN" "${kiln_flags[@]}" --net "tap:$tap" --ip 10.0.4.2/24 --gateway 10.0.4.1 \
      "$program" "${pre_args[@]}" >/dev/null 2>"$out/http-tap.err" &
    pid=$!
    measure "$name" "kiln tap" "http://10.0.4.2:8080/" "$ns" "$out/http-tap.err"
  fi

  port=$(free_port)
  RUST_MIN_STACK=131072 "$program" "${pre_args[@]}" "$port" >/dev/null &
  pid=$!
  measure "$name" "native" "http://127.0.0.1:$port/" "" ""
done
