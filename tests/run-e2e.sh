#!/usr/bin/env bash
# Builds the end-to-end tests and runs them where a Linux guest can boot:
# directly on a VT-x/AMD-V host, inside the nested test host when /dev/kvm is
# PVM (or missing). Says which.
#   tests/run-e2e.sh [TEST-BINARY-NAME...]   (default: every e2e test binary;
#   the name `agent` selects the agent's host tests, run in the test host only;
#   `shim` the shim's task-service tests, here on real micro-VMs)
#   tests/run-e2e.sh --build   only build every test binary it would run
#   (make test does that beside the initrd build)
#
# Nothing can hide a failure:
# - a test binary that does not build fails the run (cargo's exit status is
#   checked before any binary is collected);
# - every binary runs under a deadline (COCOON_E2E_DEADLINE, 900 s; each
#   half of critest 3300 s): a hang
#   is that binary's failure, and the session goes on with the next one;
# - a session is run again only when the test host itself hung (run.sh exit
#   126: soft lockup or heartbeat stall), at most twice; the rerun keeps the
#   results already recorded (build/e2e-NAME.results) and runs only the
#   binaries that have none. A test's failure or timeout is never rerun;
# - the summary counts binaries passed and failed and says which sessions
#   were rerun and why (also in build/e2e-summary.txt, which `make test`
#   prints on its last line).
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [ "${1:-}" = --build ]; then build_only=1; shift; fi
mkdir -p build
rm -f build/e2e-*.results build/e2e-*.why build/e2e-*.list build/e2e-reruns.txt build/e2e-summary.txt

deadline=${COCOON_E2E_DEADLINE:-900}
want=" $* "

# collect OUT PREFIX PACKAGE-DIR -- CARGO-TEST-ARGS...: builds the test
# binaries and writes "NAME EXE" lines (the test targets of the package in
# PACKAGE-DIR only, NAME prefixed) to OUT; a build failure ends the run with
# cargo's own messages. The builds are workspace-wide (`--workspace`), as in
# `make unit`, so that the dependencies are built with the same features and
# shared with it instead of built again in a second variant.
collect() {
  local out=$1 prefix=$2 pkg=$3; shift 4
  if ! cargo test "$@" --no-run --message-format=json-render-diagnostics >"$out.json" 2>"$out.log"; then
    tail -40 "$out.log" >&2
    echo "e2e: the test binaries did not build (cargo test $* --no-run): failing" >&2
    exit 1
  fi
  python3 - "$out.json" "$prefix" "$PWD/$pkg/Cargo.toml" >"$out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] \
       and m.get("manifest_path") == sys.argv[3] and t["name"] != "bench":
        print(sys.argv[2] + t["name"] + " " + m["executable"])
PY
}

kind=$(scripts/kvm-kind.sh)
# `make unit` runs every agent test on this host's cgroups. This machine's
# are v1 and the guest's are v2: in the test host (cgroup v2) the agent tests
# whose outcome depends on the cgroup version run again, no others.
case "$kind" in vmx|svm) run_agent=0;; *) run_agent=1;; esac
agent_cgroup_tests="memory_limit_oom_kill_and_event pids_limit_holds pause_stops_progress_and_resume_continues update_container_resources remove_leaves_nothing_behind ten_containers_without_cross_talk destroy_sandbox_removes_containers_and_the_cgroup_parent"

agent_bins=() shim_bins=() bins=()
if [ "$run_agent" = 1 ] && { [ $# -eq 0 ] || [[ "$want" == *" agent "* ]]; }; then
  collect build/e2e-bins-agent agent- agent -- --workspace --test features
  mapfile -t agent_bins <build/e2e-bins-agent
  [ ${#agent_bins[@]} -gt 0 ] || { echo "e2e: cargo built no agent test binary" >&2; exit 1; }
fi
if [ $# -eq 0 ] || [[ "$want" == *" shim "* ]]; then
  collect build/e2e-bins-shim shim- shim -- --workspace --test task_local
  mapfile -t shim_bins <build/e2e-bins-shim
  [ ${#shim_bins[@]} -gt 0 ] || { echo "e2e: cargo built no shim test binary" >&2; exit 1; }
fi
collect build/e2e-bins-vm "" tests -- --workspace --tests --features cocoon-e2e/e2e
mapfile -t all_bins <build/e2e-bins-vm
for b in "${all_bins[@]}"; do
  if [ $# -eq 0 ] || [[ "$want" == *" ${b%% *} "* ]]; then bins+=("$b"); fi
done
if [ ${#bins[@]} -eq 0 ] && [ ${#agent_bins[@]} -eq 0 ] && [ ${#shim_bins[@]} -eq 0 ]; then
  echo "e2e: no test binary matches: $*" >&2; exit 1
fi
[ "$build_only" = 0 ] || exit 0

# The VMM and the shim the tests start: the debug build, or with
# COCOON_E2E_PROFILE=release the release one (built by the caller).
profile=${COCOON_E2E_PROFILE:-debug}
export COCOON_E2E_BIN_DIR=$PWD/target/$profile
export COCOON_VMM=$COCOON_E2E_BIN_DIR/cocoon-vmm
for b in "$COCOON_VMM" "$COCOON_E2E_BIN_DIR/containerd-shim-cocoon-v2"; do
  [ -x "$b" ] || { echo "e2e: $b is missing: build the $profile profile first" >&2; exit 1; }
done
COCOON_KERNEL=$(readlink -f build/vmlinux)
export COCOON_KERNEL
export COCOON_INITRD=$PWD/build/initrd.cpio
export COCOON_DEVTEST_INITRD=$PWD/build/devtest-initrd.cpio
export COCOON_AGENT_INITRD=$PWD/build/agent-initrd.cpio
# The busybox image of the ctr tests, built once for the whole run.
export COCOON_E2E_IMAGE_TAR=$PWD/build/e2e-busybox.tar
python3 tests/ctr/mkimage.py --busybox "$(command -v busybox || echo /bin/busybox)" --out "$COCOON_E2E_IMAGE_TAR"
# The CRI tests' crictl and critest, built (once, cached) on this host, never
# in the slow test host; and their images (tests/ctr/criimages.py), built
# once for the whole run.
COCOON_CRI_TOOLS=$(scripts/cri-tools.sh)
export COCOON_CRI_TOOLS
export COCOON_CRI_IMAGES_TAR=$PWD/build/e2e-cri-images.tar
python3 tests/ctr/criimages.py build --out "$COCOON_CRI_IMAGES_TAR"

# Sessions: in the test host, one test-host boot each, run side by side
# (one per core, COCOON_E2E_JOBS). The binaries are dealt out so that the
# sessions take about as long as each other: longest first, each to the
# session with the least work so far, by the seconds each took on a 2-core
# machine of ours (a binary not in the table counts 60 s). A rerun repeats
# only the binaries without a result, so a session may be long.
jobs=${COCOON_E2E_JOBS:-$(( $(nproc) >= 2 ? 2 : 1 ))}
case "$kind" in vmx|svm) jobs=1;; esac
declare -A estimate=(
  [ctr_run]=150 [shim-task_local]=160 [ctr_host_boundary]=80 [ctr_vmm_jail]=55 [ctr_pod_network]=50 [cri]=210
  [agent-features]=20 [boot]=15 [devices]=12 [agent_boot]=30 [ctr_template]=200
)
# Tests long enough to be dealt out on their own (NAME:SECONDS:DEADLINE),
# by binary: critest's two halves take ~16 and ~10 min in a test host; the
# rest of their binary is one entry as usual.
declare -A split=(
  [cri]="critest_security_networking_streaming:1200:3300 critest_pods_and_containers:830:3300"
)
entries=() # "SECONDS<TAB>NAME<TAB>DEADLINE<TAB>COMMAND"
for b in "${bins[@]}"; do
  name=${b%% *} exe=$(printf '%q' "${b#* }") rest=""
  for t in ${split[$name]:-}; do
    IFS=: read -r test secs test_deadline <<<"$t"
    # A renamed test must not drop out of this list unnoticed.
    # (Read the whole listing: grep -q would close the pipe early, and the
    # test binary fails on the broken pipe.)
    listing=$("${b#* }" --list --exact "$test") || {
      echo "e2e: $name cannot list its tests" >&2; exit 1; }
    grep -qx "$test: test" <<<"$listing" || {
      echo "e2e: $name has no test $test (named in tests/run-e2e.sh)" >&2; exit 1; }
    entries+=("$secs"$'\t'"$name $test"$'\t'"$test_deadline"$'\t'"$exe --test-threads=1 --exact $test")
    rest+=" --skip $test"
  done
  entries+=("${estimate[$name]:-60}"$'\t'"$name"$'\t'"$deadline"$'\t'"$exe --test-threads=1$rest")
done
for b in "${shim_bins[@]}"; do
  entries+=("${estimate[${b%% *}]:-60}"$'\t'"${b%% *} (VM backend)"$'\t'"$deadline"$'\t'"COCOON_SHIM_TEST_BACKEND=vm $(printf '%q' "${b#* }") --test-threads=1")
done
for b in "${agent_bins[@]}"; do
  # A renamed test must not drop out of this list unnoticed.
  # shellcheck disable=SC2086 # the names are words
  listed=$("${b#* }" --list --exact $agent_cgroup_tests | grep -c ': test$' || true)
  [ "$listed" = "$(wc -w <<<"$agent_cgroup_tests")" ] || {
    echo "e2e: ${b%% *} has $listed of the cgroup-v2 tests named in tests/run-e2e.sh: $agent_cgroup_tests" >&2; exit 1; }
  entries+=("${estimate[${b%% *}]:-60}"$'\t'"${b%% *} (cgroup v2)"$'\t'"$deadline"$'\t'"$(printf '%q' "${b#* }") --test-threads=2 --exact $agent_cgroup_tests")
done
sessions=()
declare -A budget=() load=()
for i in $(seq 1 "$jobs"); do sessions+=("$i"); load[$i]=0; budget[$i]=120; done
while IFS=$'\t' read -r secs name limit cmd; do
  best=1
  for i in "${sessions[@]}"; do [ "${load[$i]}" -lt "${load[$best]}" ] && best=$i; done
  load[$best]=$(( ${load[$best]} + secs ))
  budget[$best]=$(( ${budget[$best]} + limit ))
  printf '%s\t%s\t%s\n' "$name" "$limit" "$cmd" >>"build/e2e-$best.list"
done < <(printf '%s\n' "${entries[@]}" | sort -t$'\t' -k1,1nr)
# A job with nothing to do is not a session.
for i in "${sessions[@]}"; do [ -s "build/e2e-$i.list" ] || unset "load[$i]"; done
sessions=("${!load[@]}")

# In the test host each session boots its own (one vCPU each); each
# session's output is printed when it ends.
run_session() { # NAME
  local n=$1 attempt rc
  for attempt in 1 2 3; do
    rc=0
    rm -f "build/e2e-$n.why"
    tests/testhost/run.sh --timeout "${budget[$n]}" --results "build/e2e-$n.results" --why "build/e2e-$n.why" \
      -- bash tests/e2e-session.sh "build/e2e-$n.list" "build/e2e-$n.results" || rc=$?
    if [ "$rc" = 126 ] && [ "$attempt" -lt 3 ]; then
      printf "session '%s', attempt %s: %s\n" "$n" "$attempt" "$(cat "build/e2e-$n.why")" >>build/e2e-reruns.txt
      echo "e2e: the test host failed during '$n' ($(cat "build/e2e-$n.why")); running the binaries of '$n' that have no result yet again" >&2
      continue
    fi
    break
  done
  return "$rc"
}
failed=()
case "$kind" in
  vmx|svm)
    echo "e2e: host KVM is hardware ($kind): running the end-to-end tests directly"
    for n in "${sessions[@]}"; do
      bash tests/e2e-session.sh "build/e2e-$n.list" "build/e2e-$n.results" || failed+=("$n")
    done ;;
  *)
    echo "e2e: host KVM is '$kind', which cannot boot Linux at speed: running the end-to-end tests inside the nested test host (QEMU TCG, emulated AMD SVM), $jobs test-host sessions side by side: $(for n in "${sessions[@]}"; do printf '%s: %s; ' "$n" "$(cut -f1 "build/e2e-$n.list" | paste -sd, | sed 's/,/, /g')"; done)"
    order=("${sessions[@]}")
    declare -A name_of=() start_of=()
    t0=$(date +%s)
    ( while sleep 60; do echo "e2e: $(( $(date +%s) - t0 )) s, sessions still running"; done ) &
    ticker=$!
    trap 'kill "$ticker" 2>/dev/null || true' EXIT
    finish() { # PID RC
      local n=${name_of[$1]}
      echo; echo "##### e2e session '$n' ended (exit $2) after $(( $(date +%s) - ${start_of[$1]} )) s; its output:"
      cat "build/e2e-$n.log"
      [ "$2" = 0 ] || failed+=("$n")
      unset "name_of[$1]"
    }
    reap() { local pid rc=0; wait -n -p pid "${!name_of[@]}" || rc=$?; finish "$pid" "$rc"; }
    for n in "${order[@]}"; do
      while [ ${#name_of[@]} -ge "$jobs" ]; do reap; done
      run_session "$n" >"build/e2e-$n.log" 2>&1 &
      name_of[$!]=$n; start_of[$!]=$(date +%s)
      echo "e2e: session '$n' started (its output: build/e2e-$n.log)"
    done
    while [ ${#name_of[@]} -gt 0 ]; do reap; done
    kill "$ticker" 2>/dev/null || true
    echo "e2e: the test-host sessions took $(( $(date +%s) - t0 )) s" ;;
esac

# The summary: every listed binary must have passed; one without a result
# (its session's test host died or ran out of time) is a failure too.
summary_rc=0
python3 - "${sessions[@]}" <<'PY' || summary_rc=$?
import sys
passed, failed, missing = [], [], []
for s in sys.argv[1:]:
    results = {}
    try:
        for line in open(f"build/e2e-{s}.results"):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 3:
                results[f[1]] = f
    except FileNotFoundError:
        pass
    for line in open(f"build/e2e-{s}.list"):
        name = line.split("\t")[0]
        r = results.get(name)
        if r is None:
            missing.append(f"{s}/{name}")
        elif r[0] == "PASS":
            passed.append(name)
        else:
            failed.append(f"{s}/{name}: {r[3] if len(r) > 3 else r[0]}")
total = len(passed) + len(failed) + len(missing)
print(f"e2e: {total} test binaries: {len(passed)} passed, {len(failed)} failed, {len(missing)} without a result")
for f in failed:
    print(f"e2e: FAILED {f}")
for m in missing:
    print(f"e2e: NO RESULT {m} (its session ended before it finished: see build/e2e-{m.split('/')[0]}.log)")
sys.exit(1 if failed or missing else 0)
PY
if [ -s build/e2e-reruns.txt ]; then
  line="$(wc -l <build/e2e-reruns.txt) test-host session(s) rerun because the test host failed: $(paste -sd';' build/e2e-reruns.txt)"
else
  line="no test-host session was rerun"
fi
echo "e2e: $line"
echo "$line" >build/e2e-summary.txt
if [ ${#failed[@]} -gt 0 ] || [ "$summary_rc" != 0 ]; then
  echo "e2e: failed sessions: ${failed[*]:-(every session ended 0, but not every binary passed)}" >&2
  exit 1
fi
echo "e2e: all sessions passed: ${sessions[*]}"
