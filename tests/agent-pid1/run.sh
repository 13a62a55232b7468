#!/usr/bin/env bash
# The agent as the guest's PID 1, without a vsock device: boots the guest
# kernel (build/vmlinux) under QEMU TCG on this host with an initrd holding
# the static agent as /init, the static cocoon-agent-ctl and a busybox
# rootfs. guest.sh starts ctl in the background over a Unix socket and execs
# the agent; ctl runs a container (pivot_root from the initramfs, cgroup v2
# with delegated controllers, namespaces), then DestroySandbox restarts the
# VM. Checks the console and QEMU's exit. Needs `make kernel initrd`.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/agent-pid1
rel=target/x86_64-unknown-linux-gnu/guest
kernel=$(readlink -f build/vmlinux)
for f in "$kernel" $rel/cocoon-agent $rel/cocoon-agent-ctl /bin/busybox; do
  [ -f "$f" ] || { echo "agent-pid1: $f missing: run 'make kernel initrd'" >&2; exit 2; }
done
initrd=build/agent-probe-initrd.cpio
rootfs/mkinitrd.py --init $rel/cocoon-agent --out "$initrd" \
  --add /bin/busybox:/bin/busybox --add /bin/busybox:/bin/sh --add /bin/busybox:/c/rootfs/bin/busybox \
  --add $rel/cocoon-agent-ctl:/ctl --add $here/guest.sh:/guest.sh --add $here/config.json:/c/config.json
log=$(mktemp /tmp/cocoon-agent-pid1.XXXXXX)
trap 'rm -f "$log"' EXIT
start=$(date +%s.%N)
rc=0
timeout 300 qemu-system-x86_64 -M pc -accel tcg -cpu max -m 512 -nodefaults -no-user-config -no-reboot \
  -display none -serial stdio -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 reboot=k panic=-1 quiet rdinit=/bin/sh -- /guest.sh" </dev/null >"$log" 2>&1 || rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
fail=0
for want in "serving: true" "PROBE pid 1: /init" "hello-from-container" "0::/cocoon/c1" "PROBE run exit 3" \
            "PROBE destroyed" "restarting the VM"; do
  grep -qF "$want" "$log" || { echo "agent-pid1: missing on the console: $want" >&2; fail=1; }
done
for c in cpu memory pids; do
  grep -E "^PROBE subtree_control: .*\b$c\b" "$log" >/dev/null || { echo "agent-pid1: controller $c not delegated" >&2; fail=1; }
done
[ "$rc" = 0 ] || { echo "agent-pid1: QEMU exited $rc (124: timeout)" >&2; fail=1; }
if [ "$fail" = 1 ]; then echo "--- console ---" >&2; cat "$log" >&2; exit 1; fi
printf 'agent-pid1: ok: the agent as PID 1 ran a container and restarted the VM (%.1f s, QEMU TCG)\n' "$took"
