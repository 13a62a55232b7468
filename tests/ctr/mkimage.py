#!/usr/bin/env python3
"""Builds a busybox OCI image tarball (for `ctr image import`) from the host's
static busybox, without any registry.

usage: mkimage.py --busybox /bin/busybox --name cocoon.local/busybox:latest --out FILE

Also the library criimages.py builds the CRI test images with: `Image`
(layers and config) and `oci_archive` (an OCI image layout tar holding any
number of named images, sharing equal blobs).
"""
import argparse
import hashlib
import io
import json
import tarfile

APPLETS = ["sh", "echo", "cat", "sleep", "ls", "env", "pwd", "touch", "true", "false",
           "tty", "stty", "id", "ps", "head", "wc", "dd", "mkdir", "rm", "grep", "kill",
           "hostname", "uname", "free", "seq", "tr", "httpd", "wget"]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


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


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Image:
    """One image: its name, its layers (uncompressed tars, lowest first) and
    the `config` part of its OCI config (Env, Entrypoint, Cmd, User, ...)."""

    def __init__(self, name, layers, config):
        self.name, self.layers, self.config = name, layers, config

    def blobs(self):
        """(manifest digest, {digest: bytes}) of this image."""
        blobs = {}

        def blob(data):
            d = digest(data)
            blobs[d] = data
            return d, len(data)

        ids = [blob(lay) for lay in self.layers]
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": [d for d, _ in ids]},
        }, sort_keys=True).encode()
        cd, cs = blob(config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": cd, "size": cs},
            "layers": [{"mediaType": LAYER, "digest": d, "size": s} for d, s in ids],
        }, sort_keys=True).encode()
        md, _ = blob(manifest)
        return md, blobs


def oci_archive(images):
    """An OCI image layout tar of `images`, each named in index.json the way
    `ctr image import` reads it (io.containerd.image.name)."""
    blobs, manifests = {}, []
    for im in images:
        md, b = im.blobs()
        blobs.update(b)
        manifests.append({
            "mediaType": MANIFEST, "digest": md, "size": len(b[md]),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": im.name,
                            "org.opencontainers.image.ref.name": im.name.rsplit(":", 1)[-1]},
        })
    index = json.dumps({"schemaVersion": 2, "manifests": manifests}, sort_keys=True).encode()

    def add(t):
        entry(t, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), mode=0o644)
        entry(t, "index.json", index, mode=0o644)
        entry(t, "blobs", kind=tarfile.DIRTYPE)
        entry(t, "blobs/sha256", kind=tarfile.DIRTYPE)
        for d, data in blobs.items():
            entry(t, "blobs/sha256/" + d.split(":")[1], data, mode=0o644)
    return tar_bytes(add)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--name", default="cocoon.local/busybox:latest")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.busybox, "rb") as f:
        lay = layer(f.read())
    image = Image(a.name, [lay], {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"})
    with open(a.out, "wb") as f:
        f.write(oci_archive([image]))


if __name__ == "__main__":
    main()
