#!/usr/bin/env python3
"""`ctr run --rm` latency and per-pod host memory: cocoon vs runc.

Starts a containerd of our own (tests/ctr/containerd.sh) with the cocoon
runtime configured, then, one phase per cocoon variant, alternates
`ctr run --rm IMAGE ID echo ...` between that variant and io.containerd.runc.v2:
cocoon with its defaults (the pod's VM restored from a template VM, its
RAM loaded as the guest touches it), cocoon with `template_memory =
"eager"` (the template's memory image copied whole before the guest
runs), cocoon with `template = false` (the pod's VM boots; a second configuration
file through `ctr run --runtime-config-path`); each variant's ratios are to
the runc runs of its own phase (see main: under QEMU TCG a booted VM slows
the VMs after it, an emulator effect). It times each from the start of
`ctr` to the first byte of the container's output and to `ctr`'s exit. One warm-up run each is not counted (cocoon's
builds the template). Then it starts `sleep` containers, one pod each, and
sums the PSS (/proc/PID/smaps_rollup) of what the pods cost the host: for
cocoon the shim, cocoon-vmm and virtiofsd (all processes of the shim's
tree); for runc the shim and the container's processes; per pod, with 1
pod running and (cocoon from a template) with 5 side by side, where the
pods share the binaries' pages. Prints a markdown table with medians (and
their number of runs) and the ratios to runc; a failed run is listed under
the table and makes the bench exit 1.

For cocoon the shim's log splits a run into its phases (VM boot to agent
ready, container create, start to exit), so the table also says what
dominates the latency.

`--variant NAME` runs only that variant's phase (repeatable). make bench
runs each phase in a test host of its own (`--results-json` hands the
phase's figures out as a JSON line through run.sh --results) and then
prints the tables from them outside (`--report FILE`): under QEMU TCG the
VMs of one phase would otherwise slow those of the next (see measure).
"""
import argparse
import json
import math
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

IMAGE = "cocoon.local/busybox:latest"
# name -> (runtime, the shim's binary, extra `ctr run` arguments); the
# boot variant's configuration path is filled in by main().
PODS = 5  # pods side by side for the shared-memory PSS figure
RUNTIMES = {
    "cocoon": ("io.containerd.cocoon.v2", "containerd-shim-cocoon-v2", []),
    "cocoon-eager": ("io.containerd.cocoon.v2", "containerd-shim-cocoon-v2", []),
    "cocoon-boot": ("io.containerd.cocoon.v2", "containerd-shim-cocoon-v2", []),
    "runc": ("io.containerd.runc.v2", "containerd-shim-runc-v2", []),
}


class RunFailed(Exception):
    """One run went wrong; the bench notes it and goes on."""


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


def timed_run(cd, name, cid):
    """(seconds to first output byte, seconds to ctr exit, wall start, wall end)."""
    runtime, _, extra = RUNTIMES[name]
    wall = time.time()
    start = time.monotonic()
    p = cd.popen("run", "--rm", "--runtime", runtime, *extra, IMAGE, cid, "echo",
                 "hello from a container")
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
            p.wait()
            raise RunFailed(f"ctr run took over 300 s (output so far {out!r})")
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait()
    total = time.monotonic() - start
    if rc != 0 or out != b"hello from a container\n":
        raise RunFailed(f"ctr exit {rc}, output {out!r}, {err.strip()[-300:]}")
    return first, total, wall, wall + total


children = common.children  # jail.py uses these two through ctr
pss_kib = common.pss_kib


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
        raise RunFailed(f"no {runtime_bin} process for {cid}")
    return int(out[0])


def pod_memory(cd, name, pods=1):
    """(PSS in KiB per pod, {process name: KiB per pod}) of `pods` sleep
    containers, each its own pod, running side by side: the sum over every
    shim's process tree, divided by the pods."""
    runtime, shim_bin, extra = RUNTIMES[name]
    cids = [f"pss-{name}-{pods}-{k}" for k in range(pods)]
    parts = {}
    try:
        for cid in cids:
            r = cd.ctr("run", "-d", "--runtime", runtime, *extra, IMAGE, cid, "sleep", "1000",
                       check=False)
            if r.returncode != 0:
                raise RunFailed(f"ctr run -d: exit {r.returncode}, {r.stderr.strip()[-300:]}")
        time.sleep(3.0)  # let the guests settle after their start
        for cid in cids:
            shim = shim_pid(shim_bin, cid)
            for p in [shim] + children(shim):
                parts[comm(p)] = parts.get(comm(p), 0) + pss_kib(p)
    finally:
        for cid in cids:
            cleanup_container(cd, cid)
    parts = {k: v / pods for k, v in parts.items()}
    return sum(parts.values()), parts


def cleanup_container(cd, cid):
    cd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    for _ in range(600):
        if "STOPPED" in cd.ctr("task", "ls").stdout or cid not in cd.ctr("task", "ls").stdout:
            break
        time.sleep(0.1)
    cd.ctr("task", "rm", cid, check=False)
    cd.ctr("container", "rm", cid, check=False)


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


STEPS = ("prepare_ms", "virtiofsd_ms", "vmm_to_agent_ms", "failed_attempts")


def start_steps(log_lines, cid):
    """The shim's split of one pod's VM start ("the pod's agent answers"
    line: cgroup/jail/template, virtiofsd, VMM spawn to the agent's
    answer, connections that got no answer), or None."""
    key = re.compile(rf'\bpod="?[^"\s]*/{re.escape(cid)}"?(?:\s|$)')
    for line in log_lines:
        if "the pod's agent answers" in line and key.search(line):
            fields = dict(re.findall(r"\b(\w+)=(\d+)\b", line))
            if all(k in fields for k in STEPS):
                return {k: int(fields[k]) for k in STEPS}
    return None


VARIANTS = [n for n in RUNTIMES if n != "runc"]


def measure(a, variants):
    """Run the phases of `variants` in one containerd; returns what
    report() prints (plain data, so a phase run in a test host of its own
    can hand it over as a JSON line)."""
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} missing: run 'make deps'")
    cfg = f"/tmp/cocoon-bench-ctr-{os.getpid()}.toml"
    boot_cfg = f"/tmp/cocoon-bench-ctr-{os.getpid()}-boot.toml"
    eager_cfg = f"/tmp/cocoon-bench-ctr-{os.getpid()}-eager.toml"
    templates = f"/tmp/cocoon-bench-ctr-{os.getpid()}-templates"
    common_cfg = (f'kernel = "{a.kernel}"\ninitrd = "{a.initrd}"\nvmm = "{a.vmm}"\n'
                  f'run_dir = "/run/cocoon-bench-{os.getpid()}"\n')
    with open(cfg, "w") as f:
        # A template directory of its own: the first run builds it.
        f.write(common_cfg + f'template_dir = "{templates}"\n')
    with open(boot_cfg, "w") as f:
        f.write(common_cfg + "template = false\n")
    with open(eager_cfg, "w") as f:
        f.write(common_cfg + f'template_dir = "{templates}"\ntemplate_memory = "eager"\n')
    RUNTIMES["cocoon-boot"][2].extend(["--runtime-config-path", boot_cfg])
    RUNTIMES["cocoon-eager"][2].extend(["--runtime-config-path", eager_cfg])
    cd = Containerd(repo, cfg)
    failures = common.Failures()
    data = {"variants": variants, "runs": a.runs, "cpus": os.cpu_count(),
            "emulator": os.environ.get("COCOON_TESTHOST_EMULATOR", ""),
            "times": {v: [] for v in variants}, "runc_in": {v: [] for v in variants},
            "mem": {}, "phases": {v: [] for v in variants}, "steps": {v: [] for v in variants}}
    try:
        walls = []
        # Each cocoon variant alternates with runc in a phase of its own
        # (make bench runs each phase in a test host of its own). Not all
        # four in one rotation: in a test host under QEMU TCG a VM that
        # booted (or ran from a whole private copy) leaves translated code
        # on the host frames it used, and the next VM's writes to those
        # recycled frames pay QEMU's code invalidation (perf of QEMU during
        # a restored run after a boot: page_collection_lock 3.4% of its
        # samples, 0% before; the restored runs slowed 1.5-1.8x, runc not).
        # Real hardware has no such cost. Each ratio is to the runc runs of
        # the same phase.
        for variant in variants:
            for i in range(a.runs + 1):
                for name in (variant, "runc"):
                    cid = f"{name}-{i}" if name != "runc" else f"runc-{i}-{variant}"
                    try:
                        first, total, w0, w1 = timed_run(cd, name, cid)
                    except RunFailed as e:
                        failures.add(name, f"{i}{' (warm-up)' if i == 0 else ''} ({variant} phase)", e)
                        cleanup_container(cd, cid)
                        continue
                    if i > 0:  # the first run of each is a warm-up
                        if name == "runc":
                            data["runc_in"][variant].append((first, total))
                        else:
                            data["times"][name].append((first, total))
                            walls.append((name, cid, w0, w1))
                    print(f"bench: ctr run {i}/{a.runs} ({variant} phase): {name} {total:.2f} s",
                          file=sys.stderr, flush=True)
        for name, pods in ([(v, 1) for v in variants] + [("runc", 1)]
                           + [(v, PODS) for v in variants if v in ("cocoon", "cocoon-eager")]):
            try:
                data["mem"][f"{name}/{pods}"] = pod_memory(cd, name, pods)
            except RunFailed as e:
                failures.add(name, f"pod PSS, {pods} pods", e)
                data["mem"][f"{name}/{pods}"] = (None, {})
        with open(f"{cd.cd_dir}/containerd.log", errors="replace") as f:
            log_lines = f.readlines()
    finally:
        cd.stop()
        os.unlink(cfg)
        os.unlink(boot_cfg)
        os.unlink(eager_cfg)
        shutil.rmtree(templates, ignore_errors=True)
    for name, cid, w0, w1 in walls:
        split = phases(log_lines, cid, w0, w1)
        if split:
            data["phases"][name].append(split)
        steps = start_steps(log_lines, cid)
        if steps:
            data["steps"][name].append(steps)
    data["load"] = os.getloadavg()[0]
    data["failures"] = failures.items
    return data


def merge(parts):
    """One phase's data per element (from separate test hosts) as one."""
    out = {"variants": [], "times": {}, "runc_in": {}, "mem": {}, "phases": {}, "steps": {},
           "failures": [], "runs": parts[0]["runs"] if parts else 0,
           "cpus": max((p["cpus"] for p in parts), default=0),
           "load": max((p["load"] for p in parts), default=0.0),
           "emulator": next((p["emulator"] for p in parts if p.get("emulator")), "")}
    for p in parts:
        out["variants"] += p["variants"]
        for k in ("times", "runc_in", "phases", "steps"):
            out[k].update(p[k])
        for k, v in p["mem"].items():
            # runc's pod is measured in every phase: the cocoon phase's counts.
            if k not in out["mem"] or "cocoon" in p["variants"]:
                out["mem"][k] = v
        out["failures"] += p["failures"]
    return out


def p95(xs):
    """Nearest-rank 95th percentile: the smallest value >= 95% of the runs."""
    xs = sorted(xs)
    return xs[math.ceil(0.95 * len(xs)) - 1] if xs else None


def report(data, missing=()):
    """Print the tables; exit 1 if a run failed or a phase is missing."""
    variants = data["variants"]
    times = dict(data["times"])
    runc_in = data["runc_in"]
    mem = {tuple(k.rsplit("/", 1)[:1]) + (int(k.rsplit("/", 1)[1]),): tuple(v)
           for k, v in data["mem"].items()}
    times["runc"] = runc_in.get("cocoon", next(iter(runc_in.values()), []))
    names = variants + ["runc"]
    first = {n: common.med(t[0] for t in times[n]) for n in names}
    exit_ = {n: common.med(t[1] for t in times[n]) for n in names}
    runc_first = {n: common.med(t[0] for t in v) for n, v in runc_in.items()}
    runc_exit = {n: common.med(t[1] for t in v) for n, v in runc_in.items()}

    def pss(name, pods=1):
        v = mem.get((name, pods), (None, {}))[0]
        return (v, 1 if v is not None else 0)

    where = f"; test host: {data['emulator']}" if data.get("emulator") else ""
    print()
    print(f"`ctr run --rm ... echo` ({data['runs']} runs each after a warm-up, alternating with runc; "
          f"medians with their number of runs (n); {data['cpus']} cpus, load {data['load']:.1f}{where}); "
          "cocoon: the pod's VM restored from a template VM, its RAM loaded as the guest touches "
          "it (the default); cocoon-eager: `template_memory = \"eager\"`, the memory image copied "
          "whole first; cocoon-boot: `template = false`, the pod's VM boots")
    print()
    print("| runtime | first output, median (s) | ctr exit, median (s) | ctr exit p95 (s) "
          f"| pod PSS, 1 pod (MiB) | pod PSS, {PODS} pods (MiB per pod) |")
    print("|---|---|---|---|---|---|")
    for n in names:
        q = p95(t[1] for t in times[n])
        q_s = f"{q:.3f} (n={len(times[n])})" if q is not None else "failed (n=0)"
        many = common.cell(pss(n, PODS), "{:.1f}", 1024.0) if (n, PODS) in mem else ""
        print(f"| {n} | {common.cell(first[n])} | {common.cell(exit_[n])} | {q_s} | "
              f"{common.cell(pss(n), '{:.1f}', 1024.0)} | {many} |")
    for n in variants:
        if n == "cocoon" and "cocoon" in runc_in:
            continue  # the runc row above
        q = p95(t[1] for t in runc_in[n])
        q_s = f"{q:.3f} (n={len(runc_in[n])})" if q is not None else "failed (n=0)"
        print(f"| runc ({n} phase) | {common.cell(runc_first[n])} | {common.cell(runc_exit[n])} | "
              f"{q_s} | | |")
    for n in variants:
        print(f"| {n}/runc | {common.ratio(first[n], runc_first[n])} | "
              f"{common.ratio(exit_[n], runc_exit[n])} | | "
              f"{common.ratio(pss(n), pss('runc'))} | |")
    print()
    print("- each cocoon variant alternates with runc in a phase of its own (in the test host: a "
          "test host of its own); its time ratios are to the runc runs of its phase (the runc row "
          "is the cocoon phase's). Under QEMU TCG a VM that booted leaves translated code on the "
          "host frames it used, and VMs after it pay QEMU's code invalidation when they write "
          "those frames, which real hardware does not")
    print("- p95: nearest rank (the smallest time that at least 95% of the runs did not exceed; with fewer "
          "than 20 runs that is the slowest run)")
    print(f"- pod PSS: `sleep` pods, measured once (n=1): the host processes of all pods summed and "
          f"divided by the pods; with {PODS} pods the binaries' pages are shared {PODS} ways")
    for variant in variants:
        split = data["phases"][variant]
        if split and exit_[variant][0]:
            print()
            print(f"Where a {variant} `ctr run --rm` goes (median of {len(split)} runs, from the "
                  "shim's log):")
            print()
            print("| phase | s | share |")
            print("|---|---|---|")
            total = exit_[variant][0]
            for k, (name, _) in enumerate(split[0]):
                m = statistics.median(p[k][1] for p in split)
                print(f"| {name} | {m:.3f} | {100 * m / total:.0f}% |")
        else:
            print(f"\n(no phase split for {variant}: the shim's log lines were not found in "
                  "containerd's log)")
        steps = data["steps"][variant]
        if steps:
            print()
            print(f"Of {variant}'s VM start (median of {len(steps)} runs, ms): " + ", ".join(
                f"{k} {statistics.median(s[k] for s in steps):.0f}" for k in steps[0]))
    print()
    print("Pod PSS by process (MiB per pod): " + "; ".join(
        f"{n}, {k} pod{'s' if k > 1 else ''}: "
        + ", ".join(f"{c} {v / 1024:.1f}" for c, v in sorted(parts.items()))
        for (n, k), (_, parts) in mem.items()))
    failures = common.Failures()
    failures.items = [tuple(f) for f in data["failures"]]
    for m in missing:
        failures.items.append((m, "all", "its phase produced no data (see the bench's output above)"))
    failures.report_and_exit()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm")
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--variant", action="append", choices=VARIANTS,
                    help="run this cocoon variant's phase (repeatable; default: all)")
    ap.add_argument("--results-json", action="store_true",
                    help="append the phase's data as one JSON line to $COCOON_TESTHOST_RESULTS "
                         "(run.sh --results) instead of printing the tables")
    ap.add_argument("--report", metavar="FILE",
                    help="print the tables from the JSON lines in FILE (one per phase)")
    ap.add_argument("--expect", action="append", choices=VARIANTS, default=[],
                    help="with --report: a variant whose phase must be there")
    a = ap.parse_args()
    if a.report:
        parts = []
        with open(a.report) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    parts.append(json.loads(line))
        data = merge(parts)
        report(data, missing=[v for v in a.expect if v not in data["variants"]])
        return
    for need in ("vmm", "kernel", "initrd"):
        if not getattr(a, need):
            ap.error(f"--{need} is required")
    data = measure(a, a.variant or VARIANTS)
    if a.results_json:
        path = os.environ.get("COCOON_TESTHOST_RESULTS")
        if not path:
            raise SystemExit("bench: --results-json needs $COCOON_TESTHOST_RESULTS (tests/testhost/run.sh --results)")
        with open(path, "a") as f:
            f.write(json.dumps(data) + "\n")
        sys.exit(1 if data["failures"] else 0)
    report(data)


if __name__ == "__main__":
    main()
