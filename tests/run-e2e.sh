#!/usr/bin/env bash
# Builds the end-to-end tests and runs them where a Linux guest can boot:
# directly on a VT-x/AMD-V host, inside the nested test host when /dev/kvm is
# PVM (or missing) — one test-host session for all of them. Says which.
#   tests/run-e2e.sh [TEST-BINARY-NAME...]   (default: every e2e test binary)
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t bins < <(cargo test -p cocoon-e2e --features e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] \
       and (not want or t["name"] in want):
        print(t["name"] + " " + m["executable"])' "$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo test -p cocoon-e2e --features e2e --no-run
  echo "e2e: no test binary built${*:+ for: $*}" >&2; exit 1
fi

export COCOON_VMM=$PWD/target/debug/cocoon-vmm
export COCOON_KERNEL=$(readlink -f build/vmlinux)
export COCOON_INITRD=$PWD/build/initrd.cpio
export COCOON_DEVTEST_INITRD=$PWD/build/devtest-initrd.cpio
export COCOON_AGENT_INITRD=$PWD/build/agent-initrd.cpio

# One script runs every binary and fails if any failed.
script=$PWD/build/e2e-run.sh
{
  echo 'rc=0'
  for b in "${bins[@]}"; do
    name=${b%% *}; exe=${b#* }
    echo "echo; echo \"=== e2e: $name\"; $(printf '%q' "$exe") --test-threads=1 || rc=1"
  done
  echo 'exit $rc'
} >"$script"

kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm)
    echo "e2e: host KVM is hardware ($kind): running the end-to-end tests directly"
    bash "$script" ;;
  *)
    echo "e2e: host KVM is '$kind', which cannot boot Linux at speed: running the end-to-end tests inside the nested test host (QEMU TCG, emulated AMD SVM)"
    tests/testhost/run.sh --timeout 2400 -- bash "$script" ;;
esac
