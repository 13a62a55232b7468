#!/usr/bin/env python3
"""Boot-time and memory bench: cocoon-vmm vs QEMU microvm on the same KVM.

Each VMM boots the same vmlinux and initrd with the same vCPUs and memory.
Boot time is measured from starting the VMM process to the init's banner on
its serial console; RSS is read from /proc/<pid>/status one second after the
banner, while the init holds the guest up (cocoon.hold=). Runs alternate
between the VMMs so that machine noise hits both alike. Prints a table.
"""
import argparse
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

BANNER = b"cocoon-init: booted"
BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 nomodule 8250.nr_uarts=1 quiet cocoon.hold=3"


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def one_run(cmd, deadline, memory=rss_kib):
    """(seconds to the banner or None, memory(pid) in KiB one second later)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    buf = b""
    booted = None
    rss = None
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
                    rss = memory(p.pid)
                    break
            elif p.poll() is not None:
                break
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    if booted is None:
        tail = buf[-600:].decode(errors="replace")
        print(f"bench: {cmd[0]} did not reach the banner; its output ended with:\n{tail}", file=sys.stderr)
    return booted, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=128, help="MiB")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    args = ap.parse_args()
    if not args.qemu:
        sys.exit("bench: qemu-system-x86_64 not found: run 'make deps'")

    cocoon = [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
              "--vcpus", str(args.vcpus), "--memory", str(args.memory),
              "--cmdline", "quiet cocoon.hold=3"]
    qemu = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host",
            "-smp", str(args.vcpus), "-m", str(args.memory), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", args.kernel, "-initrd", args.initrd, "-append", BASE_CMDLINE]

    results = {"cocoon-vmm": [], "qemu microvm": []}
    for i in range(args.runs):
        for name, cmd in (("cocoon-vmm", cocoon), ("qemu microvm", qemu)):
            t, rss = one_run(cmd, 120)
            results[name].append((t, rss))
            shown = f"{t:.3f}s" if t is not None else "failed"
            rss_s = f"{rss / 1024:.1f} MiB" if rss else "?"
            print(f"bench: run {i + 1}/{args.runs} {name:13s} banner {shown:>8s}  rss {rss_s}", flush=True)

    def med(name, idx):
        vals = [r[idx] for r in results[name] if r[idx] is not None]
        return statistics.median(vals) if vals else None

    ct, qt = med("cocoon-vmm", 0), med("qemu microvm", 0)
    cr, qr = med("cocoon-vmm", 1), med("qemu microvm", 1)

    def fmt(v, scale=1.0, unit=""):
        return f"{v / scale:.3f}{unit}" if v is not None else "n/a"

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    print()
    print(f"boot bench: {args.runs} runs each, {args.vcpus} vCPU, {args.memory} MiB, same vmlinux + initrd")
    print(f"| metric                         | cocoon-vmm | qemu microvm | ratio (cocoon/qemu) |")
    print(f"|--------------------------------|------------|--------------|---------------------|")
    print(f"| VMM start to banner, median (s)| {fmt(ct):>10s} | {fmt(qt):>12s} | {ratio(ct, qt):>19s} |")
    print(f"| VMM RSS with guest up (MiB)    | {fmt(cr, 1024):>10s} | {fmt(qr, 1024):>12s} | {ratio(cr, qr):>19s} |")
    failed = [n for n, rs in results.items() if any(r[0] is None for r in rs)]
    if failed:
        print(f"bench: some runs failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
