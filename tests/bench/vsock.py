#!/usr/bin/env python3
"""vsock throughput bench: cocoon-vmm vs Firecracker (both hybrid Unix-socket vsock) vs QEMU microvm with vhost-vsock-device.

All guests run the test-mode init in bench mode (cocoon.vsock.bench_mib=),
which listens on a vsock port and serves one command per connection:
`RECV n` (host->guest, the guest answers OK after n bytes) and `SEND n`
(guest->host). The host reaches cocoon-vmm and Firecracker through
`CONNECT <port>` on the VMM's Unix socket (answered `OK <port>`) and the QEMU
guest through AF_VSOCK to its CID. The VMs boot first, each is asked for an
empty `RECV 0` until it answers, then the runs alternate between them (each
run: one host->guest and one guest->host transfer per VMM, a different VMM
first each run). Prints MiB/s medians with their n and the ratios; exits 1
when a present peer or cocoon-vmm failed a run.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PORT = 5001
QEMU_CID = 42
GUEST_CID = 3
MEMORY_MIB = 128
CHUNK = 1 << 20


def uds_connector(path):
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
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
        except BaseException:
            s.close()
            raise
        return s
    return connect


def vsock_connector(cid):
    def connect():
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
            s.connect((cid, PORT))
        except BaseException:
            s.close()
            raise
        return s
    return connect


def retry(connect, deadline, alive):
    last = None
    while time.monotonic() < deadline:
        if not alive():
            raise OSError(f"the VMM exited (last connect error: {last})")
        try:
            return connect()
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"guest never accepted: {last}")


def one(connect, direction, nbytes, deadline, alive):
    s = retry(connect, deadline, alive)
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


class Vm:
    """One peer's VM, up for all its runs."""

    def __init__(self, name, cmd, connect, log_tail=None):
        self.name, self.cmd, self.connect, self.log_tail = name, cmd, connect, log_tail
        self.p = None
        self.out = []
        self.reader = None
        self.failed = None  # why, once a run failed

    def start(self):
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                return
            self.out.append(chunk)

    def text(self):
        return b"".join(self.out).decode(errors="replace")

    def alive(self):
        return self.p.poll() is None

    def why(self, e):
        why = f"{type(e).__name__}: {e}"
        if not self.alive():
            why += f"; VMM exit code {self.p.returncode}"
        if self.log_tail:
            why += f"; its log: {self.log_tail()}"
        return why

    def stop(self):
        """DONE to the guest, wait for its verdict (or the VMM's end), then
        kill what is left. Why the guest did not report success, or None.
        (A QEMU microvm has no i8042, so its guest's reboot=k restart does
        not end QEMU: the verdict on the console is what counts.)"""
        problem = None
        if self.failed is None and self.alive():
            try:
                s = retry(self.connect, time.monotonic() + 60, self.alive)
                s.sendall(b"DONE\n")
                s.close()
                end = time.monotonic() + 60
                while self.alive() and "vsock ok" not in self.text():
                    if time.monotonic() > end:
                        raise TimeoutError("no verdict on the console 60 s after DONE")
                    time.sleep(0.1)
            except (OSError, TimeoutError) as e:
                problem = f"ending the guest: {e}"
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        self.reader.join(timeout=5)
        text = self.text()
        if self.failed is None and problem is None and "vsock ok" not in text:
            problem = "the guest did not report 'vsock ok'"
        if problem or self.failed:
            print(f"bench: {self.name} guest output ended with:\n{text[-800:]}", file=sys.stderr)
        return problem


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True, help="the devtest initrd")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--firecracker", default=common.firecracker_default(),
                    help="default: $COCOON_BENCH_FIRECRACKER or ../shared/peers/firecracker")
    args = ap.parse_args()
    guest = f"cocoon.test=vsock cocoon.vsock.bench_mib={args.mib} cocoon.vsock.listen={PORT}"
    extra = f"quiet {guest}"
    cmdline = f"{common.BASE_CMDLINE} {extra}"

    tmp = tempfile.mkdtemp(prefix="cocoon-vsock-bench-")
    skipped = []
    uds = os.path.join(tmp, "cocoon.sock")
    vms = [Vm("cocoon-vmm",
              [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd, "--vcpus", "1",
               "--memory", str(MEMORY_MIB), "--cmdline", extra,
               "--vsock", f"cid={GUEST_CID},uds={uds}"],
              uds_connector(uds))]
    why = common.missing(args.firecracker, "firecracker")
    if why:
        skipped.append(why)
    else:
        fc_uds = os.path.join(tmp, "fc.sock")
        cmd = common.firecracker_cmd(args.firecracker, tmp, "vsock", args.kernel, args.initrd,
                                     cmdline, 1, MEMORY_MIB, vsock_uds=fc_uds, cid=GUEST_CID)
        vms.append(Vm("firecracker", cmd, uds_connector(fc_uds),
                      lambda c=cmd: common.firecracker_log_tail(c)))
    why = common.missing(args.qemu, "qemu-system-x86_64")
    if not why:
        if not os.path.exists("/dev/vhost-vsock"):
            subprocess.run(["modprobe", "vhost_vsock"], check=False)
        if not os.path.exists("/dev/vhost-vsock"):
            why = "qemu vhost-vsock: no /dev/vhost-vsock on this host — skipped"
    if why:
        skipped.append(why)
    else:
        vms.append(Vm("qemu vhost-vsock",
                      [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
                       "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", str(MEMORY_MIB),
                       "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                       "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd,
                       "-device", f"vhost-vsock-device,guest-cid={QEMU_CID}",
                       "-append", cmdline],
                      vsock_connector(QEMU_CID)))
    for s in skipped:
        print(f"bench: {s}", file=sys.stderr)

    failures = common.Failures()
    res = {vm.name: {"h2g": [], "g2h": []} for vm in vms}
    try:
        for vm in vms:
            vm.start()
        # Every guest up and serving before any run is timed.
        for vm in vms:
            try:
                s = retry(vm.connect, time.monotonic() + 300, vm.alive)
                s.sendall(b"RECV 0\n")
                if s.recv(3) != b"OK\n":
                    raise OSError("no OK to RECV 0")
                s.close()
            except (OSError, TimeoutError) as e:
                vm.failed = vm.why(e)
                failures.add(vm.name, "boot", f"guest never served: {vm.failed}; no run done")
        for i in range(args.runs):
            for vm in common.rotate(vms, i):
                if vm.failed:
                    continue
                for d in ("h2g", "g2h"):
                    try:
                        r = one(vm.connect, d, args.mib << 20, time.monotonic() + 60, vm.alive)
                    except (OSError, TimeoutError) as e:
                        vm.failed = vm.why(e)
                        failures.add(vm.name, f"{i + 1} {d}",
                                     f"{vm.failed}; its later runs not done")
                        break
                    res[vm.name][d].append(r)
                    print(f"bench: run {i + 1}/{args.runs} {vm.name} {d} {r:.1f} MiB/s",
                          file=sys.stderr, flush=True)
    finally:
        for vm in vms:
            if vm.p is not None:
                problem = vm.stop()
                if problem:
                    failures.add(vm.name, "end", problem)
        shutil.rmtree(tmp, ignore_errors=True)
    for vm in vms:
        if vm.failed:
            left = args.runs - len(res[vm.name]["g2h"])
            print(f"bench: {vm.name}: {left} run(s) not done after its failure", file=sys.stderr)

    names = [vm.name for vm in vms]
    others = names[1:]
    print(f"\nvsock throughput, {args.mib} MiB per transfer, {args.runs} runs each, alternating, "
          f"1 vCPU, {MEMORY_MIB} MiB; medians with their number of runs (n)")
    head = ["direction"] + [f"{n} MiB/s" for n in names] + [
        f"ratio (cocoon/{o.split()[0]})" for o in others]
    print(common.row(head))
    print(common.rule(len(head)))
    for d, label in (("h2g", "host->guest"), ("g2h", "guest->host")):
        m = {n: common.med(res[n][d]) for n in names}
        print(common.row([label] + [common.cell(m[n], "{:.1f}") for n in names]
                         + [common.ratio(m["cocoon-vmm"], m[o]) for o in others]))
    print()
    print("- cocoon-vmm and firecracker: hybrid vsock, the host connects to the VMM's Unix socket "
          "and sends `CONNECT 5001`; qemu: vhost-vsock in the host kernel, AF_VSOCK to CID 42")
    if "firecracker" in names:
        print(f"- {common.FIRECRACKER_NOTE}")
    failures.report_and_exit(skipped)


if __name__ == "__main__":
    main()
