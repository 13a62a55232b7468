"""What the benches share: the peers' paths and command lines, memory of a
process tree, medians that say how many runs they are over, and the record
of failed runs (which peer, which run, why) that makes a bench exit non-zero.
"""
import json
import os
import re
import statistics
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# cocoon-vmm puts this base in front of --cmdline (vmm/src/cmdline.rs); the
# peers get it as their whole command line so that all boot the same way.
_FALLBACK_BASE = ("console=ttyS0 reboot=k panic=-1 nomodule 8250.nr_uarts=1 "
                  "i8042.noaux i8042.nomux swiotlb=noforce")


def base_cmdline():
    """cocoon-vmm's built-in base command line, read from its source."""
    try:
        with open(os.path.join(REPO, "vmm", "src", "cmdline.rs")) as f:
            src = f.read()
    except OSError:
        return _FALLBACK_BASE
    m = re.search(r'pub const BASE_CMDLINE: &str = "(.*?)";', src, re.S)
    if not m:
        return _FALLBACK_BASE
    return re.sub(r"\\\n\s*", "", m.group(1))


BASE_CMDLINE = base_cmdline()

# Firecracker's gnu build compiles in upstream's allow-all seccomp policy
# (official releases are musl builds with strict filters).
FIRECRACKER_NOTE = ("firecracker: v1.16.1 gnu build, run with its default seccomp filter, "
                    "which for this build allows every syscall (official musl releases "
                    "filter strictly; cocoon-vmm runs its own per-thread filters, "
                    "--seccomp enforce)")


def firecracker_default():
    return os.environ.get("COCOON_BENCH_FIRECRACKER") or os.path.normpath(
        os.path.join(REPO, "..", "shared", "peers", "firecracker"))


def missing(path, what):
    """Why the peer binary at path cannot run, or None."""
    if not path:
        return f"{what}: not found (not on PATH) — skipped"
    if not os.path.isfile(path):
        return f"{what}: not found at {path} — skipped"
    if not os.access(path, os.X_OK):
        return f"{what}: not executable at {path} — skipped"
    return None


def firecracker_cmd(binary, workdir, name, kernel, initrd, boot_args, vcpus, memory_mib,
                    vsock_uds=None, cid=3):
    """Write workdir/name.json and return the command that boots it.

    --no-api: no API socket, the VM starts from the config file. The log goes
    to a file, so stdout carries only the guest's serial console. A vsock
    socket path must not exist yet (Firecracker binds it itself)."""
    cfg = {
        "boot-source": {"kernel_image_path": kernel, "initrd_path": initrd,
                        "boot_args": boot_args},
        "drives": [],
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": memory_mib},
    }
    if vsock_uds:
        if os.path.exists(vsock_uds):
            os.unlink(vsock_uds)
        cfg["vsock"] = {"guest_cid": cid, "uds_path": vsock_uds}
    path = os.path.join(workdir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    log = os.path.join(workdir, f"{name}.log")
    if os.path.exists(log):
        os.unlink(log)
    return [binary, "--no-api", "--config-file", path, "--log-path", log, "--id", name]


def firecracker_log_tail(cmd, n=3):
    """The last lines of the log a firecracker_cmd() writes, for a failure."""
    try:
        log = cmd[cmd.index("--log-path") + 1]
        with open(log, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-n:])
    except (ValueError, IndexError, OSError):
        return ""


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


def _field_kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def pss_kib(pid):
    """Pss of one process (smaps_rollup), 0 when it is gone."""
    return _field_kib(f"/proc/{pid}/smaps_rollup", "Pss:") or 0


def tree_memory(pid):
    """{"pss": KiB, "rss": KiB, "procs": n} summed over pid and its
    descendants, or None when pid is gone."""
    pss = _field_kib(f"/proc/{pid}/smaps_rollup", "Pss:")
    rss = _field_kib(f"/proc/{pid}/status", "VmRSS:")
    if pss is None or rss is None:
        return None
    procs = 1
    for c in children(pid):
        cp = _field_kib(f"/proc/{c}/smaps_rollup", "Pss:")
        cr = _field_kib(f"/proc/{c}/status", "VmRSS:")
        if cp is not None and cr is not None:
            pss, rss, procs = pss + cp, rss + cr, procs + 1
    return {"pss": pss, "rss": rss, "procs": procs}


def med(values):
    """(median, n) of the values that are not None; (None, 0) for none."""
    v = [x for x in values if x is not None]
    return (statistics.median(v), len(v)) if v else (None, 0)


def cell(m, fmt="{:.3f}", scale=1.0):
    """A median with its n, e.g. '0.512 (n=5)'."""
    value, n = m
    return f"{fmt.format(value / scale)} (n={n})" if value is not None else "failed (n=0)"


def ratio(a, b):
    return f"{a[0] / b[0]:.2f}" if a[0] is not None and b[0] else "n/a"


def row(cells):
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def rule(ncols):
    return "|" + "---|" * ncols


def rotate(items, i):
    """items, starting at the i-th: run i of an alternating bench starts with
    a different peer each time, so no peer always runs first or last."""
    k = i % len(items) if items else 0
    return items[k:] + items[:k]


class Failures:
    """Failed runs, reported under the table; any makes the bench exit 1."""

    def __init__(self):
        self.items = []

    def add(self, peer, run, reason):
        reason = " ".join(str(reason).split())
        self.items.append((peer, run, reason))
        print(f"bench: {peer} run {run} FAILED: {reason}", file=sys.stderr, flush=True)

    def report_and_exit(self, skipped=()):
        """Print the skipped peers and the failed runs; exit 1 on a failure."""
        for s in skipped:
            print(f"- {s}")
        if self.items:
            print(f"- {len(self.items)} failed run(s), not in the medians:")
            for peer, run, reason in self.items:
                print(f"  - {peer}, run {run}: {reason}")
            sys.stdout.flush()
            sys.exit(1)
