#!/usr/bin/env bash
# Runs groups of make targets side by side, the targets of each group one
# after the other, every output line prefixed with its group's first target;
# fails, naming the groups that failed, once all have ended. `make test` uses
# it for the builds and host tests that use different cargo output
# directories (lint and unit: target/debug; the guest initrd:
# target/<triple>/guest; the fuzz targets: target/fuzz), so that one's
# single-threaded stretches (a fat-LTO link, a fuzzer) fill the other core.
#   scripts/side-by-side.sh "lint unit" "initrd fuzz-smoke"
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A group_of=()
for g in "$@"; do
  tag=${g%% *}
  # shellcheck disable=SC2086 # a group is a list of targets
  ( s=$(date +%s)
    make --no-print-directory $g 2>&1 | sed -u "s/^/[$tag] /"
    rc=${PIPESTATUS[0]}
    echo "[$tag] $g: $([ "$rc" = 0 ] && echo done || echo "FAILED (exit $rc)") in $(( $(date +%s) - s )) s"
    exit "$rc" ) &
  group_of[$!]=$g
done
failed=()
for pid in "${!group_of[@]}"; do
  wait "$pid" || failed+=("${group_of[$pid]}")
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'make: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
