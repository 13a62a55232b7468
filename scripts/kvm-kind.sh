#!/usr/bin/env bash
# Prints what /dev/kvm is on this machine: vmx, svm, pvm or none.
# vmx/svm: hardware KVM that boots Linux guests at speed; pvm: KVM without
# hardware virtualization (kvm_pvm), which cannot; none: no usable /dev/kvm.
[ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo none; exit 0; }
if [ -d /sys/module/kvm_pvm ]; then echo pvm; exit 0; fi
if grep -qw vmx /proc/cpuinfo; then echo vmx
elif grep -qw svm /proc/cpuinfo; then echo svm
else echo pvm; fi
