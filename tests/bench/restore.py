#!/usr/bin/env python3
"""Snapshot/restore bench: a VM restored from a snapshot vs the same VM booted.

One template: cocoon-vmm boots the agent initrd with `--snapshot-to`, the
bench waits until the agent accepts a vsock connection (hybrid vsock
`CONNECT 1024` answered `OK`), then sends SIGUSR1 and times the save.
Then, alternating run by run: a cold boot and a restore (`--restore`) of
the same VM shape, each timed from starting the VMM process to the agent
accepting a connection. Last, 1 and then 5 VMs restored from the template
run side by side and their PSS is read (mean per VMM process tree), next
to one booted VM's. Prints a table; exits 1 when a run failed.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# The template's command line (the shim's TEMPLATE_CMDLINE) and a booted
# pod's (the shim's default).
TEMPLATE = "quiet init_on_free=1"
BOOT = "quiet"


def agent_accepts(uds, deadline):
    """Seconds until the guest's agent accepts on `uds` (None on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(uds)
            s.sendall(b"CONNECT 1024\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            s.close()
            if reply.startswith(b"OK "):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    return None


SETUP = re.compile(r"starting guest.*\bsetup=([0-9.]+)(ns|µs|us|ms|s)\b")
UNIT = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def setup_seconds(log):
    """The VMM's own time from its start to running the guest (its
    "starting guest" log line: arguments, snapshot load or kernel load,
    KVM and device set-up), or None."""
    try:
        with open(log, errors="replace") as f:
            for line in f:
                m = SETUP.search(line)
                if m:
                    return float(m.group(1)) * UNIT[m.group(2)]
    except OSError:
        pass
    return None


EVENTS = ("starting guest", "burst of faults", "transport reset", "timed out", "loader stopped")
FIELDS = re.compile(r"\b(\w+)=(\S+)")


def restore_events(log):
    """What a restored VMM logged about its guest's first moments: the
    page loader's bursts of faults and the vsock transport reset."""
    out = []
    try:
        with open(log, errors="replace") as f:
            for line in f:
                for e in EVENTS:
                    if e in line:
                        fields = " ".join(f"{k}={v}" for k, v in FIELDS.findall(line))
                        out.append(f"{e}: {fields}")
    except OSError:
        pass
    return out


def start(cmd):
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def timed_start(cmd, uds, deadline):
    """(process, seconds from start to the agent accepting or None)."""
    t0 = time.monotonic()
    p = start(cmd)
    t = agent_accepts(uds, deadline)
    return p, (t - t0 if t else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True, help="the agent initrd")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=256, help="MiB")
    ap.add_argument("--pods", type=int, default=5, help="restored VMs side by side")
    ap.add_argument("--deadline", type=int, default=180)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cocoon-restore-bench-")
    failures = common.Failures()

    def cmd(uds, *extra, cmdline=BOOT):
        return [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
                "--vcpus", str(args.vcpus), "--memory", str(args.memory),
                "--vsock", f"cid=3,uds={uds}", "--cmdline", cmdline,
                "--log-level", "info", "--log-file", f"{uds}.log", *extra]

    snap = os.path.join(work, "snapshot")
    os.mkdir(snap)
    try:
        uds = os.path.join(work, "template.sock")
        p, booted = timed_start(cmd(uds, "--snapshot-to", snap, cmdline=TEMPLATE), uds, args.deadline)
        if booted is None:
            stop(p)
            print(f"bench: the template's agent never answered: {p.stderr.read().decode()[-800:]}",
                  file=sys.stderr)
            sys.exit(1)
        t0 = time.monotonic()
        p.send_signal(signal.SIGUSR1)
        rc = p.wait(timeout=args.deadline)
        save = time.monotonic() - t0
        if rc != 0:
            print(f"bench: the template VMM exited {rc}: {p.stderr.read().decode()[-800:]}",
                  file=sys.stderr)
            sys.exit(1)
        image = os.stat(os.path.join(snap, "memory"))
        image_mib = image.st_blocks * 512 / 2**20
        print(f"bench: template booted in {booted:.3f}s, saved in {save:.3f}s, "
              f"memory image {image_mib:.1f} MiB on disk of {args.memory} MiB",
              file=sys.stderr, flush=True)

        results = {"boot": [], "restore": []}
        setups = {"boot": [], "restore": []}
        kinds = [("boot", lambda u: cmd(u)), ("restore", lambda u: cmd(u, "--restore", snap))]
        for i in range(-1, args.runs):
            run = f"{i + 1}" if i >= 0 else "warm-up"
            for name, make in common.rotate(kinds, i):
                u = os.path.join(work, f"{name}-{i + 1}.sock")
                p, t = timed_start(make(u), u, args.deadline)
                if name == "restore" and t is not None:
                    # The loader reports a burst of faults once it is quiet.
                    time.sleep(0.7)
                stop(p)
                if t is None:
                    failures.add(name, run, f"the agent did not answer within {args.deadline} s: "
                                 f"{p.stderr.read().decode()[-300:]}")
                    continue
                setup = setup_seconds(f"{u}.log")
                if i >= 0:
                    results[name].append(t)
                    setups[name].append(setup)
                shown = f"{setup:.3f}s" if setup is not None else "?"
                print(f"bench: run {run}/{args.runs} {name:8s} agent accepts after {t:.3f}s "
                      f"(VMM set-up {shown})", file=sys.stderr, flush=True)
                for line in restore_events(f"{u}.log"):
                    print(f"bench:     {line}", file=sys.stderr, flush=True)

        def pss_of(make_cmds):
            procs = []
            try:
                for j, c in enumerate(make_cmds):
                    u = os.path.join(work, f"pss-{len(make_cmds)}-{j}.sock")
                    p, t = timed_start(c(u), u, args.deadline)
                    procs.append(p)
                    if t is None:
                        return None
                time.sleep(1.0)
                mems = [common.tree_memory(p.pid)["pss"] for p in procs]
                return sum(mems) / len(mems)
            finally:
                for p in procs:
                    stop(p)

        pss = {
            "booted, 1 VM": pss_of([lambda u: cmd(u)]),
            "restored, 1 VM": pss_of([lambda u: cmd(u, "--restore", snap)]),
            f"restored, {args.pods} VMs": pss_of([lambda u: cmd(u, "--restore", snap)] * args.pods),
        }
        for k, v in pss.items():
            if v is None:
                failures.add("pss", k, "an agent did not answer")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"restore bench: {args.runs} runs each after 1 warm-up, alternating, {args.vcpus} vCPU, "
          f"{args.memory} MiB, agent initrd; booted with '{BOOT}' (a pod's command line), the template "
          f"with '{TEMPLATE}'; medians with their number of runs (n)")
    head = ["metric", "cocoon-vmm boot", "cocoon-vmm restore", "ratio (restore/boot)"]
    print(common.row(head))
    print(common.rule(len(head)))
    mb = common.med(results["boot"])
    mr = common.med(results["restore"])
    print(common.row(["VMM start to agent accepting (s)", common.cell(mb), common.cell(mr),
                      common.ratio(mr, mb)]))
    sb = common.med(setups["boot"])
    sr = common.med(setups["restore"])
    print(common.row(["of which the VMM's set-up (s)", common.cell(sb), common.cell(sr),
                      common.ratio(sr, sb)]))
    spread = sorted(results["restore"])
    spread_s = f"{spread[0]:.3f}-{spread[-1]:.3f}" if spread else "n/a"
    print()
    print(f"- template: saved in {save:.3f}s; memory image {image_mib:.1f} MiB on disk "
          f"(pages never touched and zero pages are holes)")
    for k, v in pss.items():
        shown = f"{v / 1024:.1f} MiB" if v is not None else "failed"
        print(f"- PSS per VM ({k}): {shown}")
    print("- 'agent accepting': the guest agent answered a hybrid vsock CONNECT 1024 with OK")
    print("- 'the VMM's set-up': from the VMM's start to the guest running (its log's 'starting "
          "guest' line): for a restore, reading and checking the snapshot's state and "
          f"restoring KVM and device state (the memory image's pages are read and checked as the "
          f"guest touches them); restore runs ranged {spread_s} s")
    failures.report_and_exit([])


if __name__ == "__main__":
    main()
