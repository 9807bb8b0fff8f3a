#!/usr/bin/env bash
# Builds `kiln` and two ordinary static programs (a musl C hello and a Rust std hello), then boots each as a VM with
# `kiln run` and shows its output and exit code. Run scripts/setup.sh first on a fresh machine.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="$target/demo"
mkdir -p "$out"

echo "demo: building kiln, a C hello (musl-gcc -static) and a Rust hello (x86_64-unknown-linux-musl)"
cargo build --release --locked -p kiln
musl-gcc -static -O2 -o "$out/hello-c" tests/guests/c/hello.c
cargo build --release --locked --quiet --target x86_64-unknown-linux-musl \
  --manifest-path tests/guests/rust/Cargo.toml --target-dir "$out/rust"
cp "$out/rust/x86_64-unknown-linux-musl/release/hello" "$out/hello-rust"
kiln="$target/x86_64-unknown-linux-musl/release/kiln"  # .cargo/config.toml builds kiln for musl

for program in "$out/hello-c" "$out/hello-rust"; do
  echo
  echo "\$ kiln run --env KILN_GREETING=hi $program 42 'from a VM'"
  status=0
  "$kiln" run --env KILN_GREETING=hi "$program" 42 'from a VM' || status=$?
  echo "(exit code $status)"
  [ "$status" -eq 42 ] || { echo "demo: expected exit code 42" >&2; exit 1; }
done
