#!/usr/bin/env bash
# A CRI probe of cocoon, as a node operator would try it: containerd in CRI
# mode (tests/ctr/containerd.sh start-cri) with the cocoon runtime handler,
# a crictl session (runp, pull, create, start, logs, exec, stats, statsp,
# stop, rm, stopp, rmp), then critest over the groups given (default: the
# pod, container, streaming, networking, multi-container and security
# context groups). Run as root where micro-VMs boot (on PVM: in the test
# host, tests/testhost/run.sh --timeout 6000 -- tests/ctr/cri-probe.sh).
#
#   tests/ctr/cri-probe.sh [--handler cocoon|runc] [--no-critest] [--focus REGEX] [--skip REGEX]
#
# --handler runc runs the same on runc, the baseline that tells a problem of
# the test setup (images, network, registry) from one of cocoon.
#
# Everything goes to stdout: each crictl step with its result, critest's
# output, then a summary (the crictl steps; critest's counts and every
# failed test with the first line of its failure). critest's JUnit report
# is also appended to $COCOON_TESTHOST_RESULTS when set (run.sh --results).
# Binaries as in `make e2e`: COCOON_VMM, COCOON_KERNEL, COCOON_AGENT_INITRD,
# the shim in COCOON_E2E_BIN_DIR (default: target/debug and build/), crictl
# and critest from scripts/cri-tools.sh (or COCOON_CRI_TOOLS).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo=$PWD
critest_run=1
handler=cocoon
focus='PodSandbox|Container|Streaming|Networking|Multiple Containers|Security Context'
skip=''
while [ $# -gt 0 ]; do
  case "$1" in
    --handler) handler=$2; shift 2;;
    --no-critest) critest_run=0; shift;;
    --focus) focus=$2; shift 2;;
    --skip) skip=$2; shift 2;;
    *) echo "usage: $0 [--handler cocoon|runc] [--no-critest] [--focus REGEX] [--skip REGEX]" >&2; exit 2;;
  esac
done

bin_dir=${COCOON_E2E_BIN_DIR:-$repo/target/debug}
export COCOON_VMM=${COCOON_VMM:-$bin_dir/cocoon-vmm}
export COCOON_KERNEL=${COCOON_KERNEL:-$(readlink -f build/vmlinux)}
export COCOON_AGENT_INITRD=${COCOON_AGENT_INITRD:-$repo/build/agent-initrd.cpio}
tools=${COCOON_CRI_TOOLS:-$(scripts/cri-tools.sh)} || exit 1
export COCOON_CRI_TOOLS=$tools
for f in "$bin_dir/containerd-shim-cocoon-v2" "$COCOON_VMM" "$COCOON_KERNEL" "$COCOON_AGENT_INITRD" "$tools/crictl" "$tools/critest"; do
  [ -e "$f" ] || { echo "cri-probe: $f is missing" >&2; exit 1; }
done

dir=/tmp/cocoon-cri-probe
run_dir=/run/cocoon-cri-probe
logs=/tmp/cocoon-cri-probe-logs
mkdir -p "$dir" "$logs"
cat >"$dir/cocoon.toml" <<TOML
backend = "vm"
run_dir = "$run_dir"
log_level = "debug"
agent_timeout_secs = 120
vmm = "$COCOON_VMM"
kernel = "$COCOON_KERNEL"
initrd = "$COCOON_AGENT_INITRD"
TOML
export COCOON_CONFIG=$dir/cocoon.toml
export PATH=$bin_dir:$HOME/.cargo/bin:$PATH
ctd=$dir/containerd
crictl=("$tools/crictl" --runtime-endpoint "unix://$ctd/containerd.sock" --image-endpoint "unix://$ctd/containerd.sock" --timeout 300s)

t0=$(date +%s)
echo "=== cri-probe: containerd.sh start-cri"
if ! tests/ctr/containerd.sh start-cri "$ctd"; then
  echo "cri-probe: containerd did not start in CRI mode"; tail -30 "$ctd/containerd.log"; exit 1
fi
stop() {
  echo "=== cri-probe: containerd.sh stop"
  tests/ctr/containerd.sh stop "$ctd"
  echo "=== cri-probe: left behind (nothing expected):"
  ip -br link show "${COCOON_CRI_BRIDGE:-cocoon-cni0}" 2>/dev/null
  iptables-save 2>/dev/null | grep -E 'cocoon-cri|CNI-' || true
  grep -F " $ctd" /proc/self/mountinfo || true
  ls -d "$ctd" "$run_dir"/* 2>/dev/null || true
  rmdir /sys/fs/cgroup/cocoon-cri-probe 2>/dev/null || true
}
trap stop EXIT

# step NAME CMD...: runs CMD, prints its output and the result line; the
# output is kept in $out.
summary=()
step() {
  local name=$1 s rc=0; shift
  s=$(date +%s)
  echo "--- crictl step '$name': $*"
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | head -40
  if [ "$rc" = 0 ]; then
    summary+=("ok      $name ($(( $(date +%s) - s )) s)")
  else
    summary+=("FAILED  $name (exit $rc, $(( $(date +%s) - s )) s): $(printf '%s' "$out" | tail -n1 | cut -c1-200)")
  fi
  return "$rc"
}

cat >"$dir/pod.json" <<JSON
{
  "metadata": {"name": "probe", "namespace": "default", "uid": "cri-probe-uid", "attempt": 0},
  "hostname": "probe-pod",
  "log_directory": "$logs",
  "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 18080}],
  "linux": {"cgroup_parent": "/cocoon-cri-probe"}
}
JSON
cat >"$dir/container.json" <<JSON
{
  "metadata": {"name": "ticker"},
  "image": {"image": "cocoon.local/e2e-test-images/busybox:1.29-2"},
  "command": ["sh", "-c", "echo hello from cocoon; i=0; while :; do i=\$((i+1)); echo tick \$i; sleep 1; done"],
  "log_path": "ticker.log",
  "linux": {}
}
JSON

echo "=== cri-probe: the crictl session"
pod="" cid=""
step "version" "${crictl[@]}" version
step "runp --runtime $handler" "${crictl[@]}" runp --runtime "$handler" "$dir/pod.json" && pod=$(tail -n1 <<<"$out")
step "pull" "${crictl[@]}" pull cocoon.local/e2e-test-images/busybox:1.29-2
if [ -n "$pod" ]; then
  # shellcheck disable=SC2016 # expanded by that bash
  step "inspectp (network)" bash -c '"$@" | grep -E "\"(ip|state|runtimeHandler)\"" ' _ "${crictl[@]}" inspectp "$pod"
  step "create" "${crictl[@]}" create "$pod" "$dir/container.json" "$dir/pod.json" && cid=$(tail -n1 <<<"$out")
fi
if [ -n "$cid" ]; then
  step "start" "${crictl[@]}" start "$cid"
  sleep 3
  step "ps" "${crictl[@]}" ps -a
  step "logs" "${crictl[@]}" logs "$cid"
  step "exec -s (ExecSync)" "${crictl[@]}" exec -s "$cid" sh -c 'echo exec-sync ok; cat /etc/resolv.conf | head -3'
  # shellcheck disable=SC2016 # expanded by that bash
  step "the pod's hostname in the container" bash -c 't=$("$@") || exit; echo "$t"
    [ "$t" = probe-pod ] || { echo "hostname is $t, not the pod'"'"'s probe-pod"; exit 1; }' _ "${crictl[@]}" exec -s "$cid" hostname
  step "exec (streaming)" "${crictl[@]}" exec "$cid" sh -c 'echo exec-stream ok'
  # The address CNI gave the pod must be the container's.
  ip=$("${crictl[@]}" inspectp -o go-template --template '{{.status.network.ip}}' "$pod" 2>/dev/null)
  # shellcheck disable=SC2016 # expanded by that bash
  step "the pod's IP ($ip) in the container" bash -c 'ip=$1; shift; t=$("$@") || exit; echo "$t"
    grep -q "inet $ip/" <<<"$t" || { echo "the container has no interface with the pod IP $ip"; exit 1; }' \
    _ "$ip" "${crictl[@]}" exec -s "$cid" sh -c 'ip -4 addr show; ip -4 route'
  # A table without the container's (pod's) row is a failure too.
  # shellcheck disable=SC2016 # expanded by that bash
  step "stats" bash -c 'id=$1; shift; t=$("$@") || exit; echo "$t"
    grep -q "^${id:0:13} " <<<"$t" || { echo "no row for the container"; exit 1; }' _ "$cid" "${crictl[@]}" stats --id "$cid"
  # shellcheck disable=SC2016 # expanded by that bash
  # (crictl's table leaves out a pod whose CPU and memory are both 0: then
  # the JSON shows what came back.)
  step "statsp" bash -c 'id=$1; shift; t=$("$@") || exit; echo "$t"
    grep -q " ${id:0:13} " <<<"$t" && exit 0
    "$@" -o json | grep -E "usageCoreNanoSeconds|workingSetBytes" -A2 | grep -E "Nano|Bytes|value" | tr -s " " | paste -sd" "
    echo "no row for the pod (crictl leaves out a pod whose CPU and memory are both 0)"; exit 1' _ "$pod" "${crictl[@]}" statsp --id "$pod"
  step "stop" "${crictl[@]}" stop "$cid"
  step "rm" "${crictl[@]}" rm "$cid"
fi
if [ -n "$pod" ]; then
  step "stopp" "${crictl[@]}" stopp "$pod"
  step "rmp" "${crictl[@]}" rmp "$pod"
fi
# shellcheck disable=SC2016 # expanded by that bash
step "pods left" bash -c 'n=$("$@" pods -q | wc -l); echo "$n pods"; [ "$n" = 0 ]' _ "${crictl[@]}"

critest_rc=""
if [ "$critest_run" = 1 ]; then
  report=$dir/report
  mkdir -p "$report"
  args=(--runtime-endpoint "unix://$ctd/containerd.sock" --image-endpoint "unix://$ctd/containerd.sock"
        --runtime-handler "$handler" --test-images-file "$ctd/critest-images.yaml"
        --ginkgo.junit-report "$report/junit.xml" --ginkgo.no-color --ginkgo.v --ginkgo.timeout=3h
        --ginkgo.focus "$focus")
  [ -z "$skip" ] || args+=(--ginkgo.skip "$skip")
  echo "=== cri-probe: critest ${args[*]}"
  s=$(date +%s)
  "$tools/critest" "${args[@]}"
  critest_rc=$?
  echo "=== cri-probe: critest ended (exit $critest_rc) after $(( $(date +%s) - s )) s"
  # critest removes every pod it made: what is still there leaked.
  echo "=== cri-probe: after critest, pods, cocoon shims and pod directories (nothing expected):"
  "${crictl[@]}" pods -q
  pgrep -a -f "containerd-shim-cocoon-v2 .*$ctd/containerd.sock" || true
  for d in "$run_dir"/*/; do [ -d "$d" ] && echo "pod directory $d"; done
  if [ -n "${COCOON_TESTHOST_RESULTS:-}" ]; then cat "$report"/*.xml >>"$COCOON_TESTHOST_RESULTS" 2>/dev/null; fi
fi

echo
echo "=== cri-probe: summary ($(( $(date +%s) - t0 )) s)"
printf '%s\n' "${summary[@]}"
if [ -n "$critest_rc" ]; then
  python3 - "$dir/report" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
cases = []
for f in glob.glob(sys.argv[1] + "/*.xml"):
    cases += [c for c in ET.parse(f).getroot().iter("testcase")
              if not c.get("name", "").startswith(("[BeforeSuite]", "[AfterSuite]"))]
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
passed = len(cases) - len(failed) - len(skipped)
print(f"critest: {len(cases)} specs in the report: {passed} passed, {len(failed)} failed, {len(skipped)} skipped")
for c in failed:
    f = c.find("failure") if c.find("failure") is not None else c.find("error")
    msg = (f.get("message") or f.text or "").strip().splitlines()
    print(f"critest FAILED: {c.get('name')}\n    {msg[0][:300] if msg else ''}")
PY
fi
