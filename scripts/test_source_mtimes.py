"""scripts/source-mtimes.py with real cargo builds of a one-file crate in
fresh clones that share one target directory: a crate is rebuilt exactly
when its sources differ from what the shared outputs were built from, and
never reused from a build the record does not describe or from a checkout
at another path (the binary names its checkout's path)."""
import os
import shutil
import subprocess
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "source-mtimes.py")
MAIN = 'fn main() {{ println!("{} {{}}", env!("CARGO_MANIFEST_DIR")); }}\n'


def run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


class SourceMtimesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cocoon-source-mtimes-")
        self.cache = os.path.join(self.tmp, "cache")
        os.mkdir(self.cache)
        self.origin = os.path.join(self.tmp, "origin")
        os.makedirs(os.path.join(self.origin, "src"))
        with open(os.path.join(self.origin, "Cargo.toml"), "w") as f:
            f.write('[package]\nname = "probe"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n')
        self.commits = {}
        run(["git", "init", "-q"], self.origin)
        for word in ("one", "two"):
            self.write(self.origin, word)
            run(["git", "add", "-A"], self.origin)
            run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", word], self.origin)
            self.commits[word] = run(["git", "rev-parse", "HEAD"], self.origin).stdout.strip()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, tree, word):
        with open(os.path.join(tree, "src", "main.rs"), "w") as f:
            f.write(MAIN.format(word))

    def checkout(self, word, at="clone"):
        """A fresh clone at commit `word` in directory `at` (a former clone
        there is removed first), dated by `restore`."""
        tree = os.path.join(self.tmp, at)
        shutil.rmtree(tree, ignore_errors=True)
        run(["git", "clone", "-q", self.origin, tree], self.tmp)
        run(["git", "checkout", "-q", self.commits[word]], tree)
        run(["python3", SCRIPT, "restore", self.cache], tree)
        return tree

    def build(self, tree):
        """(what the binary prints, whether cargo compiled the crate); the
        binary must name this checkout as its own."""
        env = dict(os.environ, CARGO_TARGET_DIR=self.cache)
        r = run(["cargo", "build", "--offline"], tree, env)
        out = run([os.path.join(self.cache, "debug", "probe")], tree).stdout.strip()
        word, _, built_in = out.partition(" ")
        self.assertEqual(built_in, os.path.realpath(tree), "the binary was built in another checkout")
        return word, "Compiling probe" in r.stderr

    def record(self, tree):
        run(["python3", SCRIPT, "record", self.cache], tree)

    def test_only_sources_that_differ_from_the_cached_build_are_rebuilt(self):
        a = self.checkout("two")
        self.assertEqual(self.build(a), ("two", True))
        self.record(a)
        # The same content in a new clone: the outputs are reused.
        b = self.checkout("two")
        self.assertEqual(self.build(b), ("two", False))
        self.record(b)
        # A build that compiles nothing does not spoil the record.
        self.assertEqual(self.build(b), ("two", False))
        # Other content: rebuilt, in both directions.
        c = self.checkout("one")
        self.assertEqual(self.build(c), ("one", True))
        self.record(c)
        d = self.checkout("two")
        self.assertEqual(self.build(d), ("two", True))

    def test_a_build_after_the_record_is_not_trusted(self):
        a = self.checkout("one")
        self.assertEqual(self.build(a), ("one", True))
        self.record(a)
        # Edited and built after the record: the cache holds "three", built
        # from content the record does not describe.
        self.write(a, "three")
        self.assertEqual(self.build(a), ("three", True))
        b = self.checkout("one")
        self.assertEqual(self.build(b), ("one", True))

    def test_a_record_made_at_another_path_is_not_trusted(self):
        a = self.checkout("one", at="here")
        self.assertEqual(self.build(a), ("one", True))
        self.record(a)
        # The same content elsewhere: the outputs name "here", so rebuilt.
        b = self.checkout("one", at="elsewhere")
        self.assertEqual(self.build(b), ("one", True))
        self.record(b)
        # And back: "elsewhere" built last, so rebuilt again.
        c = self.checkout("one", at="here")
        self.assertEqual(self.build(c), ("one", True))

    def test_without_a_record_everything_is_rebuilt(self):
        a = self.checkout("one")
        self.assertEqual(self.build(a), ("one", True))
        b = self.checkout("one")
        self.assertEqual(self.build(b), ("one", True))


if __name__ == "__main__":
    unittest.main()
