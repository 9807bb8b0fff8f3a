#!/usr/bin/env bash
# Containers under containerd (issue 16's aims): Kiln's shim (runtime io.containerd.kiln.v2) against Debian's runc
# and crun under runc's shim (io.containerd.runc.v2), in one containerd started here, in the same run, rounds
# interleaved so that each runtime sees the same load:
#   - create+start: `ctr run -d` (the container's snapshot and record, then containerd starts the shim, Create,
#     Start; it returns once the task runs) of the static C `waiter` (tests/guests/c), which then idles;
#   - the same with a writable mount of an empty host directory (an emptyDir; Kiln makes the container a 1 GiB ext2
#     volume for it at create); and the kill and delete that follow each (`ctr task kill -s SIGKILL`, then
#     `ctr task delete` until it succeeds: Kiln writes the volume back when the VM process ends);
#   - run to exit: `ctr run --rm` of the static C hello, output collected;
#   - task start: `ctr task start -d` of a container made beforehand (containerd starts the shim, Create, Start),
#     for Kiln and runc (crun cannot be named for `ctr container create`);
#   - floor: `ctr version`, what the ctr process and one round trip to containerd cost in each figure;
#   - idle memory: PSS and private memory of the shim process and of the task's process (Kiln: the VM process, guest
#     memory included) of an idle waiter, the VM process's PSS split (guest RAM, the binary's pages, its relocated
#     data, the VMM's heap and stacks), and each one's PSS once a second idle container runs beside it.
# crun 1.8 refuses hosts with hybrid cgroups whenever cgroup v2 holds a controller, whatever its cgroup manager
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"): it runs here through a wrapper
# that hides the v2 mount in a mount namespace of its own, so that crun sees cgroups v1 only and uses them (as runc
# does). Needs root, containerd, runc and crun (scripts/setup.sh), and KVM.
#
#   bench/containerd.sh [ROUNDS]      (default 20; SHIM=path skips the release build of the shim)
set -euo pipefail
rounds=${1:-20}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ "$(id -u)" != 0 ]; then echo "bench: containerd needs root" >&2; exit 1; fi
for tool in containerd ctr runc crun musl-gcc; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
if [ -z "${SHIM:-}" ]; then
  echo "bench: building containerd-shim-kiln-v2 (release)" >&2
  cargo build --release --locked -p kiln-shim --manifest-path "$repo/Cargo.toml" >&2
  SHIM="$target/x86_64-unknown-linux-musl/release/containerd-shim-kiln-v2"
fi

# Short: containerd's sockets live here, and a socket's path has at most 107 bytes.
work="/tmp/kiln-bench-ctrd-$$"
rm -rf "$work" && mkdir -p "$work/bin" "$work/image/root/bin" "$work/image/archive"
ln -s "$SHIM" "$work/bin/containerd-shim-kiln-v2"
cat >"$work/crun" <<'EOF'
#!/bin/sh
exec unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/crun "$@"' crun "$@"
EOF
chmod +x "$work/crun"
cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
EOF
PATH="$work/bin:$PATH" KILN_HOME="$work/kiln-home" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
cleanup() {
  for id in $(ctr_ task ls -q 2>/dev/null); do ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  sleep 0.5
  for id in $(ctr_ task ls -q 2>/dev/null); do ctr_ task delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ container ls -q 2>/dev/null); do ctr_ container delete "$id" >/dev/null 2>&1 || true; done
  kill "$containerd_pid" 2>/dev/null || true
  wait "$containerd_pid" 2>/dev/null || true
  umount -R "$work/root" 2>/dev/null || true
  rm -rf "$work"
}
ctr_() { ctr --address "$work/c.sock" --namespace bench "$@"; }
trap cleanup EXIT
for _ in $(seq 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done

# The image: the static C hello and waiter, one layer, as `docker save` writes it; imported into overlayfs snapshots.
image=docker.io/library/kiln-bench:1
root="$work/image/root"
musl-gcc -static -O2 -o "$root/bin/hello" "$repo/tests/guests/c/hello.c"
musl-gcc -static -O2 -pthread -o "$root/bin/waiter" "$repo/tests/guests/c/waiter.c"
archive="$work/image/archive"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$archive/layer.tar" .
diff_id=$(sha256sum "$archive/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/hello"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" >"$archive/config.json"
printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$image" >"$archive/manifest.json"
tar -C "$archive" -cf "$work/image.tar" manifest.json config.json layer.tar
ctr_ image import "$work/image.tar" >/dev/null

now_us() { echo "${EPOCHREALTIME/./}"; }
# runtime_args WHO: the ctr flags that pick WHO's runtime.
runtime_args() {
  case $1 in
    kiln) echo "--runtime io.containerd.kiln.v2" ;;
    runc) echo "--runtime io.containerd.runc.v2 --runc-binary /usr/sbin/runc" ;;
    crun) echo "--runtime io.containerd.runc.v2 --runc-binary $work/crun" ;;
  esac
}
# shellcheck disable=SC2046
check() { # WHO: one run of hello must print and exit 7 under WHO
  local out status=0
  out=$(ctr_ run --rm $(runtime_args "$1") "$image" "check-$1" /bin/hello 7 2>&1) || status=$?
  if [ "$status" != 7 ] || ! grep -q "hello from kiln" <<<"$out"; then
    echo "bench: hello under $1 exited $status: $out" >&2
    tail -n 20 "$work/containerd.log" >&2
    exit 1
  fi
}
for who in kiln runc crun; do check "$who"; done

results="$work/results"
: >"$results"
for round in $(seq "$rounds"); do
  start=$(now_us); ctr_ version >/dev/null; end=$(now_us)
  echo "ctr floor_us $((end - start))" >>"$results"
  for who in kiln runc crun; do
    id="$who-$round"
    # shellcheck disable=SC2046
    start=$(now_us); ctr_ run -d $(runtime_args "$who") "$image" "$id" /bin/waiter >/dev/null; end=$(now_us)
    echo "$who create+start_us $((end - start))" >>"$results"
    start=$(now_us)
    ctr_ task kill -s SIGKILL "$id" >/dev/null
    for _ in $(seq 200); do ctr_ task delete "$id" >/dev/null 2>&1 && break; sleep 0.01; done
    end=$(now_us)
    echo "$who kill+delete_us $((end - start))" >>"$results"
    ctr_ container delete "$id" >/dev/null
    mkdir -p "$work/empty/$id"
    mount="type=bind,src=$work/empty/$id,dst=/data,options=rbind:rw"
    # shellcheck disable=SC2046
    start=$(now_us); ctr_ run -d $(runtime_args "$who") --mount "$mount" "$image" "$id-rw" /bin/waiter >/dev/null
    end=$(now_us)
    echo "$who create+start_with_an_emptyDir_us $((end - start))" >>"$results"
    start=$(now_us)
    ctr_ task kill -s SIGKILL "$id-rw" >/dev/null
    for _ in $(seq 200); do ctr_ task delete "$id-rw" >/dev/null 2>&1 && break; sleep 0.01; done
    end=$(now_us)
    echo "$who kill+delete_with_an_emptyDir_us $((end - start))" >>"$results"
    ctr_ container delete "$id-rw" >/dev/null
    # shellcheck disable=SC2046
    start=$(now_us); ctr_ run --rm $(runtime_args "$who") "$image" "$id-run" /bin/hello >/dev/null 2>&1; end=$(now_us)
    echo "$who run-to-exit_us $((end - start))" >>"$results"
    # The task alone: a container made beforehand (crun cannot be named for `ctr container create`).
    if [ "$who" != crun ]; then
      runtime=io.containerd.runc.v2; [ "$who" = kiln ] && runtime=io.containerd.kiln.v2
      ctr_ container create --runtime "$runtime" "$image" "$id-task" /bin/waiter >/dev/null
      start=$(now_us); ctr_ task start -d "$id-task" >/dev/null; end=$(now_us)
      echo "$who task-start_us $((end - start))" >>"$results"
      ctr_ task kill -s SIGKILL "$id-task" >/dev/null
      for _ in $(seq 100); do ctr_ task delete "$id-task" >/dev/null 2>&1 && break; sleep 0.05; done
      ctr_ container delete "$id-task" >/dev/null
    fi
  done
done

# memory_rows WHO ROLE PID [private] [split]: ROLE's PSS; with `private`, its private memory too (measured beside a
# first container, so that the binaries' pages count as shared: what the node spends for one more container); with
# `split`, the VM process's PSS split: the guest's RAM (the run of adjacent mappings that spans the guest's memory,
# the default 64 MiB; a root filesystem from the cache is mapped inside it, file-backed), the binary's file pages, its
# writable data (relocated at start by the static PIE's own loader, so private to each process), and the rest of its
# anonymous memory (the VMM's heap, thread stacks).
memory_rows() {
  /usr/bin/python3 - "$@" <<'PY' >>"$results"
import os, re, sys
who, role, pid = sys.argv[1:4]
private_wanted, split = "private" in sys.argv[4:], "split" in sys.argv[4:]
maps = []
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)", line)
    if m:
        maps.append({"start": int(m.group(1), 16), "end": int(m.group(2), 16), "perm": m.group(3),
                     "name": m.group(4), "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0})
    else:
        key, _, value = line.partition(":")
        if key in maps[-1]:
            maps[-1][key] = int(value.split()[0])
pss = sum(m["Pss"] for m in maps)
private = sum(m["Private_Clean"] + m["Private_Dirty"] for m in maps)
print(f"{who} {role}_PSS_KiB {pss}")
if private_wanted:
    print(f"{who} {role}_private_KiB {private}")
if split:
    guest, want = set(), 64 << 20
    for i in range(len(maps)):
        end, run = maps[i]["start"], []
        for m in maps[i:]:
            if m["start"] != end:
                break
            end = m["end"]
            run.append(id(m))
            if end - maps[i]["start"] == want:
                guest = set(run)
                break
        if guest:
            break
    exe = os.readlink(f"/proc/{pid}/exe")
    parts = {"guest_RAM": 0, "binary_file_pages": 0, "binary_relocated_data": 0, "VMM_heap_and_stacks": 0}
    for m in maps:
        if id(m) in guest:
            part = "guest_RAM"
        elif m["name"] == exe:
            part = "binary_relocated_data" if "w" in m["perm"] else "binary_file_pages"
        else:
            part = "VMM_heap_and_stacks"
        parts[part] += m["Pss"]
    for part, kib in parts.items():
        print(f"{who} of_which_{part}_KiB {kib}")
PY
}
# task_pid ID: the pid of task ID.
task_pid() { ctr_ task ls | awk -v id="$1" '$1 == id {print $2}'; }
memory() { # WHO
  local id="$1-idle" pid shim pid2 shim2 split=""
  [ "$1" = kiln ] && split=split
  # shellcheck disable=SC2046
  ctr_ run -d $(runtime_args "$1") "$image" "$id" /bin/waiter >/dev/null
  sleep 3
  pid=$(task_pid "$id")
  shim=$(awk '{print $4}' "/proc/$pid/stat")
  memory_rows "$1" shim "$shim"
  memory_rows "$1" task_process "$pid" $split
  # A second idle container beside the first: its share of what they have in common (the binaries' pages), and what
  # it alone holds.
  # shellcheck disable=SC2046
  ctr_ run -d $(runtime_args "$1") "$image" "$id-2" /bin/waiter >/dev/null
  sleep 3
  pid2=$(task_pid "$id-2")
  shim2=$(awk '{print $4}' "/proc/$pid2/stat")
  memory_rows "$1" shim_beside_another "$shim2" private
  memory_rows "$1" task_process_beside_another "$pid2" private
  for one in "$id" "$id-2"; do
    ctr_ task kill -s SIGKILL "$one" >/dev/null
    for _ in $(seq 100); do ctr_ task delete "$one" >/dev/null 2>&1 && break; sleep 0.05; done
    ctr_ container delete "$one" >/dev/null
  done
}
for who in kiln runc crun; do memory "$who"; done

echo "load: $(uptime)"
echo "containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -n1), $(crun --version | head -n1); $rounds rounds"
echo
/usr/bin/python3 - "$results" <<'PY'
import statistics, sys
runs, cases = {}, []
for line in open(sys.argv[1]):
    who, case, value = line.split()
    runs.setdefault((case, who), []).append(float(value))
    if case not in cases:
        cases.append(case)
who = ["kiln", "runc", "crun", "ctr"]
print("| case (median, min for times) | " + " | ".join(who) + " | unit |")
print("|---" * (len(who) + 2) + "|")
for case in cases:
    scale, unit = (1000, "ms") if case.endswith("_us") else (1024, "MiB")
    cells = []
    for w in who:
        values = runs.get((case, w))
        if not values:
            cells.append("")
        elif unit == "ms":
            cells.append("%.1f (%.1f)" % (statistics.median(values) / scale, min(values) / scale))
        else:
            cells.append("%.2f" % (statistics.median(values) / scale))
    print("| %s | %s | %s |" % (case.rsplit("_", 1)[0].replace("_", " "), " | ".join(cells), unit))
PY
