#!/usr/bin/env python3
"""Removes the iptables rules and chains the CNI plugins made for one CNI
network (tests/ctr/containerd.sh stop, CRI mode), for pods that were not
torn down through CNI (a killed containerd, a failed test).

  cninet.py cleanup --network NAME [--dry-run]

The bridge plugin (ipMasq) and the portmap plugin mark every rule they add
for a pod with a comment naming the network (`name: "NAME" id: "..."`):
those rules go, with the per-pod chains they jump to (CNI-*, CNI-DN-*, ...).
portmap's shared chains (CNI-HOSTPORT-*) go too once no pod of any network
has a port mapping left in them (portmap makes them again when needed).
Rules of other networks and of anything else are left alone.
"""
import argparse
import re
import shlex
import subprocess
import sys

TABLES = ("nat", "filter", "mangle")
SHARED_PREFIX = "CNI-HOSTPORT-"


def parse_save(text):
    """iptables-save output of one table -> (table, chains, rules), rules a
    list of (chain, [args...]) in order."""
    table, chains, rules = None, [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            args = shlex.split(line)
            rules.append((args[1], args[2:]))
    return table, chains, rules


def arg_after(args, flag):
    for i, a in enumerate(args[:-1]):
        if a == flag:
            return args[i + 1]
    return None


def is_ours(args, network):
    comment = arg_after(args, "--comment")
    return comment is not None and re.search(r'(^|\s)name: "%s"( |$)' % re.escape(network), comment) is not None


def cleanup_commands(text, network):
    """The iptables argument lists (after `iptables -w`) that remove what the
    CNI plugins left for NETWORK in the table of TEXT (iptables-save -t T)."""
    table, chains, rules = parse_save(text)
    if table is None:
        return []
    t = ["-t", table]
    ours = [(c, a) for c, a in rules if is_ours(a, network)]
    own_chains = []
    for _, a in ours:
        target = arg_after(a, "-j")
        if target and target.startswith("CNI-") and not target.startswith(SHARED_PREFIX) \
                and target in chains and target not in own_chains:
            own_chains.append(target)
    cmds, gone = [], set()
    for c, a in rules:
        if c in own_chains:
            continue  # flushed with its chain
        if is_ours(a, network) or arg_after(a, "-j") in own_chains:
            cmds.append(t + ["-D", c] + a)
            gone.add(id(a))
    for c in own_chains:
        cmds.append(t + ["-F", c])
    for c in own_chains:
        cmds.append(t + ["-X", c])

    # portmap's shared chains, once no other pod's mapping is in them.
    shared = [c for c in chains if c.startswith(SHARED_PREFIX)]
    left = [(c, a) for c, a in rules if c not in own_chains and id(a) not in gone]
    mappings = [a for c, a in left if c.startswith(SHARED_PREFIX)
                and (arg_after(a, "-j") or "").startswith("CNI-")
                and not (arg_after(a, "-j") or "").startswith(SHARED_PREFIX)]
    if shared and not mappings:
        for c, a in left:
            if c not in shared and arg_after(a, "-j") in shared:
                cmds.append(t + ["-D", c] + a)
        for c in shared:
            cmds.append(t + ["-F", c])
        for c in shared:
            cmds.append(t + ["-X", c])
    return cmds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cleanup")
    c.add_argument("--network", required=True)
    c.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    failed = 0
    for table in TABLES:
        r = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True)
        if r.returncode != 0:
            continue  # no such table, or no iptables at all: nothing of ours there
        for cmd in cleanup_commands(r.stdout, a.network):
            if a.dry_run:
                print("iptables -w " + shlex.join(cmd))
                continue
            r = subprocess.run(["iptables", "-w"] + cmd, capture_output=True, text=True)
            if r.returncode != 0:
                failed += 1
                print(f"cninet: iptables {shlex.join(cmd)}: {r.stderr.strip()}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
