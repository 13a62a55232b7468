#!/usr/bin/env bash
# make bench: runs the benches where a Linux guest boots at speed (directly on
# VT-x/AMD-V, inside the nested test host on PVM) and prints their tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
vsock_args=(--vmm "$PWD/target/release/cocoon-vmm" --kernel "$(readlink -f build/vmlinux)" --initrd "$PWD/build/devtest-initrd.cpio" --mib "${BENCH_VSOCK_MIB:-64}" --runs "${BENCH_RUNS:-5}")
fs_args=(--vmm "$PWD/target/release/cocoon-vmm" --kernel "$(readlink -f build/vmlinux)" --initrd "$PWD/build/devtest-initrd.cpio" --mib "${BENCH_FS_MIB:-256}" --runs "${BENCH_RUNS:-5}")
args=(--vmm "$PWD/target/release/cocoon-vmm" --kernel "$(readlink -f build/vmlinux)" --initrd "$PWD/build/initrd.cpio" --runs "${BENCH_RUNS:-5}")
kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm) echo "bench: host KVM is hardware ($kind): running directly"
           python3 tests/bench/boot.py "${args[@]}"
           python3 tests/bench/vsock.py "${vsock_args[@]}"
           python3 tests/bench/fs.py "${fs_args[@]}" ;;
  *) echo "bench: host KVM is '$kind': running inside the nested test host (QEMU TCG); absolute times are TCG-slowed, compare the ratios"
     tests/testhost/run.sh --timeout 1800 -- python3 tests/bench/boot.py "${args[@]}"
     tests/testhost/run.sh --timeout 1800 -- python3 tests/bench/vsock.py "${vsock_args[@]}"
     tests/testhost/run.sh --timeout 1800 -- python3 tests/bench/fs.py "${fs_args[@]}" ;;
esac
# The agent's container-start bench needs no VM: directly on this host.
tests/bench/agent.sh
