#!/usr/bin/env bash
# make bench: runs the benches where a Linux guest boots at speed (directly on
# VT-x/AMD-V, inside the nested test host on PVM) and prints their tables.
#   tests/bench/run.sh [boot|restore|vsock|fs|ctr|cri|jail|agent ...]   (default: all of them)
# Knobs: BENCH_RUNS (boot, vsock, fs; default 5), BENCH_VSOCK_MIB (64),
# BENCH_FS_MIB (256), BENCH_CTR_RUNS (10), BENCH_CRI_RUNS (5), BENCH_CRI_MIB (64), BENCH_CRI_P2P_MIB (8),
# BENCH_JAIL_RUNS (5),
# BENCH_TIMEOUT (test-host seconds per bench, default 3600),
# COCOON_BENCH_FIRECRACKER (the Firecracker peer; default ../shared/peers/firecracker).
#
# A bench whose test host itself failed (run.sh exit 126: its kernel hung or
# its heartbeat stopped) runs again, twice at most; that is the only rerun.
# Any other non-zero exit (a bench's own failure, 124 = the bench ran past
# the timeout) fails the bench: the remaining benches still run, then this
# script exits 1 naming the failed ones. The summary at the end lists what
# ran and every rerun with the test host's reason.
set -uo pipefail
cd "$(dirname "$0")/../.."
all="boot restore vsock fs ctr cri jail agent"
want=" ${*:-$all} "
for b in $want; do
  [[ " $all " == *" $b "* ]] || { echo "bench: unknown bench '$b' (expected some of: $all)" >&2; exit 2; }
done
kernel=$(readlink -f build/vmlinux)
vmm=$PWD/target/release/cocoon-vmm
declare -A bench_args=(
  [boot]="--vmm $vmm --kernel $kernel --initrd $PWD/build/initrd.cpio --runs ${BENCH_RUNS:-5}"
  [restore]="--vmm $vmm --kernel $kernel --initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_RUNS:-5}"
  [vsock]="--vmm $vmm --kernel $kernel --initrd $PWD/build/devtest-initrd.cpio --mib ${BENCH_VSOCK_MIB:-64} --runs ${BENCH_RUNS:-5}"
  [fs]="--vmm $vmm --kernel $kernel --initrd $PWD/build/devtest-initrd.cpio --mib ${BENCH_FS_MIB:-256} --runs ${BENCH_RUNS:-5}"
  [ctr]="--vmm $vmm --kernel $kernel --initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_CTR_RUNS:-10}"
  [cri]="--vmm $vmm --kernel $kernel --initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_CRI_RUNS:-5} --mib ${BENCH_CRI_MIB:-64} --p2p-mib ${BENCH_CRI_P2P_MIB:-8} --cri-tools CRI_TOOLS --images-tar $PWD/build/bench-cri-images.tar"
  [jail]="--vmm $vmm --kernel $kernel --initrd $PWD/build/initrd.cpio --agent-initrd $PWD/build/agent-initrd.cpio --runs ${BENCH_JAIL_RUNS:-5}"
)
kind=$(scripts/kvm-kind.sh)
case "$kind" in
  vmx|svm) echo "bench: host KVM is hardware ($kind): running directly" ;;
  *) echo "bench: host KVM is '$kind': running inside the nested test host ($(scripts/testhost-qemu.sh --version), TCG); absolute times are TCG-slowed, compare the ratios" ;;
esac

# The CRI bench's crictl and images, made here (never in the slow test host).
if [[ "$want" == *" cri "* ]]; then
  cri_tools=$(scripts/cri-tools.sh) || exit 1
  bench_args[cri]=${bench_args[cri]/CRI_TOOLS/$cri_tools}
  python3 tests/ctr/criimages.py build --out build/bench-cri-images.tar || exit 1
fi

ran=() failed=() reruns=()
errlog=$(mktemp /tmp/cocoon-bench-stderr.XXXXXX)
trap 'rm -f "$errlog"' EXIT
exec 3>&1

# Why the test host failed, from what tests/testhost/run.sh said on stderr.
testhost_reason() {
  local r
  r=$(grep -m1 -E '^testhost: .*(hung|stopped|lockup|heartbeat|without an exit code)' "$errlog")
  [ -n "$r" ] || r=$(grep -E '^testhost: ' "$errlog" | grep -v '^testhost: monitor' | tail -n1)
  r=${r#testhost: }; r=${r%; killing it*}
  echo "${r:-the test host failed (exit 126)}"
}

# Runs LABEL's command in the test host (again, twice at most, if the test
# host itself failed); sets rc. Run-host options go before the "--".
in_testhost() { # LABEL [run.sh options] -- CMD...
  local label=$1 attempt reason
  shift
  for attempt in 1 2 3; do
    # stderr goes to the terminal and to $errlog (for the test host's reason).
    tests/testhost/run.sh --timeout "${BENCH_TIMEOUT:-3600}" "$@" 2>&1 1>&3 3>&- | tee "$errlog" >&2
    rc=${PIPESTATUS[0]}
    [ "$rc" = 126 ] || break
    reason=$(testhost_reason)
    if [ "$attempt" -lt 3 ]; then
      reruns+=("$label: $reason")
      echo "bench: the test host failed during '$label' ($reason); running '$label' again" >&2
    else
      rc="126, the test host failed 3 times, last: $reason"
    fi
  done
}

for b in boot restore vsock fs ctr cri jail; do
  [[ "$want" == *" $b "* ]] || continue
  # shellcheck disable=SC2086 # the arguments are paths without spaces
  case "$kind" in
    vmx|svm) rc=0; python3 "tests/bench/$b.py" ${bench_args[$b]} || rc=$? ;;
    *)
      if [ "$b" = ctr ]; then
        # Each variant's phase in a test host of its own (tests/bench/ctr.py
        # says why), its figures handed out as a JSON line; the tables after.
        phases=$(mktemp /tmp/cocoon-bench-ctr.XXXXXX)
        worst=0
        for v in cocoon cocoon-eager cocoon-boot; do
          rm -f "$phases.one"
          in_testhost "ctr ($v)" --results "$phases.one" -- \
            python3 tests/bench/ctr.py ${bench_args[ctr]} --variant "$v" --results-json
          # A phase's JSON line is kept only if it is whole.
          if [ -s "$phases.one" ]; then grep "^{.*}\$" "$phases.one" | tail -n1 >>"$phases" || true; fi
          [ "$rc" = 0 ] || worst=$rc
        done
        rm -f "$phases.one"
        rc=0
        python3 tests/bench/ctr.py --report "$phases" --expect cocoon --expect cocoon-eager \
          --expect cocoon-boot || rc=$?
        [ "$worst" = 0 ] || rc=$worst
        rm -f "$phases"
      else
        in_testhost "$b" -- python3 "tests/bench/$b.py" ${bench_args[$b]}
      fi ;;
  esac
  if [ "$rc" = 0 ]; then ran+=("$b: ok"); else ran+=("$b: FAILED (exit $rc)"); failed+=("$b"); fi
done
# The agent's container-start bench needs no VM: directly on this host.
if [[ "$want" == *" agent "* ]]; then
  rc=0; tests/bench/agent.sh || rc=$?
  if [ "$rc" = 0 ]; then ran+=("agent: ok"); else ran+=("agent: FAILED (exit $rc)"); failed+=("agent"); fi
fi

echo
echo "bench: summary: ${#ran[@]} bench(es) ran"
for r in "${ran[@]}"; do echo "bench:   $r"; done
if [ "${#reruns[@]}" -eq 0 ]; then
  echo "bench: no bench was rerun"
else
  echo "bench: ${#reruns[@]} bench run(s) repeated because the test host failed:"
  for r in "${reruns[@]}"; do echo "bench:   $r"; done
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "bench: FAILED: ${failed[*]}"
  exit 1
fi
echo "bench: all passed"
