#!/usr/bin/env python3
"""What the VMM's jail and seccomp filters cost: on vs off, in one run.

1. Boot: cocoon-vmm boots the banner initrd jailed and filtered (what the
   shim runs) and with neither (`--seccomp off`, no `--jail`); time from
   starting the process to the banner, and the PSS of its process tree
   (monitor + VMM) one second later.
2. `ctr run --rm ... echo` through containerd and the shim, with the shim's
   defaults (vmm_jail = true, vmm_seccomp = "enforce") and with both off
   (a second config file, chosen per run with --runtime-config-path).

Runs alternate between on and off so machine noise hits both alike; the
first run of each is a warm-up. Prints a table with medians and ratios.
"""
import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402  (one_run of the boot bench)
import ctr  # noqa: E402  (the Containerd helper of the ctr bench)

JAIL_UID = 3_999_999_000


def tree(pid):
    return [pid] + ctr.children(pid)


def boot_once(cmd, jail_dir):
    if jail_dir:
        shutil.rmtree(jail_dir, ignore_errors=True)
        os.makedirs(jail_dir, mode=0o700)
        os.chown(jail_dir, JAIL_UID, JAIL_UID)
    # PSS of the whole tree: jailed, the VMM is the monitor's child.
    booted, pss = boot.one_run(cmd, 120, memory=lambda pid: sum(ctr.pss_kib(q) for q in tree(pid)))
    if booted is None:
        sys.exit(f"bench: {' '.join(cmd[:3])}... did not reach the banner")
    return booted, pss


def ctr_once(cd, cfg, cid):
    start = time.monotonic()
    r = cd.ctr("run", "--rm", "--runtime", ctr.RUNTIMES["cocoon"], "--runtime-config-path", cfg,
               ctr.IMAGE, cid, "echo", "hello", check=False)
    t = time.monotonic() - start
    if r.returncode != 0 or r.stdout != "hello\n":
        sys.exit(f"bench: ctr run {cid}: exit {r.returncode}, {r.stdout!r} {r.stderr.strip()}")
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True, help="the banner initrd")
    ap.add_argument("--agent-initrd", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    work = f"/tmp/cocoon-bench-jail-{os.getpid()}"
    os.makedirs(work)
    jail_dir = f"{work}/jail"
    base = [a.vmm, "--kernel", a.kernel, "--initrd", a.initrd, "--memory", "128",
            "--cmdline", "quiet cocoon.hold=3"]
    variants = {
        "on": (base + ["--jail", jail_dir, "--jail-uid", str(JAIL_UID),
                       "--jail-gid", str(JAIL_UID)], jail_dir),
        "off": (base + ["--seccomp", "off"], None),
    }
    boots = {k: [] for k in variants}
    try:
        for i in range(a.runs + 1):
            for name, (cmd, jd) in variants.items():
                t, pss = boot_once(cmd, jd)
                if i > 0:
                    boots[name].append((t, pss))
            print(f"bench: jail boot {i}/{a.runs}", file=sys.stderr, flush=True)

        cfgs = {}
        for name, extra in (("on", ""), ("off", 'vmm_jail = false\nvmm_seccomp = "off"\n')):
            cfgs[name] = f"{work}/{name}.toml"
            with open(cfgs[name], "w") as f:
                f.write(f'kernel = "{a.kernel}"\ninitrd = "{a.agent_initrd}"\nvmm = "{a.vmm}"\n'
                        f'run_dir = "/run/cocoon-bench-jail-{os.getpid()}"\n{extra}')
        cd = ctr.Containerd(repo, cfgs["on"])
        runs = {k: [] for k in cfgs}
        try:
            for i in range(a.runs + 1):
                for name, cfg in cfgs.items():
                    t = ctr_once(cd, cfg, f"jail-{name}-{i}")
                    if i > 0:
                        runs[name].append(t)
                print(f"bench: jail ctr run {i}/{a.runs}", file=sys.stderr, flush=True)
        finally:
            cd.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        return statistics.median(xs)

    b_on, b_off = med(t for t, _ in boots["on"]), med(t for t, _ in boots["off"])
    m_on, m_off = med(p for _, p in boots["on"]), med(p for _, p in boots["off"])
    c_on, c_off = med(runs["on"]), med(runs["off"])
    print()
    print(f"VMM jail + seccomp filters, on vs off ({a.runs} runs each, alternating, median; "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f})")
    print()
    def spread(xs):
        return f"{min(xs):.2f}–{max(xs):.2f}"

    bt = {k: [t for t, _ in v] for k, v in boots.items()}
    print("| metric | on | off | on/off | cost | on: min–max | off: min–max |")
    print("|---|---|---|---|---|---|---|")
    print(f"| VMM start to banner (s) | {b_on:.3f} | {b_off:.3f} | {b_on / b_off:.3f} | "
          f"{100 * (b_on / b_off - 1):+.1f}% | {spread(bt['on'])} | {spread(bt['off'])} |")
    print(f"| `ctr run --rm` (s) | {c_on:.3f} | {c_off:.3f} | {c_on / c_off:.3f} | "
          f"{100 * (c_on / c_off - 1):+.1f}% | {spread(runs['on'])} | {spread(runs['off'])} |")
    print(f"| VMM PSS, monitor + VMM (MiB) | {m_on / 1024:.1f} | {m_off / 1024:.1f} | "
          f"{m_on / m_off:.3f} | {(m_on - m_off) / 1024:+.1f} MiB | | |")


if __name__ == "__main__":
    main()
