#!/usr/bin/env python3
"""Times commands that start an HTTP server on 127.0.0.1:PORT, from the start of the process to the first complete
answer to GET / (a connection refused, reset or closed before the answer is retried at once), in alternating rounds.
Each server is SIGKILLed after its answer, and the port waited free before the next. Prints a markdown table of
milliseconds: median, min, p90.

    first_answer.py ROUNDS PORT NAME=COMMAND...

A COMMAND may also be a request to a kilnd instead of a process, timed from the request to the first answer, the
instance removed (`DELETE ...?force=true`) after it:
    kilnd-restore SOCKET SNAPSHOT              POST /instances/restore of SNAPSHOT (an absolute path)
    kilnd-create SOCKET MEMORY PROGRAM ARG...  POST /instances of PROGRAM with ARGs, publishing 127.0.0.1:PORT:8080
"""
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
TIMEOUT = 30.0


def answered(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(REQUEST)
            got = b""
            while b"hello from kiln" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                got += chunk
            return True
    except OSError:
        return False


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("kilnd")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def kilnd_call(sock, method, path, body=None):
    conn = UnixConnection(sock)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    if answer.status >= 400:
        sys.exit(f"first_answer: {method} {path}: {answer.status} {data.decode()}")
    return json.loads(data) if data.strip() else None


def kilnd_request(words, port):
    """The socket, and the request a kilnd-restore or kilnd-create command makes."""
    if words[0] == "kilnd-restore":
        return words[1], "/instances/restore", {"path": words[2]}
    body = {"image": words[3], "args": words[4:], "memory": words[2], "publish": [f"127.0.0.1:{port}:8080"]}
    return words[1], "/instances", body


def once_kilnd(words, port):
    sock, path, body = kilnd_request(words, port)
    start = time.perf_counter()
    created = kilnd_call(sock, "POST", path, body)
    try:
        while not answered(port):
            if time.perf_counter() - start > TIMEOUT:
                sys.exit(f"first_answer: `{' '.join(words)}` did not answer within {TIMEOUT} s")
            time.sleep(0.0002)
        return (time.perf_counter() - start) * 1000
    finally:
        kilnd_call(sock, "DELETE", f"/instances/{created['id']}?force=true")


def once(command, port):
    while not port_free(port):
        time.sleep(0.01)
    words = shlex.split(command)
    if words[0] in ("kilnd-restore", "kilnd-create"):
        return once_kilnd(words, port)
    start = time.perf_counter()
    proc = subprocess.Popen(words, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not answered(port):
            if proc.poll() is not None:
                sys.exit(f"first_answer: `{command}` ended ({proc.returncode}) before answering")
            if time.perf_counter() - start > TIMEOUT:
                sys.exit(f"first_answer: `{command}` did not answer within {TIMEOUT} s")
            time.sleep(0.0002)
        return (time.perf_counter() - start) * 1000
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main():
    rounds, port = int(sys.argv[1]), int(sys.argv[2])
    commands = [arg.split("=", 1) for arg in sys.argv[3:]]
    times = {name: [] for name, _ in commands}
    for _ in range(rounds):
        for name, command in commands:
            times[name].append(once(command, port))
    print("| start | median ms | min ms | p90 ms |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        ts.sort()
        p90 = ts[min(len(ts) - 1, int(len(ts) * 0.9))]
        print(f"| {name} | {statistics.median(ts):.2f} | {ts[0]:.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
