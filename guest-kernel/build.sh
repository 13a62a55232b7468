#!/usr/bin/env bash
# Builds the cocoon guest vmlinux from Debian's linux-source-* package:
# tinyconfig + fragments/*.conf, no modules. The result is cached outside the
# clone under $COCOON_CACHE/kernel/<hash of inputs>/, where the inputs are the
# source package's version, the fragments and this script. With unchanged
# inputs it returns at once.
#
#   guest-kernel/build.sh            build if needed, print the vmlinux path last
#   guest-kernel/build.sh --path     print the path the build would have (no build)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${COCOON_CACHE:-/var/cache/cocoon}
log() { printf '[kernel] %s\n' "$*" >&2; }
die() { printf '[kernel] error: %s\n' "$*" >&2; exit 1; }

# The newest linux-source-X.Y package installed (make deps installs it).
src_tar=${LINUX_SOURCE_TARBALL:-$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1)}
[ -n "$src_tar" ] && [ -f "$src_tar" ] || die "no /usr/src/linux-source-*.tar.xz: run 'make deps' (installs Debian's linux-source package)"
pkg=$(basename "$src_tar" .tar.xz)
pkg_version=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || stat -c %s-%Y "$src_tar")

hash=$( { echo "$pkg $pkg_version"; cat "$0"; for f in "$here"/fragments/*.conf; do echo "== $(basename "$f")"; cat "$f"; done; } \
        | sha256sum | cut -c1-16)
out="$cache/kernel/$hash"

if [ "${1:-}" = "--path" ]; then echo "$out/vmlinux"; exit 0; fi
if [ -f "$out/vmlinux" ]; then
  log "cached: $out/vmlinux ($pkg $pkg_version)"
  echo "$out/vmlinux"; exit 0
fi

for tool in make gcc flex bison bc; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: run 'make deps'"
done

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"; flock 9
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

# The unpacked source is shared by all builds of one package version.
srcdir="$cache/kernel/src-$pkg-$pkg_version"
if [ ! -f "$srcdir/.unpacked" ]; then
  log "unpacking $src_tar"
  rm -rf "$srcdir"; mkdir -p "$srcdir"
  tar -xf "$src_tar" -C "$srcdir" --strip-components=1
  touch "$srcdir/.unpacked"
fi

work="$cache/kernel/work-$hash"
rm -rf "$work"; mkdir -p "$work"
log "configuring: tinyconfig + $(cd "$here/fragments" && echo *.conf)"
make -s -C "$srcdir" O="$work" ARCH=x86_64 tinyconfig >/dev/null
KCONFIG_CONFIG="$work/.config" "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$work" \
  "$work/.config" "$here"/fragments/*.conf >"$work/merge.log" 2>&1 || { cat "$work/merge.log" >&2; die "merge_config failed"; }
make -s -C "$srcdir" O="$work" ARCH=x86_64 olddefconfig >/dev/null

# A requested option that did not survive olddefconfig (a missing dependency)
# would silently drop a feature: refuse instead.
missing=""
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) grep -qx "$line" "$work/.config" || missing="$missing ${line%=y}";; esac
done < <(cat "$here"/fragments/*.conf)
[ -z "$missing" ] || die "options requested by the fragments but not set after olddefconfig:$missing"

jobs=$(nproc)
log "building vmlinux from $pkg $pkg_version with $jobs jobs (cold: ~8 min on 2 cores)"
start=$(date +%s)
( make -C "$srcdir" O="$work" ARCH=x86_64 -j"$jobs" vmlinux >"$work/build.log" 2>&1; echo $? >"$work/build.rc" ) &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 20
  n=$(grep -c '^  CC' "$work/build.log" 2>/dev/null || true)
  log "... $(( $(date +%s) - start ))s, $n files compiled"
done
wait "$pid" || true
if [ "$(cat "$work/build.rc")" != 0 ]; then tail -30 "$work/build.log" >&2; die "kernel build failed (log: $work/build.log)"; fi

mkdir -p "$out.tmp"
cp "$work/vmlinux" "$work/.config" "$out.tmp/"
echo "$pkg $pkg_version" >"$out.tmp/source"
rm -rf "$out"; mv "$out.tmp" "$out"
rm -rf "$work"
log "built in $(( $(date +%s) - start ))s: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1))"
echo "$out/vmlinux"
