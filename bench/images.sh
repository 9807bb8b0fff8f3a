#!/usr/bin/env bash
# Images: `kiln build` time for a 5 MiB static binary (against sha256sum and cp of the same file, in the same run),
# the sizes of images of hello (C and Rust) and of an HTTP server (tiny_http) against a Docker-style image of the
# same binary (FROM scratch + COPY: one layer tarball), a first run of an image (its program comes rewritten) against
# a first run of the binary, and the time from `kiln run -d` to the server's first HTTP answer, against the native
# server's. Prints markdown tables.
#
#   bench/images.sh [ROUNDS]      (default 20)
set -euo pipefail
rounds=${1:-20}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work="$out/images"
rm -rf "$work" && mkdir -p "$work"
export KILN_HOME="$work/home"

cc -O2 -o "$out/timeit" "$repo/bench/timeit.c"
echo "bench: building the guests" >&2
musl-gcc -static -O2 -o "$work/hello" "$repo/tests/guests/c/hello.c"
# 5 MiB of initialised data make a 5 MiB executable.
# (External linkage and an index the compiler cannot know keep the array in the file.)
printf 'char blob[5 << 20] = {1};\nint main(int argc, char **argv) { (void)argv; return blob[argc * 4096]; }\n' >"$work/big.c"
musl-gcc -static -O2 -o "$work/big" "$work/big.c"
(
  cd "$repo/tests/guests/rust"
  env -u RUSTFLAGS -u CARGO_BUILD_TARGET cargo build --release --locked --target x86_64-unknown-linux-musl \
    --target-dir "$out/guests" --bin http_tiny --bin hello >&2
)
cp "$out/guests/x86_64-unknown-linux-musl/release/http_tiny" "$work/http_tiny"
cp "$out/guests/x86_64-unknown-linux-musl/release/hello" "$work/rust_hello"

# One project per program: the binary beside its Kiln.toml.
for name in hello big http_tiny rust_hello; do
  mkdir -p "$work/$name.d"
  cp "$work/$name" "$work/$name.d/$name"
  args=$([ "$name" = http_tiny ] && echo '["8080"]' || echo '[]')
  printf 'name = "%s"\nbinary = "%s"\nargs = %s\nenv = { RUST_MIN_STACK = "131072" }\n' "$name" "$name" "$args" \
    >"$work/$name.d/Kiln.toml"
done

echo
echo "### kiln build of a $(($(stat -c %s "$work/big") / 1024)) KiB binary ($rounds rounds, ms)"
echo
echo "first build into an empty store, 5 runs: $(first_builds 5 "$work/big.d/Kiln.toml") ms"
echo
echo '```'
"$out/timeit" "$rounds" "kiln-build=$KILN build -q -f $work/big.d/Kiln.toml" "sha256sum=sha256sum $work/big" \
  "cp=cp $work/big $work/big.copy"
echo '```'

echo
echo "### Image sizes (bytes)"
echo
echo "| program | binary | kiln image | kiln image, gzip | Docker-style layer tar | layer tar, gzip |"
echo "|---|---:|---:|---:|---:|---:|"
for name in hello rust_hello http_tiny; do
  "$KILN" build -q -f "$work/$name.d/Kiln.toml" >/dev/null
  total=$("$KILN" inspect "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["size"]["total"])')
  blobs=$("$KILN" inspect "$name" | python3 -c '
import json, sys
r = json.load(sys.stdin)[0]
print(" ".join(r[k]["digest"].split(":")[1] for k in ("kernel", "program", "prepared", "rootfs")), r["id"].split(":")[1])')
  kiln_gz=$(for b in $blobs; do cat "$KILN_HOME/blobs/sha256/$b"; done | gzip -9 | wc -c)
  tar_size=$(tar -C "$work/$name.d" --owner=0 --group=0 --mtime=@0 -cf - "$name" | wc -c)
  tar_gz=$(tar -C "$work/$name.d" --owner=0 --group=0 --mtime=@0 -cf - "$name" | gzip -9 | wc -c)
  echo "| $name | $(stat -c %s "$work/$name") | $total | $kiln_gz | $tar_size | $tar_gz |"
done

echo
echo "### A first run: the image's prepared program against a rewrite of the binary ($rounds rounds, ms)"
echo
"$KILN" build -q -f "$work/rust_hello.d/Kiln.toml" >/dev/null
python3 - "$KILN" "$work/rust_hello" "$rounds" <<'PY'
import os, shutil, statistics, subprocess, sys, time

kiln, program, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = os.path.join(os.environ["KILN_HOME"], "cache")
cases = {"kiln run IMAGE, empty rewrite cache": ["rust_hello"],
         "kiln run PROGRAM, empty rewrite cache": [program],
         "kiln run PROGRAM, rewrite cached": [program]}
times = {name: [] for name in cases}
for _ in range(rounds):
    for name, target in cases.items():
        if "empty" in name:
            shutil.rmtree(cache, ignore_errors=True)
        start = time.monotonic()
        subprocess.run([kiln, "run", "--net", "none", *target], check=True, capture_output=True)
        times[name].append((time.monotonic() - start) * 1000)
print(f"Rust hello ({os.path.getsize(program)} bytes):")
print()
print("| | median | min | max |")
print("|---|---:|---:|---:|")
for name, ms in times.items():
    print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
PY

echo
echo "### kiln run -d to the first HTTP answer (tiny_http, $rounds rounds, ms)"
echo
python3 - "$KILN" "$work/http_tiny" "$rounds" <<'PY'
import os, socket, statistics, subprocess, sys, time, urllib.request

kiln, native, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def first_answer(url, start, deadline=30.0):
    while time.monotonic() - start < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
                return (time.monotonic() - start) * 1000
        except OSError:
            time.sleep(0.002)
    raise SystemExit(f"no answer from {url}")

def log_says(path, text, start, deadline=30.0):
    while time.monotonic() - start < deadline:
        try:
            with open(path) as f:
                if text in f.read():
                    return (time.monotonic() - start) * 1000
        except OSError:
            pass
        time.sleep(0.001)
    raise SystemExit(f"{path} never said {text!r}")

# The HTTP client starts only once the server said it listens: a connection the user-mode network forwards before
# the guest listens is refused.
home = os.environ["KILN_HOME"]
rows = {"kiln run -d returned": [], "kiln: log says listening": [], "kiln: first HTTP answer": [],
        "native: says listening": [], "native: first HTTP answer": []}
for _ in range(rounds):
    port = free_port()
    start = time.monotonic()
    out = subprocess.run([kiln, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", "http_tiny"],
                         check=True, capture_output=True, text=True)
    rows["kiln run -d returned"].append((time.monotonic() - start) * 1000)
    instance = out.stdout.strip()
    rows["kiln: log says listening"].append(log_says(f"{home}/instances/{instance}/log", "listening", start))
    rows["kiln: first HTTP answer"].append(first_answer(f"http://127.0.0.1:{port}/", start))
    subprocess.run([kiln, "stop", "-t", "5", instance], check=True, capture_output=True)

    port = free_port()
    log = f"{home}/native.log"
    start = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen([native, str(port)], stdout=f, env={"RUST_MIN_STACK": "131072"})
    rows["native: says listening"].append(log_says(log, "listening", start))
    rows["native: first HTTP answer"].append(first_answer(f"http://127.0.0.1:{port}/", start))
    p.kill()
    p.wait()

print("| | median | min | max |")
print("|---|---:|---:|---:|")
for name, ms in rows.items():
    print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
PY
