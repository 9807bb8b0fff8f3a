#!/usr/bin/env bash
# Debian's redis-server and nginx (dynamically linked, unmodified; the servers of tests/servers.rs, with the same
# configurations) natively on the host's loopback and in Kiln behind -p, side by side, one right after the other:
# redis under redis-benchmark (SET and GET one request per round trip, and SET pipelined 16 deep), nginx under wrk
# (GET of a 17-byte file). Prints a markdown table: requests per second, p50 latency, and Kiln's share of native.
#
#   bench/servers.sh [SECONDS]    (default 10: wrk's duration; redis-benchmark makes REQUESTS=200000 requests per
#                                  test; CONNECTIONS=50 clients for both; CPUS=1 kiln's --cpus; MEMORY=256M)
#
# Needs redis-server (with redis-tools), nginx and wrk: scripts/setup.sh installs them.
set -euo pipefail
duration=${1:-10}
requests=${REQUESTS:-200000}
connections=${CONNECTIONS:-50}
cpus=${CPUS:-1}
memory=${MEMORY:-256M}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in redis-server redis-benchmark redis-cli nginx wrk; do
  command -v "$tool" >/dev/null || { echo "bench: no $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done

work="$out/servers"
rm -rf "$work"
mkdir -p "$work/www" "$work/tmp"
printf 'hello from nginx\n' >"$work/www/index.html"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n' >"$work/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/group"
nginx_conf() { # PORT ROOT TMP
  cat <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log stderr notice;
pid $3/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $3/client_body;
  proxy_temp_path $3/proxy;
  fastcgi_temp_path $3/fastcgi;
  uwsgi_temp_path $3/uwsgi;
  scgi_temp_path $3/scgi;
  server {
    listen $1;
    root $2;
  }
}
EOF
}
redis_args=(--daemonize no --save '' --appendonly no --bind 0.0.0.0 --protected-mode no --port)
kiln_run=("$KILN" run --cpus "$cpus" --memory "$memory")

pid=
cleanup() { if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_ready COMMAND...: until COMMAND succeeds (60 s at most: a first kiln run rewrites the libraries) or $pid is gone.
wait_ready() {
  for _ in $(seq 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: the server died before answering" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: no answer within 60 s" >&2
  return 1
}

stop() {
  kill -TERM "$pid"
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "bench: still running 15 s after SIGTERM; killing it" >&2; kill -KILL "$pid"; }
  wait "$pid" 2>/dev/null || true
  pid=
}

rows="$work/rows"
: >"$rows"

# redis WHERE: start redis there, run redis-benchmark against it, one line per test into $rows.
redis() {
  local port
  port=$(free_port)
  if [ "$1" = native ]; then
    (cd "$work/tmp" && exec redis-server "${redis_args[@]}" "$port") >"$work/redis-$1.log" 2>&1 &
  else
    "${kiln_run[@]}" -p "127.0.0.1:$port:6379" /usr/bin/redis-server "${redis_args[@]}" 6379 >"$work/redis-$1.log" 2>&1 &
  fi
  pid=$!
  wait_ready redis-cli -p "$port" ping
  for pipeline in 1 16; do
    local tests=set,get
    [ "$pipeline" -gt 1 ] && tests=set
    redis-benchmark -p "$port" -c "$connections" -n "$requests" -P "$pipeline" -t "$tests" --csv 2>/dev/null |
      tr -d '"' | awk -F, -v where="$1" -v p="$pipeline" \
        '$1 != "test" { printf "redis %s%s|%s|%s|%s\n", $1, (p > 1 ? " -P " p : ""), where, $2, $5 }' >>"$rows"
  done
  stop
}

# nginx WHERE: start nginx there, run wrk against it, one line into $rows.
nginx_row() {
  local port report
  port=$(free_port)
  if [ "$1" = native ]; then
    nginx_conf "$port" "$work/www" "$work/tmp" >"$work/native.conf"
    nginx -e stderr -p "$work" -c "$work/native.conf" >"$work/nginx-$1.log" 2>&1 &
  else
    nginx_conf 8080 /www /tmp >"$work/kiln.conf"
    "${kiln_run[@]}" -p "127.0.0.1:$port:8080" --dir "$work/www:/www" --file "$work/kiln.conf:/etc/nginx-test.conf" \
      --file "$work/passwd:/etc/passwd" --file "$work/group:/etc/group" \
      /usr/sbin/nginx -e stderr -p / -c /etc/nginx-test.conf >"$work/nginx-$1.log" 2>&1 &
  fi
  pid=$!
  local url="http://127.0.0.1:$port/index.html"
  wait_ready curl -sf --max-time 1 -o /dev/null "$url"
  report=$(wrk -t2 -c"$connections" -d"${duration}s" --latency "$url")
  stop
  REPORT=$report python3 - "$1" >>"$rows" <<'EOF'
import os, re, sys
r = os.environ["REPORT"]
rps = re.search(r"^Requests/sec:\s*([\d.]+)", r, re.M).group(1)
p50 = re.search(r"^\s*50%\s+(\S+)", r, re.M).group(1)
bad = re.search(r"^\s*(Socket errors: .*|Non-2xx or 3xx responses: \d+)$", r, re.M)
if bad:
    print(f"bench: nginx ({sys.argv[1]}): {bad.group(1)}", file=sys.stderr)
print(f"nginx GET /index.html (wrk)|{sys.argv[1]}|{rps}|{p50}")
EOF
}

echo "bench: redis natively, then in kiln" >&2
redis native
redis kiln
echo "bench: nginx natively, then in kiln" >&2
nginx_row native
nginx_row kiln

echo
echo "host: $(uname -r), $(nproc) CPUs; kiln --cpus $cpus --memory $memory -p; $connections connections;" \
  "redis-benchmark -n $requests; wrk -t2 -d${duration}s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$rows" <<'EOF'
import sys
rows = [line.rstrip("\n").split("|") for line in open(sys.argv[1]) if line.strip()]
print("| case | native req/s | kiln req/s | kiln / native | native p50 | kiln p50 |")
print("|---|---:|---:|---:|---:|---:|")
cases = list(dict.fromkeys(r[0] for r in rows))
for case in cases:
    got = {r[1]: r for r in rows if r[0] == case}
    n, k = got.get("native"), got.get("kiln")
    if not n or not k:
        print(f"| {case} | {n[2] if n else '-'} | {k[2] if k else '-'} | - | - | - |")
        continue
    ratio = float(k[2]) / float(n[2]) if float(n[2]) else float("nan")
    unit = "" if case.startswith("nginx") else " ms"
    print(f"| {case} | {float(n[2]):,.0f} | {float(k[2]):,.0f} | {ratio:.2f}x | {n[3]}{unit} | {k[3]}{unit} |")
EOF
