"""criimages.py: the CRI test images and their push to a registry (a fake
registry in this process speaking the distribution HTTP API)."""
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import unittest
import urllib.parse

import criimages
import mkimage

BUSYBOX = criimages.default_busybox()
DEBIAN_BUSYBOX = "/busybox-deb/" in BUSYBOX


def layer_files(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


@unittest.skipUnless(os.path.exists(BUSYBOX) and shutil.which("cc"), "needs busybox and cc")
class Images(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.archive = os.path.join(cls.tmp, "images.tar")
        cls.data = mkimage.oci_archive(criimages.images(BUSYBOX, "cc"))
        with open(cls.archive, "wb") as f:
            f.write(cls.data)
        cls.index, cls.blobs = criimages.read_archive(cls.archive)
        cls.by_name = {}
        for m in cls.index["manifests"]:
            manifest = json.loads(cls.blobs[m["digest"]])
            config = json.loads(cls.blobs[manifest["config"]["digest"]])
            cls.by_name[m["annotations"]["io.containerd.image.name"]] = (manifest, config)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def files(self, name):
        manifest, _ = self.by_name[name]
        out = {}
        for lay in manifest["layers"]:
            out.update(layer_files(self.blobs[lay["digest"]]))
        return out

    def test_every_image_critest_and_the_pause_image_need(self):
        want = {criimages.PAUSE, criimages.BUSYBOX, criimages.WEB_SERVER, criimages.HTTPD_LOCAL,
                *criimages.FIXED.values()}
        self.assertEqual(set(self.by_name), want)

    def test_reproducible(self):
        again = mkimage.oci_archive(criimages.images(BUSYBOX, "cc"))
        self.assertEqual(hashlib.sha256(again).hexdigest(), hashlib.sha256(self.data).hexdigest())

    def test_blobs_match_their_digests_and_configs_their_layers(self):
        for d, data in self.blobs.items():
            self.assertEqual(mkimage.digest(data), d)
        for name, (manifest, config) in self.by_name.items():
            self.assertEqual(config["rootfs"]["diff_ids"], [lay["digest"] for lay in manifest["layers"]], name)

    def test_busybox_has_the_commands_critest_runs(self):
        files = self.files(criimages.BUSYBOX)
        for cmd in ["sh", "top", "sleep", "cat", "echo", "id", "hostname", "netstat", "pidof",
                    "pgrep", "ipcs", "ls", "touch", "mount", "mkdir", "grep", "nc", "wget"]:
            self.assertIn(f"bin/{cmd}", files, cmd)
        self.assertTrue(files["bin/ls"].islnk() and files["bin/ls"].linkname == "bin/busybox")
        passwd = self.file_text(criimages.BUSYBOX, "etc/passwd")
        self.assertIn("nobody:x:65534:65534:", passwd)

    def file_text(self, image, path):
        manifest, _ = self.by_name[image]
        text = None
        for lay in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(self.blobs[lay["digest"]])) as t:
                if path in t.getnames():
                    text = t.extractfile(path).read().decode()
        return text

    @unittest.skipUnless(DEBIAN_BUSYBOX, "make deps unpacks Debian's busybox into the cache")
    def test_the_shell_execs_commands_and_has_its_libraries(self):
        # critest's MaskedPaths test needs `sh -c ls` to exec /bin/ls.
        r = subprocess.run([BUSYBOX, "sh", "-c", "PATH=/nonexistent; ls /"], capture_output=True)
        self.assertNotEqual(r.returncode, 0)
        files = self.files(criimages.BUSYBOX)
        for path, _ in criimages.shared_libs(BUSYBOX):
            self.assertTrue(files[path].isfile(), path)
        self.assertIn("lib64/ld-linux-x86-64.so.2", files)

    def test_shared_libs_of_a_static_binary(self):
        static = os.path.join(self.tmp, "static")
        with open(static, "wb") as f:
            f.write(criimages.compile_static("cc", "pause.c"))
        self.assertEqual(criimages.shared_libs(static), [])

    def test_web_servers(self):
        for name, port in [(criimages.WEB_SERVER, 80), (criimages.FIXED["nginx"], 80),
                           (criimages.FIXED["hostnet-nginx"], 12003)]:
            _, config = self.by_name[name]
            self.assertIn(f"NGINX_PORT={port}", config["config"]["Env"], name)
            self.assertEqual(config["config"]["Entrypoint"], ["/usr/sbin/nginx"])
            self.assertIn("master process", " ".join(config["config"]["Cmd"]))
            files = self.files(name)
            self.assertIn("usr/share/nginx/html/index.html", files)
            self.assertIn("var/run", files)
        self.assertIn("usr/local/apache2/htdocs/index.html", self.files(criimages.FIXED["httpd"]))
        # critest's multi-container test waits for Apache's start-up line.
        self.assertIn("httpd -D FOREGROUND",
                      self.file_text(criimages.FIXED["httpd"], "usr/local/bin/httpd-foreground"))

    def test_nonewprivs_is_setuid_root(self):
        m = self.files(criimages.FIXED["nonewprivs"])["usr/local/bin/nnp"]
        self.assertEqual((m.mode & 0o7777, m.uid), (0o4755, 0))

    def test_predefined_group_image(self):
        name = criimages.FIXED["predefined-group"]
        self.assertEqual(self.by_name[name][1]["config"]["User"], "1000")
        self.assertIn("group-defined-in-image:x:50000:default-user", self.file_text(name, "etc/group"))

    def test_pause_has_a_path_and_only_its_binary(self):
        _, config = self.by_name[criimages.PAUSE]
        self.assertEqual(config["config"]["Entrypoint"], ["/pause"])
        self.assertTrue(any(e.startswith("PATH=") for e in config["config"]["Env"]))
        self.assertEqual(set(self.files(criimages.PAUSE)), {"pause"})

    def test_push_sends_blobs_then_manifests_of_local_images_only(self):
        registry = FakeRegistry()
        try:
            pushed = criimages.push(self.archive, registry.address, log=lambda s: None)
        finally:
            registry.close()
        self.assertEqual(sorted(pushed), sorted(n for n in self.by_name if n.startswith("cocoon.local/")))
        for name in pushed:
            repo, tag = criimages.split_ref(name[len("cocoon.local/"):])
            manifest, _ = self.by_name[name]
            body, media_type = registry.manifests[(repo, tag)]
            self.assertEqual(json.loads(body), manifest)
            self.assertEqual(media_type, mkimage.MANIFEST)
            for desc in [manifest["config"]] + manifest["layers"]:
                self.assertEqual(registry.blobs[(repo, desc["digest"])], self.blobs[desc["digest"]])
        # A second push uploads nothing again.
        registry = FakeRegistry(registry)
        try:
            criimages.push(self.archive, registry.address, log=lambda s: None)
        finally:
            registry.close()
        self.assertEqual(registry.uploads, 0)


class SplitRef(unittest.TestCase):
    def test_split(self):
        self.assertEqual(criimages.split_ref("e2e/busybox:1.29-2"), ("e2e/busybox", "1.29-2"))
        self.assertEqual(criimages.split_ref("pause"), ("pause", "latest"))
        self.assertEqual(criimages.split_ref("a:5000/b"), ("a:5000/b", "latest"))

    def test_critest_images_names_the_local_images(self):
        text = criimages.critest_images()
        self.assertIn(f"defaultTestContainerImage: {criimages.BUSYBOX}\n", text)
        self.assertIn(f"webServerTestImage: {criimages.WEB_SERVER}\n", text)


class FakeRegistry:
    """Enough of the distribution API: HEAD blob, POST upload (Location
    relative, with a query, as the real one answers), PUT ?digest=, PUT
    manifest. Checks what a registry checks: the digest, the blobs a
    manifest names."""

    def __init__(self, previous=None):
        self.blobs = dict(previous.blobs) if previous else {}
        self.manifests = dict(previous.manifests) if previous else {}
        self.uploads = 0
        reg = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_HEAD(self):
                parts = self.path.split("/blobs/")
                repo = parts[0][len("/v2/"):]
                self.reply(200 if (repo, parts[1]) in reg.blobs else 404)

            def do_POST(self):
                self.body()
                repo = self.path[len("/v2/"):-len("/blobs/uploads/")]
                self.reply(202, [("Location", f"/v2/{repo}/blobs/uploads/u1?_state=x")])

            def do_PUT(self):
                u = urllib.parse.urlsplit(self.path)
                data = self.body()
                if "/manifests/" in u.path:
                    repo, tag = u.path[len("/v2/"):].split("/manifests/")
                    m = json.loads(data)
                    if any((repo, d["digest"]) not in reg.blobs for d in [m["config"]] + m["layers"]):
                        return self.reply(400)
                    reg.manifests[(repo, tag)] = (data, self.headers["Content-Type"])
                    return self.reply(201)
                q = urllib.parse.parse_qs(u.query)
                if q.get("_state") != ["x"] or mkimage.digest(data) != q["digest"][0]:
                    return self.reply(400)
                repo = u.path[len("/v2/"):].split("/blobs/uploads/")[0]
                reg.blobs[(repo, q["digest"][0])] = data
                reg.uploads += 1
                self.reply(201)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    unittest.main()
