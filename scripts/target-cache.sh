#!/usr/bin/env bash
# Cargo's build outputs, kept outside the clone like the guest kernel: a
# checkout with no target directory of its own gets `target` as a symlink to
# $COCOON_CACHE/cargo-target (default /var/cache/cocoon), so a fresh clone
# reuses the compiled crates.io dependencies of the previous one and builds
# only its own crates. A checkout that already has a real target directory
# keeps it; COCOON_TARGET_CACHE=0 turns this off.
#
# Safety: cargo decides whether a workspace crate is fresh by comparing its
# sources' mtimes with its outputs'; across checkouts that could take another
# checkout's newer outputs for this one's older sources. So when the cache
# was last used by a different checkout, this one's tracked files get their
# mtimes from scripts/source-mtimes.py: a file whose content is what the
# cached outputs were built from (recorded by `target-cache.sh record` once
# `make test` has built everything) keeps the mtime it had then, any other
# file is dated now, and cargo rebuilds only the crates with a changed file.
# Without a record it can trust (none, one made at another path — the
# outputs name their checkout's path — or a build ran after it), every file
# is dated now: every workspace crate is rebuilt, the dependencies (keyed by
# version and flags) are not. One checkout at a time per cache.
# The cache is emptied when it grows past COCOON_TARGET_CACHE_MAX_GB (40).
#   scripts/target-cache.sh           link ./target, date this checkout's files
#   scripts/target-cache.sh record    after the builds: record them for the next checkout
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${COCOON_TARGET_CACHE:-1}" != 0 ] || exit 0
# Not a git checkout (an unpacked tarball): no way to tell checkouts apart.
[ -e .git ] || exit 0
if [ -e target ] && [ ! -L target ]; then exit 0; fi

cache=${COCOON_CACHE:-/var/cache/cocoon}/cargo-target
mkdir -p "$cache" 2>/dev/null || { echo "[cache] cannot create $cache; building into ./target" >&2; exit 0; }
[ "$(readlink target 2>/dev/null)" = "$cache" ] || ln -sfn "$cache" target

max_gb=${COCOON_TARGET_CACHE_MAX_GB:-40}
used_gb=$(( $(du -sk "$cache" 2>/dev/null | cut -f1) / 1024 / 1024 ))
if [ "$used_gb" -ge "$max_gb" ]; then
  echo "[cache] $cache holds ${used_gb} GiB (limit ${max_gb}): emptying it"
  find "$cache" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi

# This checkout: its path and a random id kept in its .git (a new clone at
# the same path is a different checkout; the inode of a new .git can be the
# old one's).
gitdir=$(git rev-parse --absolute-git-dir)
[ -s "$gitdir/cocoon-checkout-id" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$gitdir/cocoon-checkout-id"
me="$(pwd -P) $(cat "$gitdir/cocoon-checkout-id")"
owner=$(cat "$cache/.cocoon-owner" 2>/dev/null || true)
if [ "${1:-}" = record ]; then
  [ "$owner" = "$me" ] && python3 scripts/source-mtimes.py record "$cache"
  exit 0
fi
if [ "$owner" != "$me" ]; then
  if [ -n "$owner" ]; then
    echo "[cache] $cache was last used by another checkout"
  else
    echo "[cache] cargo outputs go to $cache (reused by later clones; COCOON_TARGET_CACHE=0 to keep them in ./target)"
  fi
  python3 scripts/source-mtimes.py restore "$cache"
  printf '%s\n' "$me" >"$cache/.cocoon-owner"
fi
