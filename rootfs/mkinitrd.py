#!/usr/bin/env python3
"""Writes a reproducible initrd (cpio "newc", uncompressed) for the cocoon guest.

    rootfs/mkinitrd.py --init BINARY --out FILE [--add SRC:DEST ...]

The archive holds BINARY as /init, the directories the init mounts on, and
/dev/console (the kernel opens it before running /init; a missing one leaves
the init without stdout). Device nodes are written into the archive directly,
so no root privileges or mknod are needed. Timestamps are zero.
"""
import argparse
import os
import stat
import sys

DIRS = ["dev", "proc", "sys", "tmp", "run", "mnt", "etc"]


class Writer:
    def __init__(self, fh):
        self.fh = fh
        self.ino = 1

    def entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0,
        ]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.fh.write(hdr + name_b)
        self.fh.write(b"\0" * ((4 - (len(hdr) + len(name_b)) % 4) % 4))
        self.fh.write(data)
        self.fh.write(b"\0" * ((4 - len(data) % 4) % 4))

    def trailer(self):
        self.ino = 0
        self.entry("TRAILER!!!", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="static binary to run as /init")
    ap.add_argument("--out", required=True)
    ap.add_argument("--add", action="append", default=[], metavar="SRC:DEST",
                    help="extra file to include at DEST (absolute path in the guest)")
    args = ap.parse_args()

    def fail(msg):
        print(f"mkinitrd: {msg}", file=sys.stderr)
        sys.exit(2)

    def read(path, what):
        try:
            with open(path, "rb") as f:
                return f.read(), os.stat(path).st_mode
        except OSError as e:
            fail(f"cannot read {what} '{path}': {e.strerror}")

    init, _ = read(args.init, "init binary")
    if init[:4] != b"\x7fELF":
        fail(f"init binary '{args.init}' is not an ELF executable")

    extras = []
    for spec in args.add:
        src, sep, dest = spec.partition(":")
        if not sep or not dest.startswith("/") or ".." in dest.split("/"):
            fail(f"--add '{spec}': expected SRC:/ABSOLUTE/DEST without '..'")
        data, mode = read(src, "extra file")
        extras.append((dest.lstrip("/"), data, stat.S_IMODE(mode)))

    dirs = set(DIRS)
    for dest, _, _ in extras:
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))

    tmp = args.out + ".tmp"
    with open(tmp, "wb") as fh:
        w = Writer(fh)
        for d in sorted(dirs):
            w.entry(d, stat.S_IFDIR | 0o755, nlink=2)
        w.entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        w.entry("init", stat.S_IFREG | 0o755, init)
        for dest, data, mode in extras:
            w.entry(dest, stat.S_IFREG | mode, data)
        w.trailer()
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
