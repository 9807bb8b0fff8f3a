#!/usr/bin/env bash
# Container images in: `kiln build` of a docker archive (what `docker save` writes) of 72 MiB, Debian's python3
# with its standard library and the libraries it loads, one layer in a merged-/usr layout (and the same layer under a
# static hello as the entrypoint, which has no shared objects to rewrite); against, in the same
# run, `tar -x` of the archive and of its layer (what unpacking it takes), and `skopeo copy` of it to an OCI
# layout (Debian's skopeo, if installed). Then the image runs: python3 -c 'print(2+2)'.
#
#   bench/containers.sh [ROUNDS]      (default 10)
set -euo pipefail
rounds=${1:-10}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work="$out/containers"
rm -rf "$work" && mkdir -p "$work/root/usr/bin" "$work/root/usr/lib/x86_64-linux-gnu" "$work/root/usr/lib64"
export KILN_HOME="$work/home"
cc -O2 -o "$out/timeit" "$repo/bench/timeit.c"

# The root file system: /lib and /lib64 are links into /usr (as in Debian's images), the loader's path one more.
root="$work/root"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
cp /usr/bin/python3.11 "$root/usr/bin/"
ln -s python3.11 "$root/usr/bin/python3"
for lib in $(ldd /usr/bin/python3.11 | awk '/=> \//{print $3}'); do cp "$(readlink -f "$lib")" "$root/usr/lib/x86_64-linux-gnu/$(basename "$lib")"; done
cp "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/usr/lib64/ld-linux-x86-64.so.2"
# What the extension modules need (_hashlib, _ssl: OpenSSL; _ctypes: libffi; ...), as the loader finds them.
for so in /usr/lib/python3.11/lib-dynload/*.so; do
  for lib in $(ldd "$so" | awk '/=> \//{print $3}'); do
    cp -n "$(readlink -f "$lib")" "$root/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
  done
done
cp -a /usr/lib/python3.11 "$root/usr/lib/"

# The docker archive: one layer tarball (reproducible), its config naming it by diff_id, manifest.json.
archive="$work/archive"
mkdir -p "$archive/layer"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$archive/layer/layer.tar" .
diff_id=$(sha256sum "$archive/layer/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["python3"],"Env":["PATH=/usr/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" >"$archive/config.json"
config=$(sha256sum "$archive/config.json" | cut -d' ' -f1)
mv "$archive/config.json" "$archive/$config.json"
printf '[{"Config":"%s.json","RepoTags":["python:bench"],"Layers":["layer/layer.tar"]}]' "$config" >"$archive/manifest.json"
tar -C "$archive" -cf "$work/python.tar" manifest.json "$config.json" layer/layer.tar
size=$(stat -c %s "$work/python.tar")
mkdir -p "$work/project"
printf 'name = "python"\nfrom = "docker-archive:%s"\n' "$work/python.tar" >"$work/project/Kiln.toml"

# The same layer under a second one holding a static hello, the entrypoint: an import with no shared object to
# rewrite (a static program loads none), which the rewrite cache does not change.
mkdir -p "$archive/static/root"
musl-gcc -static -O2 -o "$archive/static/root/hello" "$repo/tests/guests/c/hello.c"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$archive/static/root" -cf "$archive/static/layer.tar" .
static_id=$(sha256sum "$archive/static/layer.tar" | cut -d' ' -f1)
mkdir -p "$archive/s"
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/hello"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
  "$diff_id" "$static_id" >"$archive/s/static.json"
printf '[{"Config":"static.json","RepoTags":["static:bench"],"Layers":["layer/layer.tar","static/layer.tar"]}]' \
  >"$archive/s/manifest.json"
tar -cf "$work/static.tar" -C "$archive/s" manifest.json static.json -C "$archive" layer/layer.tar static/layer.tar
mkdir -p "$work/static-project"
printf 'name = "static"\nfrom = "docker-archive:%s"\n' "$work/static.tar" >"$work/static-project/Kiln.toml"

# The baselines as scripts, since timeit splits its commands at spaces.
cat >"$work/untar.sh" <<EOF
#!/bin/sh
set -e
rm -rf "$work/untar" && mkdir -p "$work/untar/root"
tar -xf "$work/python.tar" -C "$work/untar"
tar -xf "$work/untar/layer/layer.tar" -C "$work/untar/root"
EOF
cat >"$work/skopeo.sh" <<EOF
#!/bin/sh
set -e
rm -rf "$work/oci"
skopeo copy -q docker-archive:$work/python.tar oci:$work/oci:bench
EOF
chmod +x "$work/untar.sh" "$work/skopeo.sh"
baselines=("untar=$work/untar.sh")
command -v skopeo >/dev/null && baselines+=("skopeo-copy=$work/skopeo.sh")

echo
echo "### kiln build of a $((size >> 20)) MiB docker archive (python3 and its standard library; $rounds rounds, ms)"
echo
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "first build into an empty store and rewrite cache (every shared object rewritten), 3 runs: $(first_builds 3 "$work/project/Kiln.toml") ms"
echo
echo '```'
"$out/timeit" "$rounds" "kiln-build=$KILN build -q -f $work/project/Kiln.toml" \
  "kiln-build-static=$KILN build -q -f $work/static-project/Kiln.toml" "${baselines[@]}"
echo '```'
# CPU time, which the machine's load changes less than wall time (perf, if installed).
if command -v perf >/dev/null; then
  cpu_ms() {
    for _ in 1 2 3 4 5; do
      perf stat -x, -e task-clock "$@" 2>&1 >/dev/null | awk -F, '/task-clock/{printf "%.0f\n", $1}'
    done | sort -n | sed -n 3p
  }
  echo
  echo "CPU time (user + system, task-clock; median of 5, ms): kiln-build $(cpu_ms "$KILN" build -q -f "$work/project/Kiln.toml")," \
    "kiln-build-static $(cpu_ms "$KILN" build -q -f "$work/static-project/Kiln.toml")," \
    "untar $(cpu_ms "$work/untar.sh")$(command -v skopeo >/dev/null && echo ", skopeo-copy $(cpu_ms "$work/skopeo.sh")")"
fi
echo
echo "image: $("$KILN" images | grep python)"
echo "kiln run python -c 'print(2+2)': $("$KILN" run python -c 'print(2+2)')"
