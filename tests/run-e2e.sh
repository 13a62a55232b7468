#!/usr/bin/env bash
# Builds the end-to-end tests and runs them where a Linux guest can boot:
# directly on a VT-x/AMD-V host, inside the nested test host when /dev/kvm is
# PVM (or missing). Says which.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(cargo test -p cocoon-e2e --features e2e --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"] and m["target"]["name"] == "boot":
        print(m["executable"])')
[ -n "$bin" ] || { cargo test -p cocoon-e2e --features e2e --no-run; echo "e2e: could not build the test binary" >&2; exit 1; }

export COCOON_VMM=$PWD/target/debug/cocoon-vmm
export COCOON_KERNEL=$(readlink -f build/vmlinux)
export COCOON_INITRD=$PWD/build/initrd.cpio

kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm)
    echo "e2e: host KVM is hardware ($kind): running the end-to-end tests directly"
    "$bin" --test-threads=1 ;;
  *)
    echo "e2e: host KVM is '$kind', which cannot boot Linux at speed: running the end-to-end tests inside the nested test host (QEMU TCG, emulated AMD SVM)"
    tests/testhost/run.sh --timeout 1500 -- "$bin" --test-threads=1 ;;
esac
