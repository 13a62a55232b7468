#!/usr/bin/env python3
"""The images of the CRI tests (tests/ctr/containerd.sh start-cri), built
offline from Debian's busybox and two small C programs (images/pause.c,
images/nonewprivs.c), and their push to a local registry.

  criimages.py build --out FILE [--busybox PATH] [--cc cc]
      an OCI image layout tar holding every image, named (for
      `ctr -n k8s.io image import`); the busybox is by default the one
      `make deps` unpacks from Debian's busybox package into the cache (see
      default_busybox), with the shared libraries it needs
  criimages.py push --archive FILE --registry 127.0.0.1:PORT
      pushes the images named cocoon.local/REPO:TAG in FILE to the
      registry's REPO:TAG (the distribution registry's HTTP API: blobs, then
      the manifest)
  criimages.py critest-images
      critest's --test-images-file: its default and web server images by
      their local names

The images are stand-ins with what critest's tests use, not the upstream
images: busybox with every applet it has as hard links, and the shared
libraries it loads (plus `pgrep` and `ipcs -m` as small scripts when it
lacks them); a web server that is busybox httpd (the
`nginx` one also writes /var/run/nginx.pid and carries "nginx: master
process" on its command line, which critest's PID namespace tests look
for); a set-uid program printing its effective uid (no-new-privileges
tests); an image whose user belongs to a group of the image (supplemental
groups test); and the pod sandbox's pause image.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse

from mkimage import Image, digest, entry, oci_archive, tar_bytes

HERE = os.path.dirname(os.path.abspath(__file__))

# The images by the local names CRI pulls from our registry (containerd.sh
# points the cocoon.local host at it).
LOCAL_HOST = "cocoon.local"
PAUSE = f"{LOCAL_HOST}/pause:3.9"
BUSYBOX = f"{LOCAL_HOST}/e2e-test-images/busybox:1.29-2"
WEB_SERVER = f"{LOCAL_HOST}/e2e-test-images/nginx:1.14-2"
HTTPD_LOCAL = f"{LOCAL_HOST}/e2e-test-images/httpd:2.4.39-4"

# critest v1.26.1 names these images in its code, and no flag renames them
# (--test-images-file covers only the default and the web server image;
# --registry-prefix renames what it pulls but not what it creates
# containers from), so they are imported under these names, never pulled.
_E2E = "registry.k8s.io/e2e-test-images/"
_CRI_TOOLS = "gcr.io/k8s-staging-cri-tools/"
FIXED = {
    "nginx": _E2E + "nginx:1.14-2",                 # Security Context: PID namespaces
    "httpd": _E2E + "httpd:2.4.39-4",               # Multiple Containers
    "nonewprivs": _E2E + "nonewprivs:1.3",          # Security Context: NoNewPrivs
    "hostnet-nginx": _CRI_TOOLS + "hostnet-nginx-amd64:latest",  # Streaming: portforward in host network
    "predefined-group": _CRI_TOOLS + "test-image-predefined-group:latest",  # Security Context: SupplementalGroups
}

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = b"""root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
"""

# For a busybox without these applets.
PGREP = b"""#!/bin/sh
# pgrep PATTERN: the pids of the processes whose name contains PATTERN (a
# stand-in: this busybox has no pgrep).
found=1
for d in /proc/[0-9]*; do
  read -r name <"$d/comm" 2>/dev/null || continue
  case "$name" in *"$1"*) echo "${d#/proc/}"; found=0;; esac
done
exit $found
"""
IPCS = b"""#!/bin/sh
# ipcs [-m]: the System V shared memory segments, from /proc/sysvipc/shm (a
# stand-in: this busybox has no ipcs).
case "${1:--m}" in -m) ;; *) echo "ipcs: only -m here" >&2; exit 1;; esac
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
tail -n +2 /proc/sysvipc/shm 2>/dev/null | while read -r key shmid perms size _cpid _lpid nattch uid _rest; do
  printf '0x%08x %-10s %-10s %-10s %-10s %s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
"""
NGINX = b"""#!/bin/sh
# A stand-in for nginx: busybox httpd serving /usr/share/nginx/html on
# $NGINX_PORT (80), this script's pid in /var/run/nginx.pid (its process is
# named nginx). Its argument is a title, as nginx titles its master process:
# critest looks for "master process" in /proc/1/cmdline.
echo $$ >/var/run/nginx.pid
httpd -f -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html &
trap 'kill $! 2>/dev/null; exit 0' TERM INT QUIT
wait $!
"""
HTTPD_FOREGROUND = b"""#!/bin/sh
# A stand-in for the httpd image: busybox httpd on port 80, ended by SIGTERM.
# Apache logs its command line when it starts, and critest looks for it.
echo "httpd-foreground: busybox httpd on port 80, standing in for Apache's 'httpd -D FOREGROUND'" >&2
httpd -f -p 80 -h /usr/local/apache2/htdocs &
trap 'kill $! 2>/dev/null; exit 0' TERM INT QUIT
wait $!
"""
INDEX = b"<html><body><h1>It works!</h1></body></html>\n"


def default_busybox():
    """Debian's busybox (package `busybox`, unpacked by scripts/deps.sh into
    $COCOON_CACHE/busybox-deb/VERSION/): its shell runs commands from PATH,
    as the upstream busybox image's does. busybox-static's shell runs its
    applets in-process instead, so critest's MaskedPaths test (a masked
    /bin/ls must fail to run) cannot pass with it: the fallback, with a
    warning."""
    cache = os.environ.get("COCOON_CACHE", "/var/cache/cocoon")
    found = sorted(glob.glob(os.path.join(cache, "busybox-deb", "*", "busybox")))
    if found:
        return found[-1]
    fallback = shutil.which("busybox") or "/bin/busybox"
    print(f"criimages: no busybox under {cache}/busybox-deb (make deps puts Debian's there); using {fallback}, "
          "whose shell runs applets without exec'ing them: critest's MaskedPaths test will fail", file=sys.stderr)
    return fallback


def shared_libs(binary):
    """The shared libraries BINARY loads (ldd), the dynamic loader included,
    as (path in the image, path on this host); none for a static binary."""
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    libs = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            i = parts.index("=>")
            if i + 1 < len(parts) and parts[i + 1].startswith("/"):
                libs.append(parts[i + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the dynamic loader
    return [(p.lstrip("/"), os.path.realpath(p)) for p in libs]


def applets(busybox):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted(set(out.split()) - {"busybox"})


def base_layer(busybox_path):
    """busybox with every applet (hard links), the users and groups of the busybox image,
    and the directories the stand-ins write to."""
    with open(busybox_path, "rb") as f:
        busybox = f.read()
    names = applets(busybox_path)
    libs = shared_libs(busybox_path)
    lib_dirs = sorted({os.path.dirname(p) for p, _ in libs})

    def add(t):
        dirs = ["bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "usr/bin",
                "usr/sbin", "usr/local", "usr/local/bin", "var", "var/run", "var/www"]
        for d in lib_dirs:
            parts = d.split("/")
            dirs += ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for d in sorted(set(dirs), key=dirs.index):
            entry(t, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        for path, host_path in libs:
            with open(host_path, "rb") as f:
                entry(t, path, f.read())
        entry(t, "bin/busybox", busybox)
        # Hard links, as in the busybox image: a masked path (a bind mount
        # of /dev/null over /bin/ls) must hide that applet, not busybox.
        for a in names:
            entry(t, f"bin/{a}", kind=tarfile.LNKTYPE, link="bin/busybox")
        for a, script in (("pgrep", PGREP), ("ipcs", IPCS)):
            if a not in names:
                entry(t, f"bin/{a}", script)
        entry(t, "etc/passwd", PASSWD, mode=0o644)
        entry(t, "etc/group", GROUP, mode=0o644)
        entry(t, "etc/hosts", b"127.0.0.1 localhost\n", mode=0o644)
        entry(t, "etc/resolv.conf", b"", mode=0o644)
    return tar_bytes(add)


def files_layer(files):
    """A layer of FILES: (path, bytes or None for a directory, mode)."""
    def add(t):
        for path, data, mode in files:
            if data is None:
                entry(t, path, kind=tarfile.DIRTYPE, mode=mode)
            else:
                entry(t, path, data, mode=mode)
    return tar_bytes(add)


def compile_static(cc, source):
    """SOURCE (a file in images/) linked statically and stripped."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "a.out")
        subprocess.run([cc, "-static", "-Os", "-s", "-Wl,--build-id=none", "-o", out,
                        os.path.join(HERE, "images", source)], check=True)
        with open(out, "rb") as f:
            return f.read()


def images(busybox, cc):
    base = base_layer(busybox)
    html = files_layer([("usr/share", None, 0o755), ("usr/share/nginx", None, 0o755),
                        ("usr/share/nginx/html", None, 0o755),
                        ("usr/share/nginx/html/index.html", INDEX, 0o644),
                        ("usr/sbin/nginx", NGINX, 0o755)])
    httpd = files_layer([("usr/local/apache2", None, 0o755), ("usr/local/apache2/htdocs", None, 0o755),
                         ("usr/local/apache2/htdocs/index.html", INDEX, 0o644),
                         ("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755)])
    group = files_layer([
        ("etc/passwd", PASSWD + b"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n", 0o644),
        ("etc/group", GROUP + b"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n", 0o644),
        ("home/default-user", None, 0o755)])
    nnp = files_layer([("usr/local/bin/nnp", compile_static(cc, "nonewprivs.c"), 0o4755)])
    pause = files_layer([("pause", compile_static(cc, "pause.c"), 0o755)])

    shell = {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"}

    def nginx(port):
        return {"Env": [PATH_ENV, f"NGINX_PORT={port}"], "Entrypoint": ["/usr/sbin/nginx"],
                "Cmd": ["nginx: master process"], "ExposedPorts": {f"{port}/tcp": {}},
                "StopSignal": "SIGTERM", "WorkingDir": "/"}
    web = nginx(80)
    httpd_config = {"Env": [PATH_ENV], "Cmd": ["httpd-foreground"], "ExposedPorts": {"80/tcp": {}},
                    "WorkingDir": "/"}
    return [
        Image(PAUSE, [pause], {"Env": [PATH_ENV], "Entrypoint": ["/pause"], "WorkingDir": "/"}),
        Image(BUSYBOX, [base], shell),
        Image(WEB_SERVER, [base, html], web),
        Image(HTTPD_LOCAL, [base, httpd], httpd_config),
        Image(FIXED["nginx"], [base, html], web),
        Image(FIXED["httpd"], [base, httpd], httpd_config),
        Image(FIXED["hostnet-nginx"], [base, html], nginx(12003)),
        Image(FIXED["nonewprivs"], [base, nnp], {"Env": [PATH_ENV], "Entrypoint": ["/usr/local/bin/nnp"],
                                                 "WorkingDir": "/"}),
        Image(FIXED["predefined-group"], [base, group], dict(shell, User="1000")),
    ]


def split_ref(ref):
    """'a/b:tag' -> ('a/b', 'tag'); no tag: 'latest'."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def read_archive(path):
    """(index.json, {digest: bytes}) of an OCI image layout tar."""
    blobs, index = {}, None
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if not m.isfile():
                continue
            data = t.extractfile(m).read()
            if m.name == "index.json":
                index = json.loads(data)
            elif m.name.startswith("blobs/sha256/"):
                blobs["sha256:" + m.name.rsplit("/", 1)[1]] = data
    if index is None:
        raise ValueError(f"{path}: no index.json")
    return index, blobs


class RegistryError(Exception):
    pass


class Registry:
    """The distribution registry's HTTP API (v2), plain HTTP, no auth."""

    def __init__(self, address, timeout=60):
        self.address, self.timeout = address, timeout

    def request(self, method, url, body=None, headers=None):
        conn = http.client.HTTPConnection(self.address, timeout=self.timeout)
        try:
            conn.request(method, url, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def push_blob(self, repo, d, data):
        """Uploads a blob unless the repository has it; True when uploaded."""
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{d}")
        if status == 200:
            return False
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/",
                                             headers={"Content-Length": "0"})
        location = {k.lower(): v for k, v in headers.items()}.get("location")
        if status != 202 or not location:
            raise RegistryError(f"starting the upload of {d} to {repo}: HTTP {status} {body[:200]!r}")
        u = urllib.parse.urlsplit(urllib.parse.urljoin(f"http://{self.address}/", location))
        query = (u.query + "&" if u.query else "") + urllib.parse.urlencode({"digest": d})
        status, _, body = self.request("PUT", f"{u.path}?{query}", body=data, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            raise RegistryError(f"uploading {d} to {repo}: HTTP {status} {body[:200]!r}")
        return True

    def push_manifest(self, repo, tag, media_type, data):
        status, _, body = self.request("PUT", f"/v2/{repo}/manifests/{tag}", body=data, headers={
            "Content-Type": media_type, "Content-Length": str(len(data))})
        if status != 201:
            raise RegistryError(f"putting the manifest {repo}:{tag}: HTTP {status} {body[:200]!r}")


def push(archive, registry, host=LOCAL_HOST, log=print):
    """Pushes the images of ARCHIVE named HOST/REPO:TAG to REGISTRY's REPO:TAG;
    returns the references pushed."""
    index, blobs = read_archive(archive)
    reg = Registry(registry)
    pushed = []
    for m in index["manifests"]:
        name = m.get("annotations", {}).get("io.containerd.image.name", "")
        if not name.startswith(host + "/"):
            continue
        repo, tag = split_ref(name[len(host) + 1:])
        manifest = json.loads(blobs[m["digest"]])
        for desc in [manifest["config"]] + manifest["layers"]:
            data = blobs[desc["digest"]]
            if digest(data) != desc["digest"]:
                raise ValueError(f"{archive}: blob {desc['digest']} does not match its digest")
            reg.push_blob(repo, desc["digest"], data)
        reg.push_manifest(repo, tag, m["mediaType"], blobs[m["digest"]])
        log(f"pushed {name} as {registry}/{repo}:{tag}")
        pushed.append(name)
    return pushed


def critest_images():
    return f"defaultTestContainerImage: {BUSYBOX}\nwebServerTestImage: {WEB_SERVER}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--busybox", default=None, help="default: default_busybox()")
    b.add_argument("--cc", default="cc")
    p = sub.add_parser("push")
    p.add_argument("--archive", required=True)
    p.add_argument("--registry", required=True)
    sub.add_parser("critest-images")
    a = ap.parse_args()
    if a.cmd == "build":
        data = oci_archive(images(a.busybox or default_busybox(), a.cc))
        tmp = a.out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, a.out)
    elif a.cmd == "push":
        try:
            push(a.archive, a.registry, log=lambda s: print(f"[criimages] {s}", file=sys.stderr))
        except (OSError, RegistryError) as e:
            sys.exit(f"criimages: push to {a.registry} failed: {e}")
    else:
        sys.stdout.write(critest_images())


if __name__ == "__main__":
    main()
