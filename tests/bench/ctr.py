#!/usr/bin/env python3
"""`ctr run --rm` latency and per-pod host memory: cocoon vs runc.

Starts a containerd of our own (tests/ctr/containerd.sh) with the cocoon
runtime configured, then alternates `ctr run --rm IMAGE ID echo ...` between
io.containerd.cocoon.v2 and io.containerd.runc.v2, timing each from the
start of `ctr` to the first byte of the container's output and to `ctr`'s
exit. One warm-up run each is not counted. Then it starts one `sleep`
container per runtime and sums the PSS (/proc/PID/smaps_rollup) of what the
pod costs the host: for cocoon the shim, cocoon-vmm and virtiofsd (all
processes of the shim's tree); for runc the shim and the container's
processes. Prints a markdown table with medians and the cocoon/runc ratios.

For cocoon the shim's log splits a run into its phases (VM boot to agent
ready, container create, start to exit), so the table also says what
dominates the latency.
"""
import argparse
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import time

IMAGE = "cocoon.local/busybox:latest"
RUNTIMES = {"cocoon": "io.containerd.cocoon.v2", "runc": "io.containerd.runc.v2"}


class Containerd:
    def __init__(self, repo, cfg):
        self.repo = repo
        self.dir = f"/tmp/cocoon-bench-ctr-{os.getpid()}"
        os.makedirs(self.dir, exist_ok=True)
        self.env = dict(os.environ)
        self.env["COCOON_CONFIG"] = cfg
        self.env["PATH"] = f"{repo}/target/release:{self.env.get('PATH', '')}"
        self.cd_dir = f"{self.dir}/containerd"
        subprocess.run([f"{repo}/tests/ctr/containerd.sh", "start", self.cd_dir],
                       env=self.env, check=True)

    def ctr(self, *args, check=True):
        cmd = ["ctr", "--address", f"{self.cd_dir}/containerd.sock", "-n", "cocoon", *args]
        return subprocess.run(cmd, env=self.env, check=check, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)

    def popen(self, *args):
        cmd = ["ctr", "--address", f"{self.cd_dir}/containerd.sock", "-n", "cocoon", *args]
        return subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self):
        subprocess.run([f"{self.repo}/tests/ctr/containerd.sh", "stop", self.cd_dir], env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed_run(cd, runtime, cid):
    """(seconds to first output byte, seconds to ctr exit, wall start, wall end)."""
    wall = time.time()
    start = time.monotonic()
    p = cd.popen("run", "--rm", "--runtime", runtime, IMAGE, cid, "echo", "hello from a container")
    first = None
    out = b""
    while True:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            if first is None:
                first = time.monotonic() - start
            out += chunk
        if time.monotonic() - start > 300:
            p.kill()
            raise SystemExit(f"bench: {runtime} run {cid} took over 300 s")
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait()
    total = time.monotonic() - start
    if rc != 0 or out != b"hello from a container\n":
        raise SystemExit(f"bench: {runtime} run {cid}: exit {rc}, output {out!r}, {err.strip()}")
    return first, total, wall, wall + total


def children(pid):
    """Every descendant of pid (through /proc/*/stat ppid)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(d)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def shim_pid(runtime_bin, cid):
    out = subprocess.run(["pgrep", "-f", f"{runtime_bin} -namespace cocoon -id {cid}"],
                         capture_output=True, text=True).stdout.split()
    if not out:
        raise SystemExit(f"bench: no {runtime_bin} for {cid}")
    return int(out[0])


def pod_memory(cd, name, runtime):
    """PSS in KiB of the shim's process tree running one sleep container."""
    cid = f"pss-{name}"
    cd.ctr("run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "1000")
    time.sleep(3.0)  # let the guest settle after boot
    shim = shim_pid(f"containerd-shim-{name}-v2", cid)
    pids = [shim] + children(shim)
    parts = {}
    for p in pids:
        parts[comm(p)] = parts.get(comm(p), 0) + pss_kib(p)
    cd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    for _ in range(600):
        if "STOPPED" in cd.ctr("task", "ls").stdout or cid not in cd.ctr("task", "ls").stdout:
            break
        time.sleep(0.1)
    cd.ctr("task", "rm", cid, check=False)
    cd.ctr("container", "rm", cid, check=False)
    return sum(parts.values()), parts


# The shim's log lines (in containerd's log) that bound each phase of a
# cocoon run; the run starts when ctr starts and ends when ctr exits.
MARKS = [
    ("containerd to shim", "cocoon shim serving"),
    ("VM boot to agent ready", "pod started"),
    ("container create", "task created"),
    ("start to exit", "process exited"),
    ("pod teardown", "pod destroyed"),
]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")


def stamp(line):
    m = STAMP.match(line)
    if not m:
        return None
    t = time.strptime(m.group(1).split(".")[0], "%Y-%m-%dT%H:%M:%S")
    frac = float("0." + m.group(1).split(".")[1]) if "." in m.group(1) else 0.0
    return time.mktime(t) - time.timezone + frac


def phases(log_lines, cid, t0, t_end):
    """Durations of the phases of one cocoon run, or None if a mark is missing."""
    out, prev = [], t0
    # `id=x1` or `pod="x1"`, not `container_id=` and not `x10`.
    key = re.compile(rf'\b(?:id|pod)="?{re.escape(cid)}"?(?:\s|$)')
    for name, msg in MARKS:
        ts = next((stamp(line) for line in log_lines if msg in line and key.search(line)), None)
        if ts is None:
            return None
        out.append((name, ts - prev))
        prev = ts
    out.append(("after teardown to ctr exit", t_end - prev))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} missing: run 'make deps'")
    cfg = f"/tmp/cocoon-bench-ctr-{os.getpid()}.toml"
    with open(cfg, "w") as f:
        f.write(f'kernel = "{a.kernel}"\ninitrd = "{a.initrd}"\nvmm = "{a.vmm}"\n'
                f'run_dir = "/run/cocoon-bench-{os.getpid()}"\n')
    cd = Containerd(repo, cfg)
    try:
        times = {n: [] for n in RUNTIMES}
        walls = []
        for i in range(a.runs + 1):
            for name, rt in RUNTIMES.items():
                first, total, w0, w1 = timed_run(cd, rt, f"{name}-{i}")
                if i > 0:  # the first run of each is a warm-up
                    times[name].append((first, total))
                    if name == "cocoon":
                        walls.append((f"{name}-{i}", w0, w1))
            print(f"bench: ctr run {i}/{a.runs}: cocoon {times['cocoon'][-1][1] if i else total:.2f} s",
                  file=sys.stderr, flush=True)
        mem = {name: pod_memory(cd, name, rt) for name, rt in RUNTIMES.items()}
        with open(f"{cd.cd_dir}/containerd.log", errors="replace") as f:
            log_lines = f.readlines()
    finally:
        cd.stop()
        os.unlink(cfg)

    med = {n: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
           for n, v in times.items()}
    p95 = {n: sorted(t[1] for t in v)[max(0, int(len(v) * 0.95) - 1)] for n, v in times.items()}
    print()
    print(f"`ctr run --rm ... echo` ({a.runs} runs each, alternating, median; "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f})")
    print()
    print("| runtime | first output (s) | ctr exit (s) | ctr exit p95 (s) | pod PSS (MiB) |")
    print("|---|---|---|---|---|")
    for n in RUNTIMES:
        print(f"| {n} | {med[n][0]:.3f} | {med[n][1]:.3f} | {p95[n]:.3f} | {mem[n][0] / 1024:.1f} |")
    print(f"| cocoon/runc | {med['cocoon'][0] / med['runc'][0]:.2f} | "
          f"{med['cocoon'][1] / med['runc'][1]:.2f} | | {mem['cocoon'][0] / max(1, mem['runc'][0]):.2f} |")
    split = [p for p in (phases(log_lines, cid, w0, w1) for cid, w0, w1 in walls) if p]
    if split:
        print()
        print(f"Where a cocoon `ctr run --rm` goes (median of {len(split)} runs, from the shim's log):")
        print()
        print("| phase | s | share |")
        print("|---|---|---|")
        total = med["cocoon"][1]
        for k, (name, _) in enumerate(split[0]):
            m = statistics.median(p[k][1] for p in split)
            print(f"| {name} | {m:.3f} | {100 * m / total:.0f}% |")
    else:
        print("\n(no phase split: the shim's log lines were not found in containerd's log)")
    print()
    print("Pod PSS by process (MiB): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v / 1024:.1f}" for k, v in sorted(mem[n][1].items()))
        for n in RUNTIMES))


if __name__ == "__main__":
    main()
