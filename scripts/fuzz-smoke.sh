#!/usr/bin/env bash
# make fuzz-smoke / make fuzz: builds the cargo-fuzz crates of the VMM
# (vmm/fuzz) and the shim (shim/fuzz) and runs each of their targets for
# FUZZ_SECONDS (default 10; make fuzz: 300), one after the other.
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

if rustup run nightly rustc --version >/dev/null 2>&1; then
  tc=(+nightly)
  san=(-s address)
  echo "[fuzz] toolchain: $(rustup run nightly rustc --version) with AddressSanitizer"
else
  tc=()
  san=(-s none)
  echo "[fuzz] toolchain: $(rustc --version), no sanitizer (-s none; no nightly toolchain)"
fi

work=$(mktemp -d /tmp/cocoon-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

fail() { echo "[fuzz] FAILED: $*" >&2; exit 1; }

for crate in "${crates[@]}"; do
  echo "[fuzz] building $crate"
  if ! (cd "$crate" && cargo "${tc[@]}" fuzz build "${san[@]}" --target-dir "$target_dir") >"$work/build.log" 2>&1; then
    grep -E '^(error|warning: unused)|^ +--> ' "$work/build.log" | head -40 >&2 || true
    tail -20 "$work/build.log" >&2
    fail "cargo fuzz build in $crate"
  fi
done

ran=0
for crate in "${crates[@]}"; do
  for target in $(cd "$crate" && cargo fuzz list); do
    if [ -n "$only" ] && [[ " $only " != *" $target "* ]]; then continue; fi
    seeds="$crate/corpus/$target"
    [ -d "$seeds" ] || fail "$target has no seed corpus ($seeds)"
    artifacts="$crate/artifacts/$target"
    mkdir -p "$artifacts"
    before=$(ls -A "$artifacts")
    new_corpus="$work/corpus-$target"
    scratch="$work/tmp-$target"
    mkdir -p "$new_corpus" "$scratch"
    log="$work/$target.log"
    status=0
    (cd "$crate" && TMPDIR="$scratch" cargo "${tc[@]}" fuzz run "${san[@]}" --target-dir "$target_dir" \
      "$target" "$new_corpus" "corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb="$rss" -timeout="$per_input" \
      -print_final_stats=1 -close_fd_mask=1) >"$log" 2>&1 || status=$?
    rm -rf "$scratch"
    found=$(comm -13 <(echo "$before" | sort) <(ls -A "$artifacts" | sort) | grep -E '^(crash|leak|timeout|oom)-' || true)
    if [ "$status" != 0 ] || [ -n "$found" ]; then
      grep -E '^(==[0-9]+==|SUMMARY|thread .* panicked|ERROR:)' "$log" | head -20 >&2 || true
      tail -30 "$log" >&2
      artifact=${found:+$crate/artifacts/$target/$(echo "$found" | head -1)}
      echo "[fuzz] $target crashed (exit $status); artifact: ${artifact:-none written}" >&2
      echo "[fuzz] reproduce: (cd $crate && cargo ${tc[*]} fuzz run ${san[*]} $target ${artifact:+artifacts/$target/$(echo "$found" | head -1)})" >&2
      fail "$target"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    corpus=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
    if [ -z "$execs" ]; then
      execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    fi
    if [ -z "$execs" ] || [ "$execs" = 0 ]; then
      tail -20 "$log" >&2
      fail "$target executed no input"
    fi
    printf '[fuzz] %-16s %9s execs %7s exec/s  corpus %s (%s new)\n' \
      "$target" "$execs" "${per_sec:-?}" "${corpus:-?}" "${added:-?}"
    ran=$((ran + 1))
  done
done
[ "$ran" -gt 0 ] || fail "no fuzz target ran${only:+ (FUZZ_TARGETS=$only)}"
echo "[fuzz] $ran targets, ${secs}s each: no crashes"
