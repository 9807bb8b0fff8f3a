# httpserver: Debian's python3 serving HTTP with its standard library, under kiln run as natively. A thread per
# connection (http.server.ThreadingHTTPServer on socketserver and threading), replies made with json and hashlib,
# a barrier that only several connections served at once get past, and SIGTERM turned into an orderly exit.
# Usage: httpserver.py PORT
import hashlib
import http.server
import json
import signal
import sys
import threading

served = 0
served_lock = threading.Lock()
# Four requests to /together meet here: each waits for the other three, so they pass only if served concurrently.
together = threading.Barrier(4, timeout=20)


def blob(n):
    """n bytes of every value, the same wherever they are made."""
    return bytes((i * 7 ^ (i >> 9)) & 0xFF for i in range(n))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body, kind="application/json"):
        global served
        with served_lock:
            served += 1
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/hello":
            self.reply(200, b"hello from python\n", "text/plain")
        elif path == "/json":
            words = query.split("+") if query else []
            facts = {
                "words": words,
                "sha256": [hashlib.sha256(w.encode()).hexdigest() for w in words],
                "md5": hashlib.md5("".join(words).encode()).hexdigest(),
                "threads": threading.active_count() >= 2,
            }
            self.reply(200, json.dumps(facts, sort_keys=True, indent=1).encode() + b"\n")
        elif path == "/blob":
            self.reply(200, blob(int(query or "0")), "application/octet-stream")
        elif path == "/together":
            together.wait()
            self.reply(200, json.dumps({"together": True, "parties": together.parties}).encode() + b"\n")
        else:
            self.reply(404, b'{"error": "not found"}\n')

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        digest = {"length": len(body), "sha1": hashlib.sha1(body).hexdigest(), "echo": body[:32].hex()}
        self.reply(200, json.dumps(digest, sort_keys=True).encode() + b"\n")

    def log_message(self, format, *args):
        pass


def stop(signum, frame):
    raise SystemExit(0)


signal.signal(signal.SIGTERM, stop)
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
server.daemon_threads = True
print("httpserver: listening", flush=True)
try:
    server.serve_forever(poll_interval=0.1)
except SystemExit:
    pass
server.server_close()
print("httpserver: stopped by SIGTERM, served requests:", served > 0, flush=True)
sys.exit(3)
