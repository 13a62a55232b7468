#!/usr/bin/env python3
"""vsock throughput bench: cocoon-vmm (hybrid Unix socket) vs QEMU microvm with vhost-vsock-device.

Both guests run the test-mode init in bench mode (cocoon.vsock.bench_mib=),
which listens on a vsock port and serves runs: `RECV n` (host->guest, the
guest answers OK after n bytes) and `SEND n` (guest->host). The host reaches
cocoon-vmm through `CONNECT <port>` on the VMM's Unix socket and the QEMU
guest through AF_VSOCK to its CID. Prints MiB/s medians and ratios.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PORT = 5001
QEMU_CID = 42
BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 nomodule 8250.nr_uarts=1 quiet"
CHUNK = 1 << 20


def uds_connector(path):
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(path)
        s.sendall(f"CONNECT {PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                raise OSError("closed before OK (guest not listening yet)")
            line += b
        if not line.startswith(b"OK "):
            raise OSError(f"bad answer {line!r}")
        return s
    return connect


def vsock_connector(cid):
    def connect():
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect((cid, PORT))
        return s
    return connect


def retry(connect, deadline):
    last = None
    while time.monotonic() < deadline:
        try:
            return connect()
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"guest never accepted: {last}")


def one(connect, direction, nbytes, deadline):
    s = retry(connect, deadline)
    payload = b"\xa5" * CHUNK
    try:
        start = time.monotonic()
        if direction == "h2g":
            s.sendall(f"RECV {nbytes}\n".encode())
            left = nbytes
            while left:
                n = min(left, CHUNK)
                s.sendall(payload[:n])
                left -= n
            if s.recv(3) != b"OK\n":
                raise OSError("guest did not confirm")
        else:
            s.sendall(f"SEND {nbytes}\n".encode())
            left = nbytes
            while left:
                b = s.recv(min(left, CHUNK))
                if not b:
                    raise OSError(f"guest stopped with {left} bytes left")
                left -= len(b)
        return nbytes / (1 << 20) / (time.monotonic() - start)
    finally:
        s.close()


def bench(name, cmd, connect, mib, runs):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    out = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
    reader.start()
    res = {"h2g": [], "g2h": []}
    try:
        deadline = time.monotonic() + 300
        for _ in range(runs):
            for d in ("h2g", "g2h"):
                res[d].append(one(connect, d, mib << 20, deadline))
                print(f"bench: {name} {d} {res[d][-1]:.1f} MiB/s", file=sys.stderr)
        s = retry(connect, deadline)
        s.sendall(b"DONE\n")
        s.close()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    except Exception as e:  # report, keep the other peer's figures
        print(f"bench: {name} failed: {e}", file=sys.stderr)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        reader.join(timeout=5)
    text = (out[0] if out else b"").decode(errors="replace")
    if "vsock ok" not in text:
        print(f"bench: {name} guest output ended with:\n{text[-800:]}", file=sys.stderr)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True, help="the devtest initrd")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    args = ap.parse_args()
    guest = f"cocoon.test=vsock cocoon.vsock.bench_mib={args.mib} cocoon.vsock.listen={PORT}"

    tmp = tempfile.mkdtemp(prefix="cocoon-vsock-bench-")
    uds = os.path.join(tmp, "v.sock")
    results = {}
    try:
        cocoon = [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
                  "--cmdline", f"quiet {guest}", "--vsock", f"cid=3,uds={uds}"]
        results["cocoon-vmm"] = bench("cocoon-vmm", cocoon, uds_connector(uds), args.mib, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if not os.path.exists("/dev/vhost-vsock"):
        subprocess.run(["modprobe", "vhost_vsock"], check=False)
    if args.qemu and os.path.exists("/dev/vhost-vsock"):
        qemu = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,acpi=off", "-accel", "kvm",
                "-cpu", "host", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd,
                "-device", f"vhost-vsock-device,guest-cid={QEMU_CID}",
                "-append", f"{BASE_CMDLINE} {guest}"]
        results["qemu vhost-vsock"] = bench("qemu vhost-vsock", qemu, vsock_connector(QEMU_CID),
                                            args.mib, args.runs)
    else:
        print("bench: no QEMU or /dev/vhost-vsock: cocoon-vmm figures only", file=sys.stderr)

    def med(name, d):
        v = results.get(name, {}).get(d) or []
        return statistics.median(v) if v else None

    print(f"\nvsock throughput, {args.mib} MiB per run, median of {args.runs}")
    print("| direction   | cocoon-vmm MiB/s | qemu vhost-vsock MiB/s | ratio (cocoon/qemu) |")
    print("|-------------|------------------|------------------------|---------------------|")
    for d, label in (("h2g", "host->guest"), ("g2h", "guest->host")):
        c, q = med("cocoon-vmm", d), med("qemu vhost-vsock", d)
        fc = f"{c:.1f}" if c else "failed"
        fq = f"{q:.1f}" if q else "n/a"
        r = f"{c / q:.2f}" if c and q else "n/a"
        print(f"| {label:<11} | {fc:>16} | {fq:>22} | {r:>19} |")


if __name__ == "__main__":
    main()
