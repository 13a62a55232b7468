#!/usr/bin/env bash
# make fuzz-smoke / make fuzz: builds the cargo-fuzz crates of the VMM
# (vmm/fuzz) and the shim (shim/fuzz) and runs each of their targets for
# FUZZ_SECONDS (default 10; make fuzz: 300), FUZZ_JOBS (one per core) at a time.
#
# - Toolchain: nightly with AddressSanitizer when `rustup run nightly rustc`
#   works, else stable without a sanitizer (`-s none`); the choice is printed.
# - Corpus: corpus/<target>/ (checked in) is a read-only seed directory; new
#   inputs go to a temporary directory that is removed afterwards, so runs
#   leave nothing in git. The targets' scratch files (TMPDIR) go there too.
# - Limits per input: -rss_limit_mb (FUZZ_RSS_MB, 2048), -timeout
#   (FUZZ_TIMEOUT, 10 s).
# - FUZZ_TARGETS="a b" runs only those targets (of either crate).
# - One line per target: executions, executions per second, corpus size. A
#   crash (non-zero exit or a new artifact), or a target that executed
#   nothing, fails the script with the target, the artifact and the command
#   that reproduces it. A build failure fails it too.
# Cargo's outputs go to $CARGO_TARGET_DIR/fuzz, or target/fuzz (make runs
# scripts/target-cache.sh first, so that is the shared build cache).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

secs=${FUZZ_SECONDS:-10}
rss=${FUZZ_RSS_MB:-2048}
per_input=${FUZZ_TIMEOUT:-10}
only=${FUZZ_TARGETS:-}
crates=(vmm/fuzz shim/fuzz)
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "[fuzz] cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked --quiet
fi

# FUZZ_BUILD=dev (make fuzz-smoke): unoptimised with debug assertions,
# quicker to build than it is slower to run for seconds; release (make fuzz)
# for long runs.
case "${FUZZ_BUILD:-release}" in
  dev) mode=(--dev) ;;
  release) mode=() ;;
  *) echo "[fuzz] FUZZ_BUILD must be dev or release, not '$FUZZ_BUILD'" >&2; exit 2 ;;
esac
if rustup run nightly rustc --version >/dev/null 2>&1; then
  tc=(+nightly)
  san=(-s address)
  echo "[fuzz] toolchain: $(rustup run nightly rustc --version) with AddressSanitizer, ${FUZZ_BUILD:-release} build"
else
  tc=()
  san=(-s none)
  echo "[fuzz] toolchain: $(rustc --version), no sanitizer (-s none; no nightly toolchain), ${FUZZ_BUILD:-release} build"
fi

work=$(mktemp -d /tmp/cocoon-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

fail() { echo "[fuzz] FAILED: $*" >&2; exit 1; }

for crate in "${crates[@]}"; do
  echo "[fuzz] building $crate"
  if ! (cd "$crate" && cargo "${tc[@]}" fuzz build "${san[@]}" ${mode[@]+"${mode[@]}"} --target-dir "$target_dir") >"$work/build.log" 2>&1; then
    grep -E '^(error|warning: unused)|^ +--> ' "$work/build.log" | head -40 >&2 || true
    tail -20 "$work/build.log" >&2
    fail "cargo fuzz build in $crate"
  fi
done

# One target: run it, check for crashes, write its line to $work/TARGET.line
# (or its failure to $work/TARGET.fail).
run_target() { # CRATE TARGET
  local crate=$1 target=$2
  local seeds="$crate/corpus/$target" artifacts="$crate/artifacts/$target"
  [ -d "$seeds" ] || { echo "$target has no seed corpus ($seeds)" >"$work/$target.fail"; return 1; }
  mkdir -p "$artifacts"
  local before new_corpus="$work/corpus-$target" scratch="$work/tmp-$target" log="$work/$target.log" status=0
  before=$(ls -A "$artifacts")
  mkdir -p "$new_corpus" "$scratch"
  (cd "$crate" && TMPDIR="$scratch" cargo "${tc[@]}" fuzz run "${san[@]}" ${mode[@]+"${mode[@]}"} --target-dir "$target_dir" \
    "$target" "$new_corpus" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb="$rss" -timeout="$per_input" \
    -print_final_stats=1 -close_fd_mask=1) >"$log" 2>&1 || status=$?
  rm -rf "$scratch"
  local found
  found=$(comm -13 <(echo "$before" | sort) <(ls -A "$artifacts" | sort) | grep -E '^(crash|leak|timeout|oom)-' || true)
  if [ "$status" != 0 ] || [ -n "$found" ]; then
    {
      grep -E '^(==[0-9]+==|SUMMARY|thread .* panicked|ERROR:)' "$log" | head -20 || true
      tail -30 "$log"
      local artifact=${found:+$crate/artifacts/$target/$(echo "$found" | head -1)}
      echo "[fuzz] $target crashed (exit $status); artifact: ${artifact:-none written}"
      echo "[fuzz] reproduce: (cd $crate && cargo ${tc[*]} fuzz run ${san[*]} ${mode[*]:-} $target ${artifact:+artifacts/$target/$(echo "$found" | head -1)})"
    } >"$work/$target.fail"
    return 1
  fi
  local execs per_sec added corpus
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  corpus=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
  if [ -z "$execs" ]; then
    execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  fi
  if [ -z "$execs" ] || [ "$execs" = 0 ]; then
    { tail -20 "$log"; echo "[fuzz] $target executed no input"; } >"$work/$target.fail"
    return 1
  fi
  printf '[fuzz] %-16s %9s execs %7s exec/s  corpus %s (%s new)\n' \
    "$target" "$execs" "${per_sec:-?}" "${corpus:-?}" "${added:-?}" >"$work/$target.line"
}

# The targets run FUZZ_JOBS at a time (default: one per core; each fuzzer
# uses one); lines are printed in target order once all have run.
jobs=${FUZZ_JOBS:-$(nproc)}
targets=()
for crate in "${crates[@]}"; do
  for target in $(cd "$crate" && cargo fuzz list); do
    if [ -n "$only" ] && [[ " $only " != *" $target "* ]]; then continue; fi
    targets+=("$crate $target")
  done
done
[ ${#targets[@]} -gt 0 ] || fail "no fuzz target ran${only:+ (FUZZ_TARGETS=$only)}"
running=0
for t in "${targets[@]}"; do
  while [ "$running" -ge "$jobs" ]; do wait -n || true; running=$((running - 1)); done
  run_target ${t% *} ${t#* } &
  running=$((running + 1))
done
wait || true
failed=()
for t in "${targets[@]}"; do
  target=${t#* }
  if [ -f "$work/$target.line" ]; then cat "$work/$target.line"; else failed+=("$target"); fi
done
for target in "${failed[@]}"; do
  if [ -f "$work/$target.fail" ]; then cat "$work/$target.fail" >&2; else echo "[fuzz] $target: ended without a result" >&2; fi
done
[ ${#failed[@]} -eq 0 ] || fail "${failed[*]}"
echo "[fuzz] ${#targets[@]} targets, ${secs}s each, $jobs at a time: no crashes"
