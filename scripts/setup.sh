#!/usr/bin/env bash
# Installs what building and testing Kiln needs on a Debian or Ubuntu machine, and nothing that is already there:
#   - apt: build-essential (cc, for the host build and the dynamically linked test program), musl-tools (musl-gcc, for
#     the C test programs), golang-go (the Go test program), iproute2 (`ip`, for the network tests' namespaces and tap
#     devices), curl (the HTTP tests' host client; and, with ca-certificates, to install rustup), e2fsprogs
#     (mkfs.ext2 for `kiln volume create`; e2fsck and debugfs, with which the volume tests check volumes), python3
#     (Debian's, dynamically linked: a test boots it with its standard library), redis-server and nginx (Debian's
#     servers, dynamically linked: tests/servers.rs runs them in the foreground; redis-server brings redis-tools'
#     redis-benchmark, which bench/servers.sh uses with wrk), docker-registry (the CNCF distribution registry),
#     skopeo and apache2-utils (htpasswd, bcrypt): tests/registry.rs and bench/registry.sh push to and pull from a
#     registry they start on 127.0.0.1, and skopeo reads what kiln pushed; containerd (Debian's, with ctr:
#     tests/containerd.rs starts one of its own with containerd-shim-kiln-v2 as a runtime), containernetworking-plugins
#     (the CNI `bridge` and `host-local` plugins, with which tests/containerd.rs makes a pod's network) and crun (the
#     OCI runtime bench/containerd.sh compares the shim with, under the same containerd), gdb (tests/gdb.rs drives it
#     in batch mode against `kiln run --gdb`);
#   - apt, for the nested-KVM check (tests/nested-kvm/run.sh; it skips without them) and tests/export.rs (exported
#     images booted under QEMU TCG, microvm and q35; skipped without it): qemu-system-x86,
#     linux-image-amd64 (Debian's kernel, booted in QEMU to load kvm-amd), busybox-static (its init), cpio; and for
#     tests/export_uefi.rs (UEFI disk images booted by OVMF under QEMU TCG; skipped without them): ovmf, qemu-utils
#     (qemu-img check reads the qcow2 images);
#   - rustup and the toolchain pinned in rust-toolchain.toml, with its components and targets (x86_64-unknown-none for
#     the library OS, x86_64-unknown-linux-musl for the Rust test programs, x86_64-unknown-uefi for the UEFI loader).
#   - cargo-fuzz (crates.io, --locked): .ci/run builds and briefly runs the fuzz targets in fuzz/ (fuzz/ci.sh).
# Safe to run again: a second run changes nothing and needs no network. It ends by saying whether /dev/kvm is usable.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'setup: %s\n' "$*"; }

# ---- system packages ---------------------------------------------------------------------------------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root for: $*  (run as root or install sudo)"; exit 1
  fi
}

missing=()
for pkg in build-essential musl-tools golang-go iproute2 curl e2fsprogs python3 redis-server nginx wrk docker-registry skopeo apache2-utils containerd containernetworking-plugins crun gdb; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ! command -v rustup >/dev/null && ! [ -x "$HOME/.cargo/bin/rustup" ]; then
  for pkg in ca-certificates; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when there are none, or when installing from the present ones fails.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then as_root apt-get update -q; fi
  if ! as_root apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  say "system packages present (build-essential, musl-tools, golang-go, iproute2, curl, e2fsprogs, python3, redis-server, nginx, wrk, docker-registry, skopeo, apache2-utils, containerd, containernetworking-plugins, crun, gdb)"
fi

# The nested-KVM check's packages: where they cannot be installed (linux-image-amd64 is Debian's), that check skips.
nested_missing=()
for pkg in qemu-system-x86 linux-image-amd64 busybox-static cpio ovmf qemu-utils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || nested_missing+=("$pkg")
done
if [ ${#nested_missing[@]} -gt 0 ]; then
  say "installing ${nested_missing[*]} (for tests/nested-kvm/run.sh and the QEMU tests of exported images)"
  # Installing QEMU re-applies udev's rules, which can narrow who may open /dev/kvm and /dev/net/tun: keep their modes.
  modes=()
  for dev in /dev/kvm /dev/net/tun; do [ -e "$dev" ] && modes+=("$(stat -c %a "$dev") $dev"); done
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q --no-install-recommends "${nested_missing[@]}"; then
    as_root apt-get update -q || true
    as_root apt-get install -y -q --no-install-recommends "${nested_missing[@]}" ||
      say "cannot install ${nested_missing[*]}: tests/nested-kvm/run.sh will skip"
  fi
  if command -v udevadm >/dev/null; then as_root udevadm settle || true; fi
  for entry in "${modes[@]}"; do
    read -r mode dev <<<"$entry"
    [ "$(stat -c %a "$dev")" = "$mode" ] || { say "putting $dev back to mode $mode"; as_root chmod "$mode" "$dev"; }
  done
else
  say "QEMU test packages present (qemu-system-x86, linux-image-amd64, busybox-static, cpio, ovmf, qemu-utils)"
fi

# ---- Rust --------------------------------------------------------------------------------------------------------
if ! command -v rustup >/dev/null; then
  if [ -x "$HOME/.cargo/bin/rustup" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    say "installing rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# The pinned toolchain and what it must carry, read from rust-toolchain.toml.
toml="$repo/rust-toolchain.toml"
toml_list() { sed -n "s/^$1 *= *\[\(.*\)\]/\1/p" "$toml" | tr -d '" ' | tr ',' ' '; }
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$toml")
read -r -a targets <<<"$(toml_list targets)"
read -r -a components <<<"$(toml_list components)"

if ! rustup toolchain list | grep -q "^$channel"; then
  say "installing Rust $channel"
  rustup toolchain install "$channel" --profile minimal
fi
have_targets=$(rustup target list --installed --toolchain "$channel")
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$have_targets" || { say "adding target $t"; rustup target add --toolchain "$channel" "$t"; }
done
have_components=$(rustup component list --installed --toolchain "$channel")
for c in "${components[@]}"; do
  grep -q "^$c" <<<"$have_components" || { say "adding component $c"; rustup component add --toolchain "$channel" "$c"; }
done
say "Rust $channel with ${targets[*]} and ${components[*]}"

if ! command -v cargo-fuzz >/dev/null && ! [ -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  say "installing cargo-fuzz (for fuzz/ci.sh)"
  (cd "$repo" && cargo install cargo-fuzz --locked --version 0.13.2)
else
  say "cargo-fuzz present"
fi

# ---- KVM ---------------------------------------------------------------------------------------------------------
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  say "/dev/kvm is usable: the boot tests will run"
elif [ -e /dev/kvm ]; then
  say "/dev/kvm exists but $(id -un) cannot open it read-write: 'sudo usermod -aG kvm $(id -un)', then log in again"
else
  say "no /dev/kvm on this machine: tests that boot a VM will be skipped (enable KVM or nested virtualization)"
fi
