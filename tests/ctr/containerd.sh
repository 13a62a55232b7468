#!/usr/bin/env bash
# A containerd of our own, with the cocoon runtime, for the demo and the ctr
# end-to-end tests; a system containerd is untouched.
#
#   tests/ctr/containerd.sh start DIR   start it (socket DIR/containerd.sock), import the busybox image
#                                       (the tar COCOON_E2E_IMAGE_TAR names, if set; else built now)
#   tests/ctr/containerd.sh stop DIR    stop it, remove what it left
#
# The shim is found on PATH (containerd passes its environment on to shims);
# COCOON_CONFIG, if set, reaches the shim the same way.
set -euo pipefail
cmd=$1 dir=$2
here=$(cd "$(dirname "$0")" && pwd)
case "$cmd" in
start)
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.runtime.v1.linux"]
  shim_debug = true
TOML
  containerd --config "$dir/config.toml" --log-level "${CONTAINERD_LOG_LEVEL:-info}" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  for _ in $(seq 200); do
    [ -S "$dir/containerd.sock" ] && ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.05
  done
  ctr --address "$dir/containerd.sock" version >/dev/null || { tail -20 "$dir/containerd.log" >&2; exit 1; }
  # A tar made once for the whole run (COCOON_E2E_IMAGE_TAR), or one made now.
  tar=${COCOON_E2E_IMAGE_TAR:-}
  if [ -n "$tar" ] && [ ! -f "$tar" ]; then
    echo "containerd.sh: COCOON_E2E_IMAGE_TAR=$tar does not exist; building the image" >&2
    tar=
  fi
  if [ -z "$tar" ]; then
    tar=$dir/busybox.tar
    python3 "$here/mkimage.py" --busybox "$(command -v busybox || echo /bin/busybox)" --out "$tar"
  fi
  ctr --address "$dir/containerd.sock" -n cocoon image import "$tar" >/dev/null
  ;;
stop)
  if [ -f "$dir/containerd.pid" ]; then
    pid=$(cat "$dir/containerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Snapshot mounts containerd may leave when killed.
  { grep -o " $dir/[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
