#!/usr/bin/env bash
# make bench: runs the benches where a Linux guest boots at speed (directly on
# VT-x/AMD-V, inside the nested test host on PVM) and prints their tables.
#   tests/bench/run.sh [boot|vsock|fs|ctr|jail|agent ...]   (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/../.."
want=" ${*:-boot vsock fs ctr jail agent} "
kernel=$(readlink -f build/vmlinux)
vmm=$PWD/target/release/cocoon-vmm
declare -A bench_args=(
  [boot]="--vmm $vmm --kernel $kernel --initrd $PWD/build/initrd.cpio --runs ${BENCH_RUNS:-5}"
  [vsock]="--vmm $vmm --kernel $kernel --initrd $PWD/build/devtest-initrd.cpio --mib ${BENCH_VSOCK_MIB:-64} --runs ${BENCH_RUNS:-5}"
  [fs]="--vmm $vmm --kernel $kernel --initrd $PWD/build/devtest-initrd.cpio --mib ${BENCH_FS_MIB:-256} --runs ${BENCH_RUNS:-5}"
  [ctr]="--vmm $vmm --kernel $kernel --initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_CTR_RUNS:-10}"
  [jail]="--vmm $vmm --kernel $kernel --initrd $PWD/build/initrd.cpio --agent-initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_JAIL_RUNS:-5}"
)
kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm) echo "bench: host KVM is hardware ($kind): running directly" ;;
  *) echo "bench: host KVM is '$kind': running inside the nested test host (QEMU TCG); absolute times are TCG-slowed, compare the ratios" ;;
esac
for b in boot vsock fs ctr jail; do
  [[ "$want" == *" $b "* ]] || continue
  # shellcheck disable=SC2086 # the arguments are paths without spaces
  case "$kind" in
    vmx|svm) python3 "tests/bench/$b.py" ${bench_args[$b]} ;;
    *)
      # A test host that failed itself (124 timeout, 125 no exit code, 126
      # hung kernel) is not a bench result: run that bench again, twice at most.
      for attempt in 1 2 3; do
        rc=0; tests/testhost/run.sh --timeout 1800 -- python3 "tests/bench/$b.py" ${bench_args[$b]} || rc=$?
        case "$rc" in
          0) break ;;
          124|125|126) [ "$attempt" -lt 3 ] || exit "$rc"; echo "bench: the test host failed ($rc) during '$b'; running it again" >&2 ;;
          *) exit "$rc" ;;
        esac
      done ;;
  esac
done
# The agent's container-start bench needs no VM: directly on this host.
if [[ "$want" == *" agent "* ]]; then tests/bench/agent.sh; fi
