#!/usr/bin/env python3
"""Tests for mkinitrd.py: the archive is valid cpio newc (checked with GNU
cpio), holds /init, /dev/console and the extras, and bad input is refused."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MKINITRD = os.path.join(HERE, "mkinitrd.py")


def run(*args):
    return subprocess.run([sys.executable, MKINITRD, *args], capture_output=True, text=True)


class MkinitrdTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.d = self.dir.name
        self.init = os.path.join(self.d, "init")
        with open(self.init, "wb") as f:
            f.write(b"\x7fELF" + b"x" * 101)  # odd length exercises padding
        self.extra = os.path.join(self.d, "extra")
        with open(self.extra, "w") as f:
            f.write("hello\n")

    def tearDown(self):
        self.dir.cleanup()

    def listing(self, path):
        with open(path, "rb") as f:
            out = subprocess.run(["cpio", "-tv", "--quiet"], stdin=f, capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def test_archive_lists_init_console_and_extras(self):
        out = os.path.join(self.d, "initrd.cpio")
        r = run("--init", self.init, "--out", out, "--add", f"{self.extra}:/etc/deep/extra.txt")
        self.assertEqual(r.returncode, 0, r.stderr)
        listing = self.listing(out)
        self.assertRegex(listing, r"crw------- .* 5,\s+1 .* dev/console")
        self.assertRegex(listing, r"-rwxr-xr-x .* 105 .* init")
        self.assertIn("etc/deep/extra.txt", listing)
        self.assertRegex(listing, r"drwxr-xr-x .* etc/deep\n")

    def test_extract_gives_the_same_bytes(self):
        out = os.path.join(self.d, "initrd.cpio")
        self.assertEqual(run("--init", self.init, "--out", out).returncode, 0)
        dest = os.path.join(self.d, "x")
        os.mkdir(dest)
        with open(out, "rb") as f:
            subprocess.run(["cpio", "-id", "--quiet", "init"], stdin=f, cwd=dest, check=True)
        with open(os.path.join(dest, "init"), "rb") as a, open(self.init, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_reproducible(self):
        a, b = os.path.join(self.d, "a"), os.path.join(self.d, "b")
        run("--init", self.init, "--out", a)
        run("--init", self.init, "--out", b)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertEqual(fa.read(), fb.read())

    def test_missing_init_is_named(self):
        r = run("--init", os.path.join(self.d, "nope"), "--out", os.path.join(self.d, "o"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot read init binary", r.stderr)
        self.assertIn("nope", r.stderr)

    def test_non_elf_init_is_refused(self):
        r = run("--init", self.extra, "--out", os.path.join(self.d, "o"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("is not an ELF executable", r.stderr)

    def test_bad_add_spec_is_refused(self):
        for spec in [self.extra, f"{self.extra}:relative", f"{self.extra}:/a/../b"]:
            r = run("--init", self.init, "--out", os.path.join(self.d, "o"), "--add", spec)
            self.assertEqual(r.returncode, 2, spec)
            self.assertIn("expected SRC:/ABSOLUTE/DEST", r.stderr)


if __name__ == "__main__":
    unittest.main()
