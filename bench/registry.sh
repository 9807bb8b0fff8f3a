#!/usr/bin/env bash
# Registries: `kiln push` and `kiln pull` of a 2 MiB image to and from a local registry (Debian's docker-registry,
# the CNCF distribution registry, on 127.0.0.1 with its storage here), against `skopeo copy` of the same artifact
# (the OCI manifest kiln pushed, copied into a dir: once) the same way, alternated in one timeit run. Every push goes
# to a new repository, so all five blobs are uploaded (the registry links blobs per repository); every pull goes into
# an empty store or folder, so all are fetched. `floor` is the wrapper alone. Prints a markdown table.
#
#   bench/registry.sh [ROUNDS]      (default 20)
set -euo pipefail
rounds=${1:-20}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work="$out/registry"
rm -rf "$work" && mkdir -p "$work"
export KILN_HOME="$work/home"
cc -O2 -o "$out/timeit" "$repo/bench/timeit.c"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: $addr
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready curl -sf "http://$addr/v2/"

# hello plus 1.1 MiB of incompressible data: a 2 MiB image (kernel, program, prepared program, root filesystem).
mkdir -p "$work/project"
musl-gcc -static -O2 -o "$work/project/hello" "$repo/tests/guests/c/hello.c"
head -c $((1100 << 10)) /dev/urandom >"$work/project/data.bin"
printf 'name = "bench"\nbinary = "hello"\nfiles = { "data.bin" = "/data.bin" }\n' >"$work/project/Kiln.toml"
(cd "$work/project" && "$KILN" build -q >/dev/null)
"$KILN" push -q bench "$addr/seed/bench:1" >/dev/null
skopeo copy -q --src-tls-verify=false "docker://$addr/seed/bench:1" "dir:$work/artifact"
size=$(du -b --apparent-size "$work/artifact" | cut -f1)

# Each wrapper takes the next number from a counter, for a new repository or an empty destination.
wrapper() { # NAME BODY
  printf '#!/bin/sh\nn=$(cat %s/count.%s 2>/dev/null || echo 0); echo $((n + 1)) >%s/count.%s\n%s\n' \
    "$work" "$1" "$work" "$1" "$2" >"$work/$1.sh"
  chmod +x "$work/$1.sh"
}
wrapper floor 'true'
wrapper kiln_push "exec $KILN push -q bench $addr/kiln\$n/bench:1"
wrapper skopeo_push "exec skopeo copy -q --dest-tls-verify=false dir:$work/artifact docker://$addr/skopeo\$n/bench:1"
wrapper kiln_pull "export KILN_HOME=$work/pull/\$n; exec $KILN pull -q $addr/seed/bench:1"
wrapper skopeo_pull "exec skopeo copy -q --src-tls-verify=false docker://$addr/seed/bench:1 dir:$work/pull-skopeo/\$n"
mkdir -p "$work/pull" "$work/pull-skopeo"

echo "## Registry push and pull (bench/registry.sh, $rounds rounds; image $((size >> 10)) KiB as skopeo stores it; $(uptime | sed 's/.*load/load/'))"
echo
echo '```'
"$out/timeit" "$rounds" "floor=$work/floor.sh" "kiln_push=$work/kiln_push.sh" "skopeo_push=$work/skopeo_push.sh" \
  "kiln_pull=$work/kiln_pull.sh" "skopeo_pull=$work/skopeo_pull.sh"
echo '```'
