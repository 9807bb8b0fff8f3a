#!/usr/bin/env bash
# Debian's redis-server and nginx (dynamically linked, unmodified; the servers of tests/servers.rs, with the same
# configurations) natively on the host's loopback, in Kiln behind -p (the user-mode network) and, as root, in Kiln on
# a tap device in a network namespace the script makes (the clients run in it), one right after the other: redis
# under redis-benchmark (SET and GET one request per round trip, and SET pipelined 16 deep), nginx under wrk (GET of
# a 17-byte file). Prints a markdown table: requests per second, Kiln's share of native, p50 latency, and the host
# CPU the server's process (all its threads: for Kiln the vCPU, the user-mode network's or the tap's) took per
# request.
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

ns=kiln-servers-$$
tap=kstap0
tap_ip=10.0.5.2
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

wheres=(native kiln)
if [ "$(id -u)" -eq 0 ] && ip netns add "$ns" 2>/dev/null; then
  ip -n "$ns" tuntap add dev "$tap" mode tap
  ip -n "$ns" addr add 10.0.5.1/24 dev "$tap"
  ip -n "$ns" link set "$tap" up
  ip -n "$ns" link set lo up
  wheres+=(tap)
else
  echo "bench: not root or no network namespaces: the tap rows are left out" >&2
fi
kiln_tap=(ip netns exec "$ns" "${kiln_run[@]}" --net "tap:$tap" --ip "$tap_ip/24" --gateway 10.0.5.1)

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
ticks=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

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
  local port=6379 host=127.0.0.1 client=()
  case $1 in
    native)
      port=$(free_port)
      (cd "$work/tmp" && exec redis-server "${redis_args[@]}" "$port") >"$work/redis-$1.log" 2>&1 &
      ;;
    kiln)
      port=$(free_port)
      "${kiln_run[@]}" -p "127.0.0.1:$port:6379" /usr/bin/redis-server "${redis_args[@]}" 6379 >"$work/redis-$1.log" 2>&1 &
      ;;
    tap)
      host=$tap_ip
      client=(ip netns exec "$ns")
      # `ip netns exec` execs kiln, so $! is kiln itself.
      "${kiln_tap[@]}" /usr/bin/redis-server "${redis_args[@]}" 6379 >"$work/redis-$1.log" 2>&1 &
      ;;
  esac
  pid=$!
  wait_ready "${client[@]}" redis-cli -h "$host" -p "$port" ping
  for pipeline in 1 16; do
    local tests=set,get
    [ "$pipeline" -gt 1 ] && tests=set
    for test in ${tests//,/ }; do
      local before after
      before=$(cpu_ticks "$pid")
      "${client[@]}" redis-benchmark -h "$host" -p "$port" -c "$connections" -n "$requests" -P "$pipeline" -t "$test" \
        --csv 2>/dev/null | tr -d '"' | awk -F, -v where="$1" -v p="$pipeline" \
        '$1 != "test" { printf "redis %s%s|%s|%s|%s", $1, (p > 1 ? " -P " p : ""), where, $2, $5 }' >>"$rows"
      after=$(cpu_ticks "$pid")
      echo "|$(((after - before) * 1000000 / ticks / requests))" >>"$rows"
    done
  done
  stop
}

# nginx WHERE: start nginx there, run wrk against it, one line into $rows.
nginx_row() {
  local port=8080 host=127.0.0.1 client=() run=() report before after
  nginx_conf 8080 /www /tmp >"$work/kiln.conf"
  case $1 in
    native)
      port=$(free_port)
      nginx_conf "$port" "$work/www" "$work/tmp" >"$work/native.conf"
      nginx -e stderr -p "$work" -c "$work/native.conf" >"$work/nginx-$1.log" 2>&1 &
      ;;
    kiln | tap)
      if [ "$1" = kiln ]; then
        port=$(free_port)
        run=("${kiln_run[@]}" -p "127.0.0.1:$port:8080")
      else
        host=$tap_ip
        client=(ip netns exec "$ns")
        run=("${kiln_tap[@]}")
      fi
      "${run[@]}" --dir "$work/www:/www" --file "$work/kiln.conf:/etc/nginx-test.conf" \
        --file "$work/passwd:/etc/passwd" --file "$work/group:/etc/group" \
        /usr/sbin/nginx -e stderr -p / -c /etc/nginx-test.conf >"$work/nginx-$1.log" 2>&1 &
      ;;
  esac
  pid=$!
  local url="http://$host:$port/index.html"
  wait_ready "${client[@]}" curl -sf --max-time 1 -o /dev/null "$url"
  before=$(cpu_ticks "$pid")
  report=$("${client[@]}" wrk -t2 -c"$connections" -d"${duration}s" --latency "$url")
  after=$(cpu_ticks "$pid")
  stop
  REPORT=$report python3 - "$1" "$((after - before))" "$ticks" >>"$rows" <<'EOF'
import os, re, sys
r = os.environ["REPORT"]
rps = re.search(r"^Requests/sec:\s*([\d.]+)", r, re.M).group(1)
total = int(re.search(r"^\s*(\d+) requests in", r, re.M).group(1))
p50 = re.search(r"^\s*50%\s+(\S+)", r, re.M).group(1)
bad = re.search(r"^\s*(Socket errors: .*|Non-2xx or 3xx responses: \d+)$", r, re.M)
if bad:
    print(f"bench: nginx ({sys.argv[1]}): {bad.group(1)}", file=sys.stderr)
cpu_us = int(sys.argv[2]) * 1_000_000 // int(sys.argv[3]) // max(total, 1)
print(f"nginx GET /index.html (wrk)|{sys.argv[1]}|{rps}|{p50}|{cpu_us}")
EOF
}

for where in "${wheres[@]}"; do
  echo "bench: redis ($where)" >&2
  redis "$where"
done
for where in "${wheres[@]}"; do
  echo "bench: nginx ($where)" >&2
  nginx_row "$where"
done

echo
echo "host: $(uname -r), $(nproc) CPUs; kiln --cpus $cpus --memory $memory; $connections connections;" \
  "redis-benchmark -n $requests; wrk -t2 -d${duration}s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$rows" "${wheres[@]}" <<'EOF'
import sys
rows = [line.rstrip("\n").split("|") for line in open(sys.argv[1]) if line.strip()]
wheres = sys.argv[2:]
names = {"native": "native", "kiln": "kiln -p", "tap": "kiln tap"}
head = ["case"] + [f"{names[w]} req/s" for w in wheres] + [f"{names[w]} / native" for w in wheres[1:]]
head += [f"{names[w]} p50" for w in wheres] + [f"{names[w]} CPU us/req" for w in wheres]
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|" * (len(head) - 1))
for case in dict.fromkeys(r[0] for r in rows):
    got = {r[1]: r for r in rows if r[0] == case}
    unit = "" if case.startswith("nginx") else " ms"
    def cell(w, i, f=str):
        return f(got[w][i]) if w in got and len(got[w]) > i else "-"
    n = float(got["native"][2]) if "native" in got else 0
    rps = [cell(w, 2, lambda v: f"{float(v):,.0f}") for w in wheres]
    ratios = [cell(w, 2, lambda v: f"{float(v) / n:.2f}x" if n else "-") for w in wheres[1:]]
    p50 = [cell(w, 3, lambda v: v + unit) for w in wheres]
    cpu = [cell(w, 4) for w in wheres]
    print("| " + " | ".join([case] + rps + ratios + p50 + cpu) + " |")
EOF
