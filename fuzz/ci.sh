#!/usr/bin/env bash
# Builds Kiln's fuzz targets (cargo-fuzz, libFuzzer, no sanitizer) and runs each briefly from the seeds fuzz/seeds.py
# writes: FUZZ_SECONDS each (default 15), one at a time, with the limits the long runs use (2 GiB of memory, 10 s an
# input). A crash, hang or out-of-memory fails the script, with the input left in fuzz/artifacts/TARGET/ and the
# command that replays it. FUZZ_TARGETS names the targets to run (default: all but FUZZ_SKIP's). .ci/run calls it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${FUZZ_SECONDS:-15}
skip=" ${FUZZ_SKIP-} "
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

# The lock file pins the fuzz-only packages; the crates under test bring their own dependencies, which change with
# them. When they have moved on, add what they now need (keeping every pin) rather than fail CI for it.
if ! cargo metadata --locked --format-version 1 >/dev/null 2>&1; then
  echo "fuzz: fuzz/Cargo.lock lacks what the crates now depend on: cargo update --workspace (commit the result)"
  cargo update --workspace
fi
cargo metadata --locked --format-version 1 >/dev/null
cargo fuzz build -s none
/usr/bin/python3 seeds.py >/dev/null

bin=target/x86_64-unknown-linux-gnu/release
failed=()
for t in $targets; do
  if [[ "$skip" == *" $t "* ]]; then
    printf 'fuzz: %-18s skipped (FUZZ_SKIP)\n' "$t"
    continue
  fi
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if "$bin/$t" "corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -close_fd_mask=1 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf 'fuzz: %-18s %10s runs, %7s/s, corpus %s files, 0 crashes\n' "$t" "$runs" "$rate" "$(ls "corpus/$t" | wc -l)"
  else
    printf 'fuzz: %-18s FAILED:\n' "$t"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
    printf '    replay: fuzz/%s/%s fuzz/artifacts/%s/<input>\n' "$bin" "$t" "$t"
    failed+=("$t")
  fi
  rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'fuzz: %d target(s) failed: %s\n' "${#failed[@]}" "${failed[*]}"
  exit 1
fi
