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
first run of each is a warm-up. Prints a table with medians (and their
number of runs) and ratios; a failed run is listed under the table and makes
the bench exit 1.
"""
import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402  (one_run_detail of the boot bench)
import common  # noqa: E402
import ctr  # noqa: E402  (the Containerd helper of the ctr bench)

JAIL_UID = 3_999_999_000


def boot_once(cmd, jail_dir):
    """(seconds to the banner, PSS KiB of the tree) or raise ctr.RunFailed."""
    if jail_dir:
        shutil.rmtree(jail_dir, ignore_errors=True)
        os.makedirs(jail_dir, mode=0o700)
        os.chown(jail_dir, JAIL_UID, JAIL_UID)
    # PSS of the whole tree: jailed, the VMM is the monitor's child.
    booted, mem, why = boot.one_run_detail(cmd, 120)
    if why:
        raise ctr.RunFailed(why)
    return booted, mem["pss"]


def ctr_once(cd, cfg, cid):
    start = time.monotonic()
    r = cd.ctr("run", "--rm", "--runtime", ctr.RUNTIMES["cocoon"][0], "--runtime-config-path", cfg,
               ctr.IMAGE, cid, "echo", "hello", check=False)
    t = time.monotonic() - start
    if r.returncode != 0 or r.stdout != "hello\n":
        ctr.cleanup_container(cd, cid)
        raise ctr.RunFailed(f"ctr exit {r.returncode}, {r.stdout!r} {r.stderr.strip()[-300:]}")
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
    failures = common.Failures()
    try:
        for i in range(a.runs + 1):
            for name, (cmd, jd) in variants.items():
                try:
                    t, pss = boot_once(cmd, jd)
                except ctr.RunFailed as e:
                    failures.add(f"boot, {name}", f"{i}{' (warm-up)' if i == 0 else ''}", e)
                    continue
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
                    try:
                        t = ctr_once(cd, cfg, f"jail-{name}-{i}")
                    except ctr.RunFailed as e:
                        failures.add(f"ctr run, {name}", f"{i}{' (warm-up)' if i == 0 else ''}", e)
                        continue
                    if i > 0:
                        runs[name].append(t)
                print(f"bench: jail ctr run {i}/{a.runs}", file=sys.stderr, flush=True)
        finally:
            cd.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bt = {k: [t for t, _ in v] for k, v in boots.items()}
    bm = {k: [p for _, p in v] for k, v in boots.items()}
    print()
    print(f"VMM jail + seccomp filters, on vs off ({a.runs} runs each after a warm-up, "
          f"alternating; medians with their number of runs (n); "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f})")
    print()

    def spread(xs):
        return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "n/a"

    def row(label, on, off, fmt="{:.3f}", scale=1.0, unit="", spreads=True):
        m_on, m_off = common.med(on), common.med(off)
        if m_on[0] is not None and m_off[0]:
            r = f"{m_on[0] / m_off[0]:.3f}"
            cost = (f"{(m_on[0] - m_off[0]) / scale:+.1f}{unit}" if unit
                    else f"{100 * (m_on[0] / m_off[0] - 1):+.1f}%")
        else:
            r = cost = "n/a"
        tail = f" {spread(on)} | {spread(off)} |" if spreads else " | |"
        print(f"| {label} | {common.cell(m_on, fmt, scale)} | {common.cell(m_off, fmt, scale)} | "
              f"{r} | {cost} |{tail}")

    print("| metric | on | off | on/off | cost | on: min–max | off: min–max |")
    print("|---|---|---|---|---|---|---|")
    row("VMM start to banner (s)", bt["on"], bt["off"])
    row("`ctr run --rm` (s)", runs["on"], runs["off"])
    row("VMM PSS, monitor + VMM (MiB)", bm["on"], bm["off"], "{:.1f}", 1024.0, " MiB",
        spreads=False)
    failures.report_and_exit()

if __name__ == "__main__":
    main()
