#!/usr/bin/env python3
"""virtio-fs sequential read bench: cocoon-vmm vs QEMU microvm with vhost-user-fs-device, same virtiofsd.

Firecracker has no virtio-fs device, so it is not a peer here. Runs
alternate between the peers. Each run starts a fresh virtiofsd (the same
flags for both peers) on a shared dir holding one file of --mib MiB, boots
the devtest init in fs-bench mode (cocoon.test=fs-bench), which mounts the
share by tag and reads the file start to end in 1 MiB reads on that fresh
mount (so no page cache from an earlier read), and reports bytes and
guest-measured seconds on the console. Both VMMs get the same virtio-fs
queue: one request queue of QUEUE_SIZE descriptors (QEMU's default would be
128, cocoon-vmm's is 1024), so that both guests split a 1 MiB read into the
same FUSE requests. Prints MiB/s medians with their n and the ratio; exits 1
when QEMU or cocoon-vmm failed a run.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TAG = "benchfs"
FILE = "bench.bin"
MEMORY_MIB = 512
QUEUE_SIZE = 1024  # cocoon-vmm's default (vmm/src/devices/virtio/fs/config.rs), set for both
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
    """One boot; (MiB/s of the guest's read, None) or (None, why it failed)."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    why = None
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        out, _ = p.communicate()
        why = f"timed out after {timeout} s"
    text = out.decode(errors="replace")
    m = REPORT.search(text)
    figures = FIGURE.findall(m.group(1)) if m else []
    if not figures or int(figures[0][0]) != mib << 20:
        print(f"bench: {name} no valid figure; guest output ended with:\n{text[-800:]}",
              file=sys.stderr)
        last = text.strip().splitlines()[-1][:160] if text.strip() else "(no output)"
        why = why or f"no valid figure (VMM exit code {p.returncode})"
        return None, f"{why}; last output: {last}"
    nbytes, secs = int(figures[0][0]), float(figures[0][1])
    return nbytes / (1 << 20) / secs, None


def bench_once(name, make_cmd, args, tmp, shared, i):
    """One boot of one peer on a fresh virtiofsd; (MiB/s, None) or (None, why)."""
    sock = os.path.join(tmp, f"vfsd-{name.split()[0]}-{i}.sock")
    try:
        vfsd = start_virtiofsd(args.virtiofsd, sock, shared, args.cache)
    except OSError as e:
        return None, str(e)
    try:
        r, why = one(name, make_cmd(sock), args.mib, args.timeout)
    finally:
        stop(vfsd)
        if os.path.exists(sock):
            os.unlink(sock)
    if r is not None:
        print(f"bench: {name} run {i + 1}: {r:.1f} MiB/s", file=sys.stderr, flush=True)
    return r, why


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
    failures = common.Failures()
    skipped = []
    try:
        make_file(os.path.join(shared, FILE), args.mib)

        def cocoon(sock):
            return [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
                    "--memory", str(MEMORY_MIB), "--cmdline", f"quiet {guest}",
                    "--fs", f"tag={TAG},socket={sock},queues=1,queue_size={QUEUE_SIZE}"]

        def qemu(sock):
            return [args.qemu, "-M",
                    "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem",
                    "-accel", "kvm", "-cpu", "host", "-m", str(MEMORY_MIB),
                    "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
                    "-nodefaults", "-no-user-config", "-display", "none",
                    "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
                    "-initrd", args.initrd,
                    "-chardev", f"socket,id=vfs,path={sock}",
                    "-device", f"vhost-user-fs-device,chardev=vfs,tag={TAG},"
                               f"num-request-queues=1,queue-size={QUEUE_SIZE}",
                    "-append", f"{common.BASE_CMDLINE} quiet {guest}"]
        peers = [("cocoon-vmm", cocoon)]
        why = common.missing(args.qemu, "qemu-system-x86_64")
        if why:
            skipped.append(why)
            print(f"bench: {why}", file=sys.stderr)
        else:
            peers.append(("qemu vhost-user-fs", qemu))
        results = {name: [] for name, _ in peers}
        # Alternate the peers run by run, so that machine noise hits both.
        for i in range(args.runs):
            for name, make_cmd in common.rotate(peers, i):
                r, why = bench_once(name, make_cmd, args, tmp, shared, i)
                if why:
                    failures.add(name, i + 1, why)
                else:
                    results[name].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(results)
    m = {n: common.med(results[n]) for n in names}
    print(f"\nvirtio-fs sequential read, {args.mib} MiB file, 1 MiB reads, fresh mount, "
          f"virtiofsd --cache {args.cache}, 1 request queue of {QUEUE_SIZE}, {args.runs} runs "
          f"each, alternating; medians with their number of runs (n)")
    head = [f"{n} MiB/s" for n in names] + [f"ratio (cocoon/{o.split()[0]})" for o in names[1:]]
    print(common.row(head))
    print(common.rule(len(head)))
    print(common.row([common.cell(m[n], "{:.1f}") for n in names]
                     + [common.ratio(m["cocoon-vmm"], m[o]) for o in names[1:]]))
    print()
    print(f"- both: virtio-fs with 1 request queue of {QUEUE_SIZE} descriptors "
          f"(cocoon-vmm --fs queue_size=, QEMU vhost-user-fs-device queue-size=), same guest "
          f"kernel and virtiofsd flags, so the same FUSE requests per 1 MiB read")
    print("- firecracker: not a peer here, it has no virtio-fs device")
    failures.report_and_exit(skipped)


if __name__ == "__main__":
    main()
