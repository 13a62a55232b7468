#!/usr/bin/env bash
# The inner half of make demo (run directly on VT-x/AMD-V, or inside the test
# host): our own containerd with the cocoon runtime, the busybox image, and
#   ctr run --rm --runtime io.containerd.cocoon.v2 IMAGE demo echo hello from a micro-VM
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
trap 'tests/ctr/containerd.sh stop "$dir/containerd"' EXIT
tests/ctr/containerd.sh start "$dir/containerd"
containerd-shim-cocoon-v2 check --config "$COCOON_CONFIG" || true
start=$(date +%s.%N)
ctr --address "$dir/containerd/containerd.sock" -n cocoon run --rm --runtime io.containerd.cocoon.v2 \
  cocoon.local/busybox:latest demo echo hello from a micro-VM
end=$(date +%s.%N)
echo "demo: ctr run --rm took $(echo "$end - $start" | bc) s (containerd -> shim -> cocoon-vmm -> guest agent -> container)"
