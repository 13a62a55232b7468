#!/usr/bin/env bash
# A containerd of our own, with the cocoon runtime, for the demo and the ctr
# end-to-end tests; a system containerd is untouched.
#
#   tests/ctr/containerd.sh start DIR   start it (socket DIR/containerd.sock), import the busybox image
#                                       (the tar COCOON_E2E_IMAGE_TAR names, if set; else built now)
#   tests/ctr/containerd.sh start-cri DIR   the same with the CRI plugin (also: start with COCOON_CRI=1)
#   tests/ctr/containerd.sh stop DIR    stop it, remove what it left
#
# The shim is found on PATH (containerd passes its environment on to shims);
# COCOON_CONFIG, if set, reaches the shim the same way.
#
# CRI mode (crictl/critest --runtime-endpoint unix://DIR/containerd.sock; DIR/crictl.yaml
# for `crictl --config`), as root:
# - runtime handlers `cocoon` (io.containerd.cocoon.v2, the default; its
#   options' ConfigPath is $COCOON_CONFIG when set) and `runc`
#   (io.containerd.runc.v2, for comparisons);
# - pod network: a CNI bridge ($COCOON_CRI_BRIDGE, cocoon-cni0) with host-local
#   addresses in $COCOON_CRI_SUBNET (10.66.0.0/16), masquerading and host
#   ports (portmap), from Debian's plugins in /usr/lib/cni (containerd brings
#   each pod's lo up with the loopback plugin there); its config, addresses
#   and network namespaces stay under DIR;
# - images (tests/ctr/criimages.py; the tar COCOON_CRI_IMAGES_TAR names, if
#   set, else built now): imported into the k8s.io namespace, and the
#   cocoon.local/... ones also pushed to a registry of our own (Debian's
#   docker-registry on 127.0.0.1, a free port, data under DIR) that CRI pulls
#   cocoon.local/ from over plain HTTP; the pod sandbox image is
#   cocoon.local/pause:3.9; DIR/critest-images.yaml is critest's
#   --test-images-file.
# stop first removes the pods through CRI (crictl from PATH or
# $COCOON_CRI_TOOLS; else, or when that fails, their tasks through ctr),
# starting a containerd that died again for it; then it also removes the
# shims left, the registry, the iptables rules CNI made for the network
# (tests/ctr/cninet.py), the bridge and the network namespaces.
# One CRI-mode containerd per network namespace at a time: the bridge and
# the subnet are fixed.
set -euo pipefail
usage() { echo "usage: $0 start|start-cri|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1 dir=$2
here=$(cd "$(dirname "$0")" && pwd)
if [ "$cmd" = start ] && [ "${COCOON_CRI:-0}" = 1 ]; then cmd=start-cri; fi
bridge=${COCOON_CRI_BRIDGE:-cocoon-cni0}
subnet=${COCOON_CRI_SUBNET:-10.66.0.0/16}
network=cocoon-cri   # the CNI network's name: CNI marks its iptables rules with it
say() { echo "containerd.sh: $*" >&2; }
ctr_() { ctr --address "$dir/containerd.sock" "$@"; }

# Starts containerd with DIR/config.toml and waits for its socket.
start_containerd() {
  containerd --config "$dir/config.toml" --log-level "${CONTAINERD_LOG_LEVEL:-info}" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  for _ in $(seq 200); do
    [ -S "$dir/containerd.sock" ] && ctr_ version >/dev/null 2>&1 && break
    sleep 0.05
  done
  ctr_ version >/dev/null || { tail -20 "$dir/containerd.log" >&2; exit 1; }
}

# The registry the CRI images are pulled from: 127.0.0.1 on a free port
# (in DIR/registry/port), its storage under DIR.
start_registry() {
  local reg=$dir/registry port attempt
  command -v docker-registry >/dev/null || { say "docker-registry is missing: run 'make deps'"; exit 1; }
  mkdir -p "$reg"
  for attempt in 1 2 3; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$reg/config.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $reg/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
    docker-registry serve "$reg/config.yml" >"$reg/registry.log" 2>&1 &
    echo $! >"$reg/pid"
    if python3 - "$port" "$(cat "$reg/pid")" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200:
            sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
    then
      echo "$port" >"$reg/port"
      return 0
    fi
    kill "$(cat "$reg/pid")" 2>/dev/null || true
    say "the registry did not come up on port $port (attempt $attempt): $(tail -3 "$reg/registry.log")"
  done
  exit 1
}

start_cri() {
  for b in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$b" ] || { say "/usr/lib/cni/$b is missing: run 'make deps' (containernetworking-plugins)"; exit 1; }
  done
  command -v iptables >/dev/null || { say "iptables is missing: run 'make deps'"; exit 1; }
  if [ -e "/sys/class/net/$bridge" ]; then
    say "the bridge $bridge exists already: another CRI-mode containerd runs here (or one was not stopped: tests/ctr/containerd.sh stop ITS-DIR, or ip link del $bridge)"
    exit 1
  fi
  mkdir -p "$dir/cni/net.d" "$dir/certs.d/cocoon.local"
  : >"$dir/cri"   # stop: this one is in CRI mode

  say "CRI mode: building the images, starting the registry"
  local tar=${COCOON_CRI_IMAGES_TAR:-}
  if [ -n "$tar" ] && [ ! -f "$tar" ]; then
    say "COCOON_CRI_IMAGES_TAR=$tar does not exist; building the images"
    tar=
  fi
  if [ -z "$tar" ]; then
    tar=$dir/cri-images.tar
    python3 "$here/criimages.py" build --out "$tar"
  fi
  start_registry
  local port
  port=$(cat "$dir/registry/port")

  # The CNI network: one bridge, host-local addresses (kept under DIR),
  # masquerading out, host ports. containerd sets up each pod's loopback
  # itself, with the loopback plugin from bin_dir.
  cat >"$dir/cni/net.d/10-$network.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$subnet"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # cocoon.local/... is pulled from our registry, over plain HTTP.
  cat >"$dir/certs.d/cocoon.local/hosts.toml" <<TOML
server = "http://127.0.0.1:$port"
[host."http://127.0.0.1:$port"]
  capabilities = ["pull", "resolve"]
TOML
  local options=""
  if [ -n "${COCOON_CONFIG:-}" ]; then
    options="      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.cocoon.options]
        ConfigPath = \"$COCOON_CONFIG\""
  fi
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.runtime.v1.linux"]
  shim_debug = true
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "cocoon.local/pause:3.9"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The pods' network namespaces under DIR/state, where stop finds them.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "${COCOON_CRI_DEFAULT_RUNTIME:-cocoon}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
      runtime_type = "io.containerd.cocoon.v2"
      pod_annotations = ["io.kubernetes.cri.*"]
$options
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
TOML
  say "starting containerd with the CRI plugin"
  start_containerd
  if ! ctr_ plugins ls 2>/dev/null | grep -Eq '^io\.containerd\.grpc\.v1 +cri +.* ok *$'; then
    say "containerd's CRI plugin did not load:"; grep -i 'cri' "$dir/containerd.log" | tail -5 >&2; exit 1
  fi
  say "importing the images into the k8s.io namespace, pushing cocoon.local/... to the registry (127.0.0.1:$port)"
  ctr_ -n k8s.io image import "$tar" >/dev/null
  python3 "$here/criimages.py" push --archive "$tar" --registry "127.0.0.1:$port"
  python3 "$here/criimages.py" critest-images >"$dir/critest-images.yaml"
  cat >"$dir/crictl.yaml" <<YML
runtime-endpoint: unix://$dir/containerd.sock
image-endpoint: unix://$dir/containerd.sock
timeout: 120
YML
  say "ready: crictl --config $dir/crictl.yaml ...; critest --runtime-endpoint unix://$dir/containerd.sock --test-images-file $dir/critest-images.yaml"
}

# CRI mode: the pods go first, through CRI (CNI tears their network down,
# the shims their containers). A containerd that died is started again for
# that: it takes its shims back, or cleans up after the dead ones. Without
# crictl, or when that fails, the pods' tasks are killed through ctr (their
# network is cleaned up after containerd has stopped).
remove_pods() {
  local crictl pid t
  pid=$(cat "$dir/containerd.pid" 2>/dev/null || true)
  if [ -f "$dir/config.toml" ] && ! { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }; then
    say "containerd is not running: starting it again to remove the pods"
    ( start_containerd ) || return 0
  fi
  crictl=$(command -v crictl || true)
  if [ -z "$crictl" ] && [ -x "${COCOON_CRI_TOOLS:-}/crictl" ]; then crictl=$COCOON_CRI_TOOLS/crictl; fi
  if [ -z "$crictl" ]; then
    say "no crictl (PATH, COCOON_CRI_TOOLS): killing the pods' tasks through ctr"
  elif timeout 300 "$crictl" --runtime-endpoint "unix://$dir/containerd.sock" --timeout 120s rmp --all --force >/dev/null 2>&1; then
    return 0
  else
    say "removing the pods through CRI failed: killing their tasks through ctr"
  fi
  for t in $(timeout 60 ctr --address "$dir/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
    timeout 120 ctr --address "$dir/containerd.sock" -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true
  done
}

# CRI mode, after containerd: the shims it left (they name its socket), the
# registry, the network.
cri_cleanup() {
  local p pids=()
  for p in /proc/[0-9]*; do
    tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF -- "$dir/containerd.sock" && pids+=("${p#/proc/}")
  done
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping shims left behind: ${pids[*]}"
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.05; done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
  if [ -f "$dir/registry/pid" ]; then
    kill "$(cat "$dir/registry/pid")" 2>/dev/null || true
  fi
  python3 "$here/cninet.py" cleanup --network "$network" || say "some iptables rules of $network could not be removed"
  if [ -e "/sys/class/net/$bridge" ]; then ip link del "$bridge" 2>/dev/null || say "could not remove the bridge $bridge"; fi
}

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
  start_containerd
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
  ctr_ -n cocoon image import "$tar" >/dev/null
  ;;
start-cri)
  mkdir -p "$dir"
  start_cri
  ;;
stop)
  cri=0
  if [ -f "$dir/cri" ]; then cri=1; remove_pods; fi
  if [ -f "$dir/containerd.pid" ]; then
    pid=$(cat "$dir/containerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ "$cri" = 1 ]; then cri_cleanup; fi
  # Snapshot mounts containerd may leave when killed (and in CRI mode the
  # pods' network namespaces, under DIR/state).
  { grep -o " $dir/[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir"
  ;;
*) usage ;;
esac
