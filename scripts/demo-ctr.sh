#!/usr/bin/env bash
# The inner half of make demo (run directly on VT-x/AMD-V, or inside the test
# host): our own containerd with the cocoon runtime, the busybox image, and
#   ctr run --rm --runtime io.containerd.cocoon.v2 IMAGE demo sh -c 'echo hello from a micro-VM...'
# after a bare boot of the guest kernel with the banner init, timed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=/tmp/cocoon-demo-$$
mkdir -p "$dir"
cat >"$dir/cocoon.toml" <<TOML
kernel = "$(readlink -f build/vmlinux)"
initrd = "$PWD/build/agent-initrd.cpio"
vmm = "$PWD/target/release/cocoon-vmm"
run_dir = "/run/cocoon-demo-$$"
TOML
export COCOON_CONFIG=$dir/cocoon.toml PATH=$PWD/target/release:$PATH
trap 'tests/ctr/containerd.sh stop "$dir/containerd"; rm -rf "$dir" "/run/cocoon-demo-$$"' EXIT

echo "demo: 1/2 cocoon-vmm boots the guest kernel with the banner init"
start=$(date +%s.%N)
target/release/cocoon-vmm --kernel build/vmlinux --initrd build/initrd.cpio --cmdline quiet
end=$(date +%s.%N)
echo "demo: VMM start to banner and guest reset took $(echo "$end - $start" | bc) s"
echo "demo: 2/2 a container through containerd, the shim, cocoon-vmm and the guest agent"
tests/ctr/containerd.sh start "$dir/containerd"
containerd-shim-cocoon-v2 check --config "$COCOON_CONFIG" || true
start=$(date +%s.%N)
ctr --address "$dir/containerd/containerd.sock" -n cocoon run --rm --runtime io.containerd.cocoon.v2 \
  cocoon.local/busybox:latest demo sh -c 'echo "hello from a micro-VM: $(uname -sr), guest up $(cut -d" " -f1 /proc/uptime) s"'
end=$(date +%s.%N)
echo "demo: ctr run --rm took $(echo "$end - $start" | bc) s (containerd -> shim -> cocoon-vmm -> guest agent -> container)"
