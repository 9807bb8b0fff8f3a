#!/usr/bin/env python3
"""kilnd restarted under N running HTTP instances (tests/guests/c/hitcount.c: answers "hit COUNT"), kept (the
default: each paused and written to its folder, run on by the next kilnd) against stopped and started afresh (`kiln
daemon --stop-instances`, instances with --restart always, which the next kilnd boots again), in one run. For each:
SIGTERM to kilnd's exit, the new kilnd's start to its socket answering, and the pause each instance's clients see
(SIGTERM to the instance's first answer after it, every instance polled at once from the new kilnd's spawn on:
median and max over the N), whether the counts went on;
for the kept ones also kilnd's own figures per instance (the pause and write, the restore: median, from its log at
KILN_LOG=kilnd=debug). Prints a markdown table.

    kilnd_keep.py KILN WORKDIR HITCOUNT N...
"""
import concurrent.futures
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

BASE_PORT = int(os.environ.get("PORT", "19100"))


def api(home, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(os.path.join(home, "kilnd.sock"))
        head = f"{method} {path} HTTP/1.1\r\nHost: k\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        s.sendall(head.encode() + data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def hit(port):
    """The count a hitcount instance answers, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            got = b""
            while chunk := s.recv(4096):
                got += chunk
    except OSError:
        return None
    m = re.search(rb"hit (\d+)", got)
    return int(m.group(1)) if m else None


def spawn_kilnd(kiln, home, mode, log):
    env = dict(os.environ, KILN_HOME=home, KILN_LOG="warn,kilnd=debug")
    args = [kiln, "daemon"] + (["--stop-instances"] if mode == "stopped" else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "a"))


def start_kilnd(kiln, home, mode, log):
    return wait_kilnd(spawn_kilnd(kiln, home, mode, log), home, log)


def wait_kilnd(proc, home, log):
    deadline = time.monotonic() + 120
    while True:
        try:
            if api(home, "GET", "/version")[0] == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"bench: kilnd did not answer; see {log}")
        time.sleep(0.005)


def run(kiln, work, hitcount, n, mode):
    home = os.path.join(work, f"home-{mode}-{n}")
    subprocess.run(["rm", "-rf", home], check=True)
    os.makedirs(home)
    log = os.path.join(work, f"kilnd-{mode}-{n}.log")
    open(log, "w").close()
    proc = start_kilnd(kiln, home, mode, log)
    ports = [BASE_PORT + i for i in range(n)]
    for port in ports:
        body = {"image": hitcount, "memory": "25M", "publish": [f"127.0.0.1:{port}:80"], "restart": "always"}
        status, text = api(home, "POST", "/instances", body)
        if status != 201:
            sys.exit(f"bench: create: {status} {text!r}")
    before = {}
    for port in ports:
        deadline = time.monotonic() + 60
        while (count := hit(port)) is None:
            if time.monotonic() > deadline:
                sys.exit(f"bench: port {port} never answered")
            time.sleep(0.01)
        before[port] = count
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    t1 = time.monotonic()
    proc = spawn_kilnd(kiln, home, mode, log)
    # Every instance polled at once (a thread each), so that one instance's first answer does not wait for others'.
    def first_answer(port):
        deadline = time.monotonic() + 120
        while (count := hit(port)) is None:
            if time.monotonic() > deadline:
                sys.exit(f"bench: port {port} never answered again")
            time.sleep(0.002)
        return (time.monotonic() - t0) * 1000, count > before[port]

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 64)) as pool:
        polled = pool.map(first_answer, ports)
        wait_kilnd(proc, home, log)
        t2 = time.monotonic()
        answers = list(polled)
    pauses = [ms for ms, _ in answers]
    went_on = sum(on for _, on in answers)
    text = open(log).read()
    kept = [float(ms) for ms in re.findall(r"kept id=\"\w+\" took=([\d.]+)ms", text)]
    restored = [float(ms) for ms in re.findall(r"kept instance restored id=\"\w+\" took=([\d.]+)ms", text)]
    status, body = api(home, "GET", "/instances")
    for record in json.loads(body):
        api(home, "DELETE", f"/instances/{record['id']}?force=true")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    med = lambda xs: f"{statistics.median(xs):.1f}" if xs else "-"
    return [mode, str(n), f"{(t1 - t0) * 1000:.0f}", f"{(t2 - t1) * 1000:.0f}", med(pauses),
            f"{max(pauses):.0f}", f"{went_on}/{n}", med(kept), med(restored)]


def main():
    kiln, work, hitcount = sys.argv[1:4]
    rows = []
    for n in [int(a) for a in sys.argv[4:]]:
        for mode in ("kept", "stopped"):
            rows.append(run(kiln, work, hitcount, n, mode))
    head = ["kilnd restart", "N", "SIGTERM to exit (ms)", "start to socket (ms)", "pause seen, median (ms)",
            "max (ms)", "counts went on", "kilnd's pause+write per instance (ms)", "restore per instance (ms)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


main()
