#!/usr/bin/env bash
# make demo: ctr run --rm --runtime io.containerd.cocoon.v2 ... echo hello
# from a micro-VM, through a containerd of our own. Directly on VT-x/AMD-V;
# inside the nested test host when this machine's /dev/kvm is PVM.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm) echo "demo: host KVM is hardware ($kind): running directly"
           scripts/demo-ctr.sh ;;
  *) echo "demo: host KVM is '$kind' (cannot boot Linux at speed): running inside the nested test host (QEMU TCG, emulated AMD SVM; ~20 s to start it)"
     tests/testhost/run.sh --timeout 900 -- scripts/demo-ctr.sh ;;
esac
