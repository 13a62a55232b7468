#!/usr/bin/env python3
"""Source mtimes that let a new checkout reuse the shared cargo outputs.

Cargo decides whether a workspace crate is fresh by comparing its sources'
mtimes with its outputs'. A fresh clone has every file dated "now", so it
would rebuild every workspace crate in every profile even when nothing
changed. This keeps, in the cache, a record of the checkout whose outputs
it holds: each tracked file's content hash and mtime, written once its
builds are done (`record`). A new checkout (`restore`) gives every file whose
content is the recorded one the recorded mtime, and every other file "now":
cargo then rebuilds exactly the crates whose sources differ, as it would in
one long-lived working tree.

The record is trusted only if it was made in this same directory (the
outputs name their checkout's path: `env!("CARGO_MANIFEST_DIR")`, the test
binaries' `CARGO_BIN_EXE_*`; cargo does not rebuild when only that path
changed) and no cargo output was written after it (a build after the record
may have used content the record does not describe, say an edit followed by
a plain `cargo build`); otherwise every file is dated "now", as if there
were no record.

  source-mtimes.py record CACHE     this checkout's files -> CACHE/.cocoon-sources
  source-mtimes.py restore CACHE    CACHE/.cocoon-sources -> this checkout's mtimes
"""
import hashlib
import os
import stat
import subprocess
import sys
import time

RECORD = ".cocoon-sources"


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def content_hash(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def regular(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


ROOT = "#root\t"


def here():
    return os.path.realpath(os.getcwd())


def record(cache):
    lines = [f"{ROOT}{here()}\n"]
    for path in tracked_files():
        st = regular(path)
        if st is not None:
            lines.append(f"{content_hash(path)}\t{st.st_mtime_ns}\t{path}\n")
    tmp = os.path.join(cache, RECORD + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, os.path.join(cache, RECORD))
    print(f"[cache] recorded {len(lines) - 1} source files for the next checkout")


def read_record(path):
    """(the directory the record was made in, {file: (digest, mtime)})."""
    root = None
    entries = {}
    with open(path) as f:
        for line in f:
            if line.startswith(ROOT):
                root = line[len(ROOT):].rstrip("\n")
                continue
            digest, mtime, name = line.rstrip("\n").split("\t", 2)
            entries[name] = (digest, int(mtime))
    return root, entries


def fingerprint_dirs(cache):
    """Cargo's `.fingerprint` directories in CACHE: at most four levels
    down (fuzz/<triple>/<profile>/.fingerprint)."""
    base = cache.rstrip("/").count("/")
    for root, dirs, _ in os.walk(cache):
        if os.path.basename(root) == ".fingerprint":
            dirs[:] = []
            yield root
        elif root.rstrip("/").count("/") - base >= 4:
            dirs[:] = []
        else:
            # Compiled outputs, not fingerprints: not worth the walk.
            dirs[:] = [d for d in dirs if d not in ("deps", "build", "incremental", "examples")]


def output_newer_than(cache, when_ns):
    """A fingerprint file cargo wrote after `when_ns`, or None."""
    for fp in fingerprint_dirs(cache):
        for root, _, files in os.walk(fp):
            for name in files:
                path = os.path.join(root, name)
                if os.lstat(path).st_mtime_ns > when_ns:
                    return path
    return None


def restore(cache):
    files = tracked_files()
    now = time.time_ns()
    rec_path = os.path.join(cache, RECORD)
    why = None
    entries = {}
    if not os.path.exists(rec_path):
        why = "no record of the cached build"
    else:
        newer = output_newer_than(cache, os.stat(rec_path).st_mtime_ns)
        root, recorded = read_record(rec_path)
        if root != here():
            why = f"the cached build was made in {root or 'an unknown directory'}, not here, and its outputs name that path"
        elif newer:
            why = f"a build ran after the record ({os.path.relpath(newer, cache)})"
        else:
            entries = recorded
    kept = 0
    for path in files:
        st = regular(path)
        if st is None:
            continue
        known = entries.get(path)
        if known and known[0] == content_hash(path):
            os.utime(path, ns=(known[1], known[1]), follow_symlinks=False)
            kept += 1
        else:
            os.utime(path, ns=(now, now), follow_symlinks=False)
    # A stale record must not be applied twice.
    if os.path.exists(rec_path):
        os.remove(rec_path)
    if why:
        print(f"[cache] {why}: rebuilding this checkout's crates, reusing the dependencies")
    else:
        print(f"[cache] {len(files) - kept} of {len(files)} source files differ from the cached build: "
              "cargo rebuilds only the crates they belong to")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "restore"):
        print("usage: source-mtimes.py record|restore CACHE", file=sys.stderr)
        sys.exit(2)
    cmd, cache = sys.argv[1], sys.argv[2]
    (record if cmd == "record" else restore)(cache)


if __name__ == "__main__":
    main()
