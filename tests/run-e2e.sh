#!/usr/bin/env bash
# Builds the end-to-end tests and runs them where a Linux guest can boot:
# directly on a VT-x/AMD-V host, inside the nested test host when /dev/kvm is
# PVM (or missing) — one test-host session for all of them. Says which.
#   tests/run-e2e.sh [TEST-BINARY-NAME...]   (default: every e2e test binary;
#   the name `agent` selects the agent's host tests, run in the test host only;
#   `shim` the shim's task-service tests, here on real micro-VMs)
set -euo pipefail
cd "$(dirname "$0")/.."

# The agent's host tests (real containers over a Unix socket) also run in the
# test host, whose /sys/fs/cgroup is a real cgroup v2 (this machine's is v1).
agent_bins=()
if [ $# -eq 0 ] || [[ " $* " == *" agent "* ]]; then
  mapfile -t agent_bins < <(cargo test -p cocoon-agent -p cocoon-agent-ctl --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] \
       and t["name"] != "bench":
        print("agent-" + t["name"] + " " + m["executable"])')
  [ ${#agent_bins[@]} -gt 0 ] || { cargo test -p cocoon-agent -p cocoon-agent-ctl --no-run; echo "e2e: the agent tests did not build" >&2; exit 1; }
fi

# The shim's task-service tests, on the VM backend: the task API driven
# directly by a test client against real micro-VMs (pod grouping included).
shim_bins=()
if [ $# -eq 0 ] || [[ " $* " == *" shim "* ]]; then
  mapfile -t shim_bins < <(cargo test -p containerd-shim-cocoon-v2 --test task_local --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"]:
        print("shim-" + t["name"] + " " + m["executable"])')
  [ ${#shim_bins[@]} -gt 0 ] || { cargo test -p containerd-shim-cocoon-v2 --test task_local --no-run; echo "e2e: the shim tests did not build" >&2; exit 1; }
fi

mapfile -t bins < <(cargo test -p cocoon-e2e --features e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] \
       and (not want or t["name"] in want):
        print(t["name"] + " " + m["executable"])' "$@")
if [ ${#bins[@]} -eq 0 ] && [ ${#agent_bins[@]} -eq 0 ] && [ ${#shim_bins[@]} -eq 0 ]; then
  cargo test -p cocoon-e2e --features e2e --no-run
  echo "e2e: no test binary built${*:+ for: $*}" >&2; exit 1
fi

export COCOON_VMM=$PWD/target/debug/cocoon-vmm
export COCOON_KERNEL=$(readlink -f build/vmlinux)
export COCOON_INITRD=$PWD/build/initrd.cpio
export COCOON_DEVTEST_INITRD=$PWD/build/devtest-initrd.cpio
export COCOON_AGENT_INITRD=$PWD/build/agent-initrd.cpio

kind=$(scripts/kvm-kind.sh)
# Directly on a hardware-KVM host `make unit` already ran the agent tests on
# that host's cgroups; inside the test host they add cgroup v2 coverage.
case "$kind" in vmx|svm) COCOON_E2E_AGENT=0;; *) COCOON_E2E_AGENT=1;; esac

# Sessions: the VM tests in groups, each group one script (and, in the test
# host, one test-host boot), so that a test host that dies costs one group's
# rerun, not the whole run's. Each script runs its binaries and fails if any
# failed.
sessions=()
session() { # NAME LINE... -> build/e2e-NAME.sh
  local name=$1; shift
  local f=$PWD/build/e2e-$name.sh
  { echo 'rc=0'; printf '%s\n' "$@"; echo 'exit $rc'; } >"$f"
  sessions+=("$name")
}
timed() { # LABEL CMD -> a line that runs CMD, says how long it took, and records a failure
  echo "echo; echo \"=== e2e: $1\"; s=\$(date +%s); $2 || rc=1; echo \"=== $1 took \$(( \$(date +%s) - s )) s\""
}
devices=(); ctr=(); boundary=()
for b in "${bins[@]}"; do
  name=${b%% *}; exe=${b#* }
  line=$(timed "$name" "$(printf '%q' "$exe") --test-threads=1")
  # The hostile-guest and VMM-jail tests (ctr_host_boundary, ctr_vmm_jail) boot several pods of their
  # own: a session of their own keeps the ctr session's length.
  case "$name" in ctr_host_boundary|ctr_vmm_jail) boundary+=("$line");; ctr_*) ctr+=("$line");; *) devices+=("$line");; esac
done
[ ${#devices[@]} -eq 0 ] || session devices "${devices[@]}"
[ ${#ctr[@]} -eq 0 ] || session ctr "${ctr[@]}"
[ ${#boundary[@]} -eq 0 ] || session boundary "${boundary[@]}"
shim=()
for b in "${shim_bins[@]}"; do
  name=${b%% *}; exe=${b#* }
  shim+=("$(timed "$name (VM backend)" "COCOON_SHIM_TEST_BACKEND=vm $(printf '%q' "$exe") --test-threads=1")")
done
[ ${#shim[@]} -eq 0 ] || session shim "${shim[@]}"
if [ "${COCOON_E2E_AGENT:-}" = 1 ]; then
  agent=()
  for b in "${agent_bins[@]}"; do
    name=${b%% *}; exe=${b#* }
    agent+=("$(timed "$name (cgroup \$(stat -fc %T /sys/fs/cgroup))" "$(printf '%q' "$exe") --test-threads=2")")
  done
  [ ${#agent[@]} -eq 0 ] || session agent "${agent[@]}"
fi

# In the test host each session boots its own test host (one vCPU each), so
# sessions run side by side, COCOON_E2E_JOBS at a time (default: one per
# host core, at most 2), longest first; each one's output is printed when
# it ends. A session that failed through the test host itself (124 timeout,
# 125 no exit code, 126 hung kernel), not through a test, runs again (twice
# at most).
run_session() { # NAME
  local n=$1 attempt rc=0
  for attempt in 1 2 3; do
    rc=0; tests/testhost/run.sh --timeout 1200 -- bash "build/e2e-$n.sh" || rc=$?
    case "$rc" in
      124|125|126) [ "$attempt" -lt 3 ] && echo "e2e: the test host failed ($rc) during '$n'; running that group again" >&2 ;;
      *) break ;;
    esac
  done
  return "$rc"
}
failed=()
case "$kind" in
  vmx|svm)
    echo "e2e: host KVM is hardware ($kind): running the end-to-end tests directly"
    for n in "${sessions[@]}"; do bash "build/e2e-$n.sh" || failed+=("$n"); done ;;
  *)
    jobs=${COCOON_E2E_JOBS:-$(( $(nproc) >= 2 ? 2 : 1 ))}
    echo "e2e: host KVM is '$kind', which cannot boot Linux at speed: running the end-to-end tests inside the nested test host (QEMU TCG, emulated AMD SVM), one test host per group, $jobs at a time: ${sessions[*]}"
    order=()
    for n in ctr shim boundary devices agent; do [[ " ${sessions[*]} " == *" $n "* ]] && order+=("$n"); done
    for n in "${sessions[@]}"; do [[ " ${order[*]} " == *" $n "* ]] || order+=("$n"); done
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
if [ ${#failed[@]} -gt 0 ]; then
  echo "e2e: failed: ${failed[*]}" >&2
  exit 1
fi
echo "e2e: all sessions passed: ${sessions[*]}"
