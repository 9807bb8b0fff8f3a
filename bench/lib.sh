# Shared by the bench/ scripts (sourced): the repository root, the output folder, and a release `kiln` (built here
# unless KILN names one). kiln keeps its rewrite cache under the output folder.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${CARGO_TARGET_DIR:-$repo/target}/bench"
mkdir -p "$out"
if [ -z "${KILN:-}" ]; then
  echo "bench: building kiln (release)" >&2
  cargo build --release --locked -p kiln --manifest-path "$repo/Cargo.toml" >&2
  # .cargo/config.toml builds kiln for musl.
  KILN="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/kiln"
fi
export KILN_HOME="$out/kiln-home"
