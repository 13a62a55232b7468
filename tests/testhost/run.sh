#!/usr/bin/env bash
# Runs a command inside the nested test host: a Linux VM under QEMU TCG with
# emulated AMD SVM, so that /dev/kvm inside it is real (emulated) hardware KVM
# that can boot Linux guests, unlike this machine's PVM /dev/kvm.
#
#   tests/testhost/run.sh [--timeout SECS] [--mem MIB] [--cpus N] [--keep-log]
#                         [--results FILE] [--why FILE] -- CMD [ARGS...]
#
# Inside: the host's root read-only (9p) with a writable tmpfs overlay, the same
# working directory, kvm_amd/vhost_vsock/tun/fuse loaded, cgroup2 mounted.
# CMD's stdout and stderr go to a file on a 9p share that is followed here
# live, so what reaches this machine is byte for byte what CMD printed.
# Its exit code is ours, except:
#   124  CMD ran past --timeout: CMD's own failure (a hang), never retried
#   125  the test host ended without an exit code (it crashed): a failure
#   126  the test host itself hung (soft lockups on its console, or its
#        heartbeat stopped): the one case a caller may run CMD again.
# With --why FILE, the reason for 124/125/126 is written there (one line).
# CMD may append lines to $COCOON_TESTHOST_RESULTS; with --results FILE they
# are appended to FILE whatever happened, also when the test host hung.
# One vCPU by default: with two, QEMU's multi-threaded TCG under nested SVM
# was seen to hang the test host (soft lockups on both vCPUs) mid-run.
# No vGIF (`-cpu max,-vgif`, COCOON_TESTHOST_CPU overrides): a test host that
# stopped dead was caught halted with interrupts enabled and the timer's
# vector pending in its local APIC's IRR, i.e. with its global interrupt
# flag left clear — the state a virtual-GIF mix-up in the emulated SVM
# would leave after a #VMEXIT. Without vGIF, KVM in the test host sets the
# real GIF with STGI (its L2 guests run no hypervisor, so nothing is lost).
# The test host's own console goes to a log, printed when something fails.
set -euo pipefail

timeout=900 mem=${COCOON_TESTHOST_MEM:-4096} cpus=${COCOON_TESTHOST_CPUS:-1} keep_log=0 results="" why=""
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=$2; shift 2;;
    --mem) mem=$2; shift 2;;
    --cpus) cpus=$2; shift 2;;
    --keep-log) keep_log=1; shift;;
    --results) results=$2; shift 2;;
    --why) why=$2; shift 2;;
    --) shift; break;;
    -h|--help) sed -n '2,19p' "$0"; exit 0;;
    *) echo "testhost: unknown option '$1' (usage: run.sh [--timeout S] [--mem MIB] [--cpus N] -- CMD...)" >&2; exit 2;;
  esac
done
[ $# -gt 0 ] || { echo "testhost: no command given (usage: run.sh [options] -- CMD...)" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
initramfs=$("$here/build-initramfs.sh")
kver=$(cat "$(dirname "$initramfs")/kernel-version")
kernel=/boot/vmlinuz-$kver
# QEMU 8.0+ (scripts/testhost-qemu.sh says why; it unpacks one if the
# system's is older).
qemu=$("$here/../../scripts/testhost-qemu.sh") || exit 2
# The test host's emulator, for the benches' headers.
COCOON_TESTHOST_EMULATOR=$("$qemu" --version | head -n1)
export COCOON_TESTHOST_EMULATOR

out=$(mktemp -d /tmp/cocoon-testhost.XXXXXX)
qpid=""
tailpid=""
cleanup() {
  local rc=$?
  if [ -n "$qpid" ]; then kill -9 "$qpid" 2>/dev/null || true; fi
  # tail ends by itself once QEMU is gone, after reading what is left.
  if [ -n "$tailpid" ]; then wait "$tailpid" 2>/dev/null || true; fi
  if [ -n "$results" ] && [ -f "$out/results" ]; then cat "$out/results" >>"$results"; fi
  rm -rf "$out"
  exit "$rc"
}
# The test host failed or CMD ran out of time: say why (stderr and --why).
give_up() { # REASON
  echo "testhost: $1" >&2
  if [ -n "$why" ]; then echo "$1" >"$why"; fi
  kill -9 "$qpid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
  echo "cd $(printf '%q' "$PWD") || exit 97"
  while IFS='=' read -r name _; do
    case "$name" in
      PATH|HOME|USER|LANG|RUST_LOG|RUST_BACKTRACE|CARGO_*|COCOON_*|CI) echo "export $name=$(printf '%q' "${!name}")";;
    esac
  done < <(env)
  echo "export COCOON_IN_TESTHOST=1 COCOON_TESTHOST_RESULTS=/run/testhost/results"
  printf 'exec'; printf ' %q' "$@"; echo
} >"$out/cmd.sh"
printf "%s" "$PWD" >"$out/cwd"
: >"$out/output"

"$qemu" -M pc -accel ${COCOON_TESTHOST_ACCEL:-tcg} -cpu ${COCOON_TESTHOST_CPU:-max,-vgif} -smp "$cpus" -m "$mem" \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$kernel" -initrd "$initramfs" \
  -append "console=ttyS0 rdinit=/init quiet loglevel=3 panic=-1 ${COCOON_TESTHOST_APPEND:-}" \
  -chardev file,id=hostcon,path="$out/console.log" -serial chardev:hostcon \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$out",mount_tag=out,security_model=none \
  -monitor unix:"$out/monitor.sock",server=on,wait=off \
  </dev/null >"$out/qemu.log" 2>&1 &
qpid=$!
# Follow the command's output as it comes; tail stops once QEMU is gone.
tail -n +1 -s 0.2 -F --pid="$qpid" "$out/output" 2>/dev/null &
tailpid=$!

# What the test host's vCPU was doing, from QEMU's monitor, for a host that
# hung: halted with interrupts on and nothing pending (a lost wakeup) or
# spinning somewhere (RIP).
monitor_dump() {
  python3 - "$out/monitor.sock" <<'PY' >&2 || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
def read():
    buf, end = b"", time.time() + 3
    while time.time() < end:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
        if buf.endswith(b"(qemu) "):
            break
    return buf.decode(errors="replace")
read()
for cmd in ("info cpus", "info registers", "info lapic", "info pic"):
    s.sendall(cmd.encode() + b"\n")
    out = read().replace("(qemu) ", "").strip()
    # Skip the monitor's echo of the command (with terminal escapes) and
    # the FPU/vector registers.
    lines = [l for l in out.splitlines()
             if l.strip() and "\x1b" not in l and not l.startswith(("YMM", "FPR", "FCW", "DR"))]
    print(f"testhost: monitor '{cmd}':")
    for l in lines[:40]:
        print("  " + l)
PY
}

deadline=$(( $(date +%s) + timeout ))
stall=${COCOON_TESTHOST_STALL_SECS:-120}
while kill -0 "$qpid" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    give_up "the command ran past its deadline of ${timeout} s (a hang in the command, not the test host); killed"
    wait "$tailpid" 2>/dev/null || true; tailpid=""
    echo "testhost: last console lines:" >&2; tail -20 "$out/console.log" >&2
    exit 124
  fi
  # A test host whose own kernel reports soft lockups is hung (seen with
  # QEMU TCG and nested SVM): give up now rather than at the deadline.
  if grep -q 'soft lockup' "$out/console.log" 2>/dev/null; then
    monitor_dump
    give_up "the test host's own kernel hung (soft lockup on its console); killed it"
    wait "$tailpid" 2>/dev/null || true; tailpid=""
    tail -20 "$out/console.log" >&2
    exit 126
  fi
  # Seen with one vCPU too: the test host's kernel stops (QEMU idle, no
  # output, no timers) and would sit there until the deadline. Its init
  # beats every 5 s; a heartbeat silent for $stall s means it is gone.
  if [ -f "$out/heartbeat" ] && [ $(( $(date +%s) - $(stat -c %Y "$out/heartbeat") )) -ge "$stall" ]; then
    monitor_dump
    give_up "the test host stopped (no heartbeat for ${stall} s); killed it"
    wait "$tailpid" 2>/dev/null || true; tailpid=""
    tail -20 "$out/console.log" >&2
    exit 126
  fi
  sleep 0.2
done
wait "$qpid" || true
qpid=""
wait "$tailpid" 2>/dev/null || true; tailpid=""
if [ ! -f "$out/rc" ]; then
  give_up "the test host ended without an exit code (it crashed or powered off early)"
  echo "testhost: its console and QEMU said:" >&2
  tail -30 "$out/console.log" >&2; tail -5 "$out/qemu.log" >&2
  exit 125
fi
rc=$(cat "$out/rc")
if [ "$keep_log" = 1 ] || { [ "$rc" != 0 ] && [ -n "${COCOON_TESTHOST_VERBOSE:-}" ]; }; then
  echo "testhost: console log:" >&2; cat "$out/console.log" >&2
fi
exit "$rc"
