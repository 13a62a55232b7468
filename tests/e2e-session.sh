#!/usr/bin/env bash
# One end-to-end session: runs the test binaries listed in LIST one after the
# other (in the nested test host, or directly on a hardware-KVM host) and
# records one result line per binary.
#
#   tests/e2e-session.sh LIST RECORDED
#
# LIST has one binary per line: NAME<TAB>DEADLINE-SECONDS<TAB>COMMAND.
# RECORDED holds the results of earlier attempts of this session (a test
# host that hung is run again): a binary with a result there, passed or
# failed, is not run again, and a failure stays a failure.
# New results go to $COCOON_TESTHOST_RESULTS (the test host's share, which
# run.sh --results copies to RECORDED) or, outside the test host, straight
# to RECORDED: PASS|FAIL<TAB>NAME<TAB>SECONDS[<TAB>WHY].
# Each binary runs under `timeout`: one that passes its deadline is killed
# and recorded as failed ("timed out"), and the session goes on.
# Exits 0 when every binary of LIST has passed, in this attempt or before.
set -uo pipefail
list=$1 recorded=$2
results=${COCOON_TESTHOST_RESULTS:-$recorded}
failed=0
while IFS=$'\t' read -r name deadline cmd <&3; do
  [ -n "$name" ] || continue
  earlier=$(awk -F'\t' -v n="$name" '$2 == n { print $1 }' "$recorded" 2>/dev/null | tail -n1)
  if [ -n "$earlier" ]; then
    echo; echo "=== e2e: $name: $earlier in an earlier attempt of this session; not run again"
    [ "$earlier" = PASS ] || failed=1
    continue
  fi
  echo; echo "=== e2e: $name (deadline ${deadline} s)"
  s=$(date +%s) rc=0
  timeout -k 30 "$deadline" bash -c "$cmd" </dev/null || rc=$?
  took=$(( $(date +%s) - s ))
  echo # a killed binary leaves its last line unfinished
  if [ "$rc" = 0 ]; then
    printf 'PASS\t%s\t%s\n' "$name" "$took" >>"$results"
    echo "=== $name passed in $took s"
  else
    why="exit code $rc"
    if [ "$took" -ge "$deadline" ]; then why="timed out: still running after its deadline of $deadline s, killed"; fi
    printf 'FAIL\t%s\t%s\t%s\n' "$name" "$took" "$why" >>"$results"
    echo "=== $name FAILED after $took s: $why"
    failed=1
  fi
done 3<"$list"
sync
exit "$failed"
