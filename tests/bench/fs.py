#!/usr/bin/env python3
"""virtio-fs sequential read bench: cocoon-vmm vs QEMU microvm with vhost-user-fs-device, same virtiofsd.

Runs alternate between the peers. Each run starts a fresh virtiofsd (the same flags for both peers) on a
shared dir holding one file of --mib MiB, boots the devtest init in
fs-bench mode (cocoon.test=fs-bench), which mounts the share by tag and
reads the file start to end in 1 MiB reads on that fresh mount (so no page
cache from an earlier read), and reports bytes and guest-measured seconds
on the console. Prints MiB/s medians and the ratio.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TAG = "benchfs"
FILE = "bench.bin"
MEMORY_MIB = 512
BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 nomodule 8250.nr_uarts=1 quiet"
REPORT = re.compile(r"cocoon-devtest: fs-bench ok: (.*)")
FIGURE = re.compile(r"(\d+) bytes in ([0-9.]+) s")


def virtiofsd_path():
    found = shutil.which("virtiofsd")
    cargo = os.path.expanduser("~/.cargo/bin/virtiofsd")
    return found or (cargo if os.path.exists(cargo) else None)


def make_file(path, mib):
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)


def start_virtiofsd(binary, sock, shared, cache):
    p = subprocess.Popen([binary, "--socket-path", sock, "--shared-dir", shared,
                          "--sandbox", "none", "--cache", cache, "--log-level", "error"],
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            stop(p)
            raise OSError("virtiofsd did not create its socket")
        time.sleep(0.02)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def one(name, cmd, mib, timeout):
    """One boot; returns MiB/s of the guest's read, or None."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        out, _ = p.communicate()
        print(f"bench: {name} timed out after {timeout}s", file=sys.stderr)
    text = out.decode(errors="replace")
    m = REPORT.search(text)
    figures = FIGURE.findall(m.group(1)) if m else []
    if not figures or int(figures[0][0]) != mib << 20:
        print(f"bench: {name} no valid figure; guest output ended with:\n{text[-800:]}",
              file=sys.stderr)
        return None
    nbytes, secs = int(figures[0][0]), float(figures[0][1])
    return nbytes / (1 << 20) / secs


def bench_once(name, make_cmd, args, tmp, shared, i):
    """One boot of one peer on a fresh virtiofsd; MiB/s or None."""
    sock = os.path.join(tmp, f"vfsd-{name.split()[0]}-{i}.sock")
    vfsd = start_virtiofsd(args.virtiofsd, sock, shared, args.cache)
    try:
        r = one(name, make_cmd(sock), args.mib, args.timeout)
    finally:
        stop(vfsd)
        if os.path.exists(sock):
            os.unlink(sock)
    if r is not None:
        print(f"bench: {name} run {i + 1}: {r:.1f} MiB/s", file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True, help="the devtest initrd")
    ap.add_argument("--mib", type=int, default=256, help="size of the file read")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default="auto", help="virtiofsd --cache, the same for both")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per boot")
    ap.add_argument("--virtiofsd", default=virtiofsd_path())
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    args = ap.parse_args()
    if not args.virtiofsd:
        sys.exit("bench: virtiofsd is not installed: run `make deps`")
    guest = (f"cocoon.test=fs-bench cocoon.fs-bench.tag={TAG} "
             f"cocoon.fs-bench.file={FILE} cocoon.fs-bench.chunk_kib=1024")

    tmp = tempfile.mkdtemp(prefix="cocoon-fs-bench-")
    shared = os.path.join(tmp, "shared")
    os.mkdir(shared)
    results = {}
    try:
        make_file(os.path.join(shared, FILE), args.mib)

        def cocoon(sock):
            return [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
                    "--memory", str(MEMORY_MIB), "--cmdline", f"quiet {guest}",
                    "--fs", f"tag={TAG},socket={sock}"]

        def qemu(sock):
            return [args.qemu, "-M",
                    "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem",
                    "-accel", "kvm", "-cpu", "host", "-m", str(MEMORY_MIB),
                    "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
                    "-nodefaults", "-no-user-config", "-display", "none",
                    "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
                    "-initrd", args.initrd,
                    "-chardev", f"socket,id=vfs,path={sock}",
                    "-device", f"vhost-user-fs-device,chardev=vfs,tag={TAG}",
                    "-append", f"{BASE_CMDLINE} {guest}"]
        peers = [("cocoon-vmm", "cocoon-vmm", cocoon)]
        if args.qemu:
            peers.append(("qemu", "qemu vhost-user-fs", qemu))
        else:
            print("bench: no QEMU: cocoon-vmm figures only", file=sys.stderr)
        # Alternate the peers run by run, so that machine noise hits both.
        for i in range(args.runs):
            for key, name, make_cmd in peers:
                r = bench_once(name, make_cmd, args, tmp, shared, i)
                if r is not None:
                    results.setdefault(key, []).append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name):
        v = results.get(name) or []
        return statistics.median(v) if v else None

    c, q = med("cocoon-vmm"), med("qemu")
    print(f"\nvirtio-fs sequential read, {args.mib} MiB file, 1 MiB reads, fresh mount, "
          f"virtiofsd --cache {args.cache}, median of {args.runs}")
    print("| cocoon-vmm MiB/s | qemu vhost-user-fs MiB/s | ratio (cocoon/qemu) |")
    print("|------------------|--------------------------|---------------------|")
    fc = f"{c:.1f}" if c else "failed"
    fq = f"{q:.1f}" if q else "n/a"
    r = f"{c / q:.2f}" if c and q else "n/a"
    print(f"| {fc:>16} | {fq:>24} | {r:>19} |")


if __name__ == "__main__":
    main()
