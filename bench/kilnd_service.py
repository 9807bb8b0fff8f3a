#!/usr/bin/python3
"""kilnd's services and first answers, for bench/kilnd.sh (which starts kilnd and builds the HTTP guest).

  kilnd_service.py first-answer SOCKET FLAKY K    start to first HTTP answer of K instances, one after the other
  kilnd_service.py process-answer KILN FLAKY K    the same with `kiln run -d` (an instance process each, no kilnd)
  kilnd_service.py rolling SOCKET FLAKY N SURGE   N replicas, then a rolling update under a hammering client

Each prints Markdown table rows. The guest is tests/guests/c/flaky.c, answering every request with its body.
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("kilnd")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    conn = UnixConnection(sock)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    if answer.status >= 400:
        raise RuntimeError(f"{method} {path}: {answer.status} {data.decode()}")
    return json.loads(data) if data.strip() else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, timeout=20.0):
    """One HTTP/1.0 GET on a new connection: the body of a 200, else raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200 "):
        raise RuntimeError(f"answer {data[:80]!r}")
    return body.decode()


def until_answer(port, limit=30.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            get(port, timeout=1.0)
            return
        except (OSError, RuntimeError):
            time.sleep(0.0005)
    raise RuntimeError(f"no answer on {port} within {limit} s")


def summary(label, times_ms):
    times_ms.sort()
    p90 = times_ms[min(len(times_ms) - 1, int(len(times_ms) * 0.9))]
    print(f"| {label} | {len(times_ms)} | {statistics.median(times_ms):.1f} | {p90:.1f} |")


def first_answer(sock, flaky, k):
    times = []
    for _ in range(k):
        port = free_port()
        body = {"image": flaky, "args": ["1000000000", "ok"], "memory": "25M",
                "publish": [f"127.0.0.1:{port}:80"]}
        start = time.monotonic()
        created = call(sock, "POST", "/instances", body)
        until_answer(port)
        times.append((time.monotonic() - start) * 1000)
        call(sock, "DELETE", f"/instances/{created['id']}?force=true")
    summary("kilnd (API create → first HTTP 200)", times)


def process_answer(kiln, flaky, k):
    times = []
    for i in range(k):
        port = free_port()
        start = time.monotonic()
        out = subprocess.run([kiln, "run", "-d", "-m", "25M", "-p", f"127.0.0.1:{port}:80", flaky, "1000000000", "ok"],
                             check=True, capture_output=True, text=True)
        until_answer(port)
        times.append((time.monotonic() - start) * 1000)
        subprocess.run([kiln, "rm", "-f", out.stdout.strip()], check=True, capture_output=True)
    summary("kiln run -d, no kilnd (command → first HTTP 200)", times)


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def status(sock, name):
    return call(sock, "GET", f"/services/{name}")


def wait_settled(sock, name, phases, limit=600.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        s = status(sock, name)
        if s["phase"] in phases and s["ready"] == s["replicas"] and len(s["running"]) == s["replicas"]:
            return s
        time.sleep(0.1)
    raise RuntimeError(f"service {name} did not settle within {limit} s: {s['phase']} {s['ready']}/{s['replicas']}")


def rolling(sock, flaky, n, surge, kilnd_pid):
    port = free_port()
    health = {"check": f"http:{port}/", "interval_ms": 500, "timeout_ms": 2000, "retries": 3}
    body = {"name": "bench", "image": flaky, "args": ["1000000000", "v1"], "replicas": n, "memory": "25M",
            "publish": [f"127.0.0.1:{port}:80"], "health": health, "max_surge": surge, "max_unavailable": 0,
            "monitor_ms": 120000}
    idle = pss_kib(kilnd_pid)
    start = time.monotonic()
    call(sock, "POST", "/services", body)
    wait_settled(sock, "bench", ["steady"])
    up = time.monotonic() - start
    time.sleep(2)
    per_replica = (pss_kib(kilnd_pid) - idle) / n / 1024
    stop = threading.Event()
    seen = {"sent": 0, "failed": 0, "bodies": {}, "errors": []}

    def hammer():
        while not stop.is_set():
            seen["sent"] += 1
            try:
                b = get(port)
                seen["bodies"][b] = seen["bodies"].get(b, 0) + 1
            except (OSError, RuntimeError) as e:
                seen["failed"] += 1
                if len(seen["errors"]) < 3:
                    seen["errors"].append(str(e))

    thread = threading.Thread(target=hammer)
    thread.start()
    time.sleep(1)
    start = time.monotonic()
    call(sock, "POST", "/services/bench/update", {"args": ["1000000000", "v2"]})
    settled = wait_settled(sock, "bench", ["steady", "rolled-back"])
    took = time.monotonic() - start
    time.sleep(1)
    stop.set()
    thread.join()
    start = time.monotonic()
    call(sock, "DELETE", "/services/bench")
    removed = time.monotonic() - start
    bodies = ", ".join(f"{k.strip()}: {v}" for k, v in sorted(seen["bodies"].items()))
    print(f"| {n} | {surge} | {up:.1f} s ({n / up:.1f}/s) | {per_replica:.2f} | {took:.1f} s, {settled['phase']} | "
          f"{seen['sent']} ({bodies}) | {seen['failed']} {'; '.join(seen['errors'])} | {removed:.1f} s |")


def main():
    mode = sys.argv[1]
    if mode == "first-answer":
        first_answer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "process-answer":
        process_answer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "rolling":
        rolling(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
