#!/usr/bin/env bash
# The agent's bench (issue 4, item 8), directly on this host, as root: time
# from CreateContainer to the first byte of output for sequential containers
# through the static release agent on a Unix socket, against `runc run` of
# the same rootfs and spec; the agent's RSS idle and with 10 containers.
# Prints a markdown table.   BENCH_RUNS=N (default 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "bench: the agent bench needs root (namespaces, cgroups)" >&2; exit 2; }
command -v runc >/dev/null || { echo "bench: runc missing: run 'make deps'" >&2; exit 2; }

agent=target/x86_64-unknown-linux-gnu/guest/cocoon-agent
# What `make initrd` builds and packs as the guest's /init.
RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
  cargo build --profile guest --quiet --target x86_64-unknown-linux-gnu -p cocoon-agent
exe=$(cargo test -p cocoon-agent --test bench --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "bench":
        print(m["executable"])')
[ -n "$exe" ] || { cargo test -p cocoon-agent --test bench --no-run; exit 1; }
echo "bench: cocoon-agent vs runc $(runc --version | head -n1 | awk '{print $3}') on this host ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
COCOON_TEST_AGENT_BIN=$PWD/$agent "$exe" --ignored --nocapture --test-threads=1 2>&1 \
  | grep -vE '^(running 1 test|test result: .*|test container_start_latency_and_rss \.\.\. ?|ok)$'
