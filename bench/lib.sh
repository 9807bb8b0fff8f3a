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

# wait_ready COMMAND...: until COMMAND succeeds (60 s at most: a first kiln run rewrites the libraries) or the
# server, $pid, is gone.
wait_ready() {
  for _ in $(seq 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: the server died before answering" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: no answer within 60 s" >&2
  return 1
}

# first_builds N KILN_TOML: N `kiln build`s into an empty $KILN_HOME, each timed alone; prints "ms ms ...".
first_builds() {
  local times=()
  for _ in $(seq "$1"); do
    rm -rf "$KILN_HOME"
    local start=$EPOCHREALTIME
    "$KILN" build -q -f "$2" >/dev/null
    times+=("$(python3 -c "print(f'{($EPOCHREALTIME - $start) * 1000:.0f}')")")
  done
  echo "${times[*]}"
}
