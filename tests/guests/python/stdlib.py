# stdlib: Debian's python3 with its standard library, under kiln run as natively: json, hashlib (OpenSSL's, through
# the _hashlib extension module and libcrypto.so.3), threads, a socketpair (AF_UNIX) and a file in /tmp.
import _hashlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading

print(2 + 2)
print(json.dumps({"kiln": [1, 2, 3], "nested": {"ok": True}}, sort_keys=True))
print(hashlib.sha256(b"kiln").hexdigest(), hashlib.new("md5", b"kiln").hexdigest())
print(_hashlib.openssl_sha512(b"kiln").hexdigest()[:32])
squares = []
lock = threading.Lock()


def square(i):
    with lock:
        squares.append(i * i)


threads = [threading.Thread(target=square, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted(squares))
a, b = socket.socketpair()
a.sendall(b"through a socketpair")
print(b.recv(64).decode())
with tempfile.NamedTemporaryFile("w+", dir="/tmp") as f:
    f.write("written and read back")
    f.flush()
    f.seek(0)
    print(f.read(), os.path.getsize(f.name))
print("stdlib: ok", sys.version_info[:2] >= (3, 7))
