#!/usr/bin/env bash
# make fuzz-smoke: runs each cargo-fuzz target of the VMM for a bounded time
# (FUZZ_SECONDS, default 30) on the stable toolchain without a sanitizer
# (`-s none`: nightly is not available here). Installs cargo-fuzz if missing.
# Not part of make test. Crashes land in vmm/fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../vmm/fuzz"
command -v cargo-fuzz >/dev/null || { echo "[fuzz] cargo install cargo-fuzz --locked"; cargo install cargo-fuzz --locked --quiet; }
secs=${FUZZ_SECONDS:-30}
for target in $(cargo fuzz list); do
  echo "[fuzz] $target for ${secs}s"
  cargo fuzz run -s none "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | grep -E '^(#[0-9]+ +DONE|==|SUMMARY|Done)|panicked|ERROR' || true
  [ -z "$(ls -A "artifacts/$target" 2>/dev/null)" ] || { echo "[fuzz] $target found a crash: vmm/fuzz/artifacts/$target/" >&2; exit 1; }
done
echo "[fuzz] no crashes"
