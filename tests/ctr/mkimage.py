#!/usr/bin/env python3
"""Builds a busybox OCI image tarball (for `ctr image import`) from the host's
static busybox, without any registry.

usage: mkimage.py --busybox /bin/busybox --name cocoon.local/busybox:latest --out FILE
"""
import argparse
import hashlib
import io
import json
import tarfile

APPLETS = ["sh", "echo", "cat", "sleep", "ls", "env", "pwd", "touch", "true", "false",
           "tty", "stty", "id", "ps", "head", "wc", "dd", "mkdir", "rm", "grep", "kill",
           "hostname", "uname", "free", "seq", "tr", "httpd", "wget"]


def tar_bytes(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    return buf.getvalue()


def entry(t, name, data=None, mode=0o755, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.type, ti.linkname, ti.mtime = mode, kind, link, 0
    if data is not None:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)


def layer(busybox):
    def add(t):
        for d in ["bin", "dev", "etc", "proc", "root", "sys", "tmp"]:
            entry(t, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        entry(t, "bin/busybox", busybox)
        for a in APPLETS:
            entry(t, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox")
        entry(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        entry(t, "etc/group", b"root:x:0:\n", mode=0o644)
        entry(t, "etc/hosts", b"127.0.0.1 localhost\n", mode=0o644)
        entry(t, "etc/resolv.conf", b"", mode=0o644)
    return tar_bytes(add)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--name", default="cocoon.local/busybox:latest")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    blobs = {}

    def blob(data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d, len(data)

    lay = layer(open(a.busybox, "rb").read())
    ld, ls = blob(lay)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [ld]},
    }, sort_keys=True).encode()
    cd, cs = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    }, sort_keys=True).encode()
    md, ms = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": a.name,
                            "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()

    def add(t):
        entry(t, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), mode=0o644)
        entry(t, "index.json", index, mode=0o644)
        entry(t, "blobs", kind=tarfile.DIRTYPE)
        entry(t, "blobs/sha256", kind=tarfile.DIRTYPE)
        for d, data in blobs.items():
            entry(t, "blobs/sha256/" + d.split(":")[1], data, mode=0o644)
    with open(a.out, "wb") as f:
        f.write(tar_bytes(add))


if __name__ == "__main__":
    main()
