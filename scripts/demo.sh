#!/usr/bin/env bash
# make demo: boots the cocoon guest in cocoon-vmm and shows the init's banner
# and how long the boot took. Directly on VT-x/AMD-V; inside the nested test
# host when this machine's /dev/kvm is PVM.
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=$PWD/target/release/cocoon-vmm
kernel=$(readlink -f build/vmlinux)
initrd=$PWD/build/initrd.cpio
boot="start=\$(date +%s.%N); $(printf '%q' "$vmm") --kernel $(printf '%q' "$kernel") --initrd $(printf '%q' "$initrd") --vcpus 2 --memory 256 --cmdline quiet; rc=\$?; end=\$(date +%s.%N); echo; echo \"demo: cocoon-vmm exited \$rc after \$(echo \"\$end - \$start\" | bc) s (VMM start to guest reset)\"; exit \$rc"
kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm) echo "demo: host KVM is hardware ($kind): booting directly"
           bash -c "$boot" ;;
  *) echo "demo: host KVM is '$kind' (cannot boot Linux at speed): booting inside the nested test host (QEMU TCG, emulated AMD SVM; ~20 s to start it)"
     tests/testhost/run.sh --timeout 600 -- bash -c "$boot" ;;
esac
