#!/usr/bin/env python3
"""Many concurrent connections to one HTTP server: opens N connections (all of them before sending anything), sends
`GET /` on each, reads every answer; prints the seconds that took and how many answered 200 within TIMEOUT seconds.

    bench/conns.py HOST PORT [N] [TIMEOUT]     (default N=10000, TIMEOUT=60; raise `ulimit -n` above N first)
"""
import selectors
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
start = time.monotonic()
deadline = start + timeout
sel = selectors.DefaultSelector()
pending = {}
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    pending[s] = b""
    sel.register(s, selectors.EVENT_WRITE)
request = b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n"
ok = failed = 0
while pending and time.monotonic() < deadline:
    for key, events in sel.select(timeout=1.0):
        s = key.fileobj
        if events & selectors.EVENT_WRITE:
            try:
                s.send(request)
                sel.modify(s, selectors.EVENT_READ)
            except OSError:
                failed += 1
                sel.unregister(s)
                s.close()
                del pending[s]
            continue
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data:
            pending[s] += data
            if b"\r\n\r\n" not in pending[s]:
                continue
        if pending[s].startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
        sel.unregister(s)
        s.close()
        del pending[s]
elapsed = time.monotonic() - start
print(f"{n} connections: {elapsed:.2f} s, {ok} answered 200, {failed} failed, {len(pending)} unanswered")
