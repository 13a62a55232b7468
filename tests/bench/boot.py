#!/usr/bin/env python3
"""Boot-time and memory bench: cocoon-vmm vs QEMU microvm vs Firecracker on the same KVM.

Each VMM boots the same vmlinux and initrd with the same vCPUs, memory and
kernel command line (cocoon-vmm's built-in base plus the same extras; the
VMMs add only their own device declarations). Boot time is measured from
starting the VMM process to the init's banner on its serial console; the
PSS (and RSS) of the VMM's process tree is read one second after the
banner, while the init holds the guest up (cocoon.hold=). Runs alternate
between the VMMs, a different one first each run, so that machine noise hits
all alike; the first run of each is a warm-up, not counted (whoever ran
first would otherwise pay for reading the kernel, initrd and its own binary
from disk). Prints a table; exits 1 when a present peer or cocoon-vmm failed
a run.
"""
import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BANNER = b"cocoon-init: booted"
EXTRA = "quiet cocoon.hold=3"


def one_run_detail(cmd, deadline, memory=common.tree_memory):
    """(seconds to the banner or None, memory(pid) one second later, why it failed or None)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    buf = b""
    booted = None
    mem = None
    why = None
    try:
        while time.monotonic() - start < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.05)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                if booted is None and BANNER in buf:
                    booted = time.monotonic() - start
                    time.sleep(1.0)
                    mem = memory(p.pid)
                    break
            elif p.poll() is not None:
                break
        if booted is None:
            try:  # after EOF the VMM is exiting: wait a moment for its code
                rc = p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                rc = None
            why = (f"no banner within {deadline} s" if rc is None
                   else f"exited with code {rc} before the banner")
        elif mem is None:
            why = f"the VMM was gone one second after the banner (exit {p.poll()})"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    if booted is None:
        tail = buf[-600:].decode(errors="replace")
        last = tail.strip().splitlines()[-1] if tail.strip() else "(no output)"
        why += f"; last output: {last[:160]}"
        print(f"bench: {cmd[0]} did not reach the banner; its output ended with:\n{tail}",
              file=sys.stderr)
    return booted, mem, why


def one_run(cmd, deadline, memory=common.tree_memory):
    """(seconds to the banner or None, memory(pid) one second later)."""
    booted, mem, _ = one_run_detail(cmd, deadline, memory)
    return booted, mem


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs of each first")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=128, help="MiB")
    ap.add_argument("--deadline", type=int, default=120, help="seconds to the banner")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--firecracker", default=common.firecracker_default(),
                    help="default: $COCOON_BENCH_FIRECRACKER or ../shared/peers/firecracker")
    args = ap.parse_args()
    cmdline = f"{common.BASE_CMDLINE} {EXTRA}"
    work = tempfile.mkdtemp(prefix="cocoon-boot-bench-")

    cocoon = [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
              "--vcpus", str(args.vcpus), "--memory", str(args.memory), "--cmdline", EXTRA]
    peers = [("cocoon-vmm", lambda i: cocoon)]
    skipped = []
    why = common.missing(args.qemu, "qemu-system-x86_64")
    if why:
        skipped.append(why)
    else:
        qemu = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm",
                "-cpu", "host", "-smp", str(args.vcpus), "-m", str(args.memory), "-nodefaults",
                "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", args.kernel, "-initrd", args.initrd, "-append", cmdline]
        peers.append(("qemu microvm", lambda i: qemu))
    why = common.missing(args.firecracker, "firecracker")
    if why:
        skipped.append(why)
    else:
        def firecracker(i):
            return common.firecracker_cmd(args.firecracker, work, f"boot-{i}", args.kernel,
                                          args.initrd, cmdline, args.vcpus, args.memory)
        peers.append(("firecracker", firecracker))
    for s in skipped:
        print(f"bench: {s}", file=sys.stderr)

    results = {name: [] for name, _ in peers}
    failures = common.Failures()
    try:
        for i in range(-args.warmup, args.runs):
            run = f"{i + 1}" if i >= 0 else f"warm-up {i + args.warmup + 1}"
            for name, make in common.rotate(peers, i):
                cmd = make(i + args.warmup)
                t, mem, why = one_run_detail(cmd, args.deadline)
                if why:
                    if name == "firecracker":
                        why += f"; its log: {common.firecracker_log_tail(cmd)}"
                    failures.add(name, run, why)
                    continue
                if i >= 0:
                    results[name].append((t, mem["pss"], mem["rss"], mem["procs"]))
                print(f"bench: run {run}/{args.runs} {name:13s} banner {t:.3f}s  "
                      f"pss {mem['pss'] / 1024:.1f} MiB  rss {mem['rss'] / 1024:.1f} MiB "
                      f"({mem['procs']} process(es))", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    names = [n for n, _ in peers]
    m = {n: [common.med(r[k] for r in results[n]) for k in range(3)] for n in names}
    others = names[1:]
    print()
    print(f"boot bench: {args.runs} runs each after {args.warmup} warm-up, alternating, {args.vcpus} vCPU, {args.memory} MiB, "
          f"same vmlinux + initrd + command line; medians with their number of runs (n)")
    head = ["metric"] + names + [f"ratio (cocoon/{o.split()[0]})" for o in others]
    print(common.row(head))
    print(common.rule(len(head)))
    rows = (("VMM start to banner, median (s)", 0, "{:.3f}", 1.0),
            ("VMM PSS with guest up, median (MiB)", 1, "{:.1f}", 1024.0),
            ("VMM RSS with guest up, median (MiB)", 2, "{:.1f}", 1024.0))
    for label, k, fmt, scale in rows:
        print(common.row([label] + [common.cell(m[n][k], fmt, scale) for n in names]
                         + [common.ratio(m["cocoon-vmm"][k], m[o][k]) for o in others]))
    print()
    print("- PSS and RSS: summed over the VMM's process tree (/proc/PID/smaps_rollup Pss, "
          "/proc/PID/status VmRSS), one second after the banner")
    if "qemu microvm" in names:
        print("- qemu microvm: no -sandbox (no seccomp filter); cocoon-vmm: its per-thread "
              "seccomp filters (--seccomp enforce, the default), not jailed")
    if "firecracker" in names:
        print(f"- {common.FIRECRACKER_NOTE}")
    failures.report_and_exit(skipped)


if __name__ == "__main__":
    main()
