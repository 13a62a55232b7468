#!/usr/bin/env python3
"""CRI pod start and pod network throughput: cocoon vs runc, same run.

Starts containerd with its CRI plugin (tests/ctr/containerd.sh start-cri:
the `cocoon` and `runc` handlers, a CNI bridge network), then alternates
between the two handlers:

- pod start: `crictl runp` + `create` + `start` until the container's first
  log line is in `crictl logs` (what a kubelet waits for before a pod is
  "running"); one warm-up run each is not counted;
- TCP throughput host -> pod: the host sends MiB of zeros to a pod's
  busybox `nc -l` (which closes when it has read everything);
- TCP throughput pod -> pod: a second pod of the same handler pipes
  --p2p-mib MiB of zeros into `nc` to the first pod's IP, timed by busybox
  `time` inside it.

Prints markdown tables with medians (and their number of runs) and the
cocoon/runc ratios; a failed run is listed under the table and makes the
bench exit 1.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

REPO = common.REPO
BUSYBOX = "cocoon.local/e2e-test-images/busybox:1.29-2"
HANDLERS = ("cocoon", "runc")
STEP = 300
PHASES = ("runp", "create", "start", "log")


class RunFailed(Exception):
    """One run went wrong; the bench notes it and goes on."""


class Cri:
    def __init__(self, cfg, tools, images_tar):
        self.dir = f"/tmp/cocoon-bench-cri-{os.getpid()}"
        os.makedirs(self.dir, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(COCOON_CONFIG=cfg, COCOON_CRI_TOOLS=tools)
        if images_tar:
            self.env["COCOON_CRI_IMAGES_TAR"] = images_tar
        self.env["PATH"] = f"{REPO}/target/release:{self.env.get('PATH', '')}"
        self.cd = f"{self.dir}/containerd"
        self.crictl_bin = f"{tools}/crictl"
        subprocess.run([f"{REPO}/tests/ctr/containerd.sh", "start-cri", self.cd],
                       env=self.env, check=True)
        self.n = 0

    def crictl(self, *args):
        sock = f"unix://{self.cd}/containerd.sock"
        r = subprocess.run([self.crictl_bin, "--runtime-endpoint", sock, "--image-endpoint", sock,
                            "--timeout", "240s", *args], env=self.env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=STEP)
        if r.returncode != 0:
            raise RunFailed(f"crictl {' '.join(args[:2])}: {r.stderr.strip()[-300:]}")
        return r.stdout.strip()

    def write(self, name, obj):
        path = f"{self.dir}/{name}.json"
        with open(path, "w") as f:
            json.dump(obj, f)
        return path

    def pod(self, handler, script):
        """A pod of `handler` with one started container; (pod id,
        container id, start time), the time from runp to the container's
        first log line."""
        self.n += 1
        name = f"{handler}-{self.n}"
        logs = f"{self.dir}/logs/{name}"
        os.makedirs(logs, exist_ok=True)
        pod = self.write(f"{name}-pod", {
            "metadata": {"name": name, "namespace": "bench", "uid": f"{name}-uid", "attempt": 0},
            "log_directory": logs, "linux": {"cgroup_parent": f"/cocoon-bench-cri/{name}"}})
        ctr = self.write(f"{name}-ctr", {
            "metadata": {"name": name}, "image": {"image": BUSYBOX},
            "command": ["sh", "-c", script], "log_path": f"{name}.log"})
        t0 = time.monotonic()
        pod_id = self.crictl("runp", "--runtime", handler, pod)
        t1 = time.monotonic()
        try:
            ctr_id = self.crictl("create", pod_id, ctr, pod)
            t2 = time.monotonic()
            self.crictl("start", ctr_id)
            t3 = time.monotonic()
            while "ready" not in self.crictl("logs", ctr_id):
                if time.monotonic() - t0 > STEP:
                    raise RunFailed("no first log line within 300 s")
                time.sleep(0.05)
        except RunFailed:
            self.remove(pod_id)
            raise
        t4 = time.monotonic()
        self.phases = {"runp": t1 - t0, "create": t2 - t1, "start": t3 - t2, "log": t4 - t3}
        return pod_id, ctr_id, t4 - t0

    def ip(self, pod_id):
        return self.crictl("inspectp", "-o", "go-template", "--template",
                           "{{.status.network.ip}}", pod_id)

    def remove(self, pod_id):
        try:
            self.crictl("stopp", pod_id)
            self.crictl("rmp", pod_id)
        except RunFailed as e:
            print(f"bench: removing pod {pod_id}: {e}", file=sys.stderr)

    def stop(self):
        subprocess.run([f"{REPO}/tests/ctr/containerd.sh", "stop", self.cd], env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)


# The sink: `nc -l` reading from a FIFO that a `sleep` holds open, so that
# it never half-closes first (busybox nc ends a connection at either EOF),
# and closes once it has read the sender's EOF.
SINK = ("mkfifo /tmp/hold; sleep 1000000 >/tmp/hold & echo ready; "
        "while true; do nc -l -p 5001 </tmp/hold >/dev/null; done")


def host_to_pod(ip, mib):
    """MiB/s of `mib` MiB sent from here to the pod's sink."""
    deadline = time.monotonic() + 60
    while True:
        try:
            s = socket.create_connection((ip, 5001), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RunFailed(f"{ip}:5001 never accepted")
            time.sleep(0.2)
    buf = b"\0" * 65536
    t0 = time.monotonic()
    with s:
        s.settimeout(STEP)
        for _ in range(mib * 16):
            s.sendall(buf)
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            raise RunFailed("the sink answered")
    return mib / (time.monotonic() - t0)


def pod_to_pod(cri, client_ctr, ip, mib):
    """MiB/s of `mib` MiB piped from the client pod to the server pod."""
    out = subprocess.run(
        [cri.crictl_bin, "--runtime-endpoint", f"unix://{cri.cd}/containerd.sock", "exec", "-s",
         "--timeout", str(STEP), client_ctr, "sh", "-c",
         f"time sh -c 'head -c {mib * 1048576} /dev/zero | nc {ip} 5001' 2>&1"],
        env=cri.env, capture_output=True, text=True, timeout=STEP)
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        raise RunFailed(f"pod-to-pod transfer: {(out.stdout + out.stderr).strip()[-300:]}")
    return mib / (int(m.group(1)) * 60 + float(m.group(2)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--cri-tools", required=True, help="the directory of crictl")
    ap.add_argument("--images-tar", default="")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=64, help="host->pod MiB per run")
    # busybox `head | nc` between two nested TCG guests moves ~0.2 MiB/s.
    ap.add_argument("--p2p-mib", type=int, default=8, help="pod->pod MiB per run")
    ap.add_argument("--no-template", action="store_true",
                    help="cocoon's pods boot (`template = false`): to compare VMM builds whose "
                         "templates are not interchangeable")
    a = ap.parse_args()
    cfg = f"/tmp/cocoon-bench-cri-{os.getpid()}.toml"
    with open(cfg, "w") as f:
        f.write(f'kernel = "{a.kernel}"\ninitrd = "{a.initrd}"\nvmm = "{a.vmm}"\n'
                f'run_dir = "/run/cocoon-bench-cri-{os.getpid()}"\n'
                + ("template = false\n" if a.no_template else ""))
    failures = common.Failures()
    start = {h: [] for h in HANDLERS}
    h2p = {h: [] for h in HANDLERS}
    p2p = {h: [] for h in HANDLERS}
    phases = {h: {k: [] for k in PHASES} for h in HANDLERS}
    cri = Cri(cfg, a.cri_tools, a.images_tar)
    try:
        cri.crictl("pull", BUSYBOX)
        for i in range(a.runs + 1):
            for h in HANDLERS:
                pods = []
                try:
                    server, _, took = cri.pod(h, SINK)
                    pods.append(server)
                    if i > 0:
                        start[h].append(took)
                        for k in PHASES:
                            phases[h][k].append(cri.phases[k])
                    print(f"bench: cri run {i}/{a.runs}: {h} pod start {took:.2f} s",
                          file=sys.stderr, flush=True)
                    if i == 0:
                        continue
                    ip = cri.ip(server)
                    h2p[h].append(host_to_pod(ip, a.mib))
                    client, client_ctr, _ = cri.pod(h, "echo ready; sleep 1000000")
                    pods.append(client)
                    p2p[h].append(pod_to_pod(cri, client_ctr, ip, a.p2p_mib))
                    print(f"bench: cri run {i}/{a.runs}: {h} host->pod {h2p[h][-1]:.1f} MiB/s, "
                          f"pod->pod {p2p[h][-1]:.1f} MiB/s", file=sys.stderr, flush=True)
                except (RunFailed, subprocess.TimeoutExpired) as e:
                    failures.add(h, f"{i}{' (warm-up)' if i == 0 else ''}", e)
                finally:
                    for p in pods:
                        cri.remove(p)
    finally:
        cri.stop()
        os.unlink(cfg)

    med = {k: {h: common.med(v[h]) for h in HANDLERS} for k, v in
           (("start", start), ("h2p", h2p), ("p2p", p2p))}
    print()
    print(f"CRI pod start: `crictl runp` + `create` + `start` to the first log line ({a.runs} runs "
          f"each after a warm-up, alternating); medians with their number of runs (n); "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; VMM {a.vmm}"
          + ("; cocoon's pods boot (`template = false`)" if a.no_template else "")
          + (f"; test host: {os.environ['COCOON_TESTHOST_EMULATOR']}"
             if os.environ.get("COCOON_TESTHOST_EMULATOR") else ""))
    print()
    print("| handler | pod start (s) | host->pod MiB/s | pod->pod MiB/s |")
    print("|---|---|---|---|")
    for h in HANDLERS:
        print(f"| {h} | {common.cell(med['start'][h])} | {common.cell(med['h2p'][h], '{:.1f}')} | "
              f"{common.cell(med['p2p'][h], '{:.1f}')} |")
    print(f"| cocoon/runc | {common.ratio(med['start']['cocoon'], med['start']['runc'])} | "
          f"{common.ratio(med['h2p']['cocoon'], med['h2p']['runc'])} | "
          f"{common.ratio(med['p2p']['cocoon'], med['p2p']['runc'])} |")
    print()
    print("Where pod start goes (medians, s): `runp` (cocoon: the pod's VM boots, the agent "
          "answers, the TAP is wired to the CNI interface), `create`, `start`, then until the "
          "first log line is in `crictl logs`")
    print()
    print("| handler | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for h in HANDLERS:
        print(f"| {h} | " + " | ".join(common.cell(common.med(phases[h][k])) for k in PHASES) + " |")
    print()
    print(f"- throughput: {a.mib} MiB (host->pod) and {a.p2p_mib} MiB (pod->pod) of zeros over TCP "
          "to a busybox `nc -l` in the pod; host->pod "
          "timed by the sender here until the sink closed, pod->pod by busybox `time` in the "
          "sending pod; the CNI bridge in between (cocoon: + TAP, tc redirect, virtio-net)")
    failures.report_and_exit()


if __name__ == "__main__":
    main()
