#!/usr/bin/env bash
# Prints the QEMU that runs the nested test host (tests/testhost/run.sh),
# making it first if needed:
#   scripts/testhost-qemu.sh            # the binary's path on stdout
#   scripts/testhost-qemu.sh --version  # its version line
# COCOON_TESTHOST_QEMU overrides the choice (a qemu-system-x86_64 path).
#
# Why not simply the system's qemu-system-x86_64: before QEMU 8.0 the x86
# TCG translates code per virtual address, so every process of a position-
# independent executable (ASLR puts it elsewhere on each exec) has all the
# code it runs translated again. Measured in the test host under Debian
# 12's QEMU 7.2: cocoon-vmm's argument parsing took 57-159 ms with ASLR and
# 3-10 ms with it off, /bin/true 52 ms against 22 ms under QEMU 10. Hardware
# has no such cost; it falls on every PIE binary (cocoon's Rust binaries,
# virtiofsd) and not on non-PIE ones (Debian's runc and containerd shim),
# so it also skewed the runc comparison in `make bench`. QEMU 8.0+ reuses
# translations across addresses.
#
# So: the system's QEMU when it is 8.0 or newer; otherwise the newest
# qemu-system-x86 of the release's backports suite (Debian 12: QEMU 10),
# with the seabios it wants, unpacked into $COCOON_CACHE/qemu/VERSION —
# the system's packages are not touched. The archive is the one the
# system's own apt sources name for its release. If that fails, the
# system's QEMU is used, with a warning on stderr.
set -euo pipefail

cache=${COCOON_CACHE:-/var/cache/cocoon}/qemu
warn() { echo "testhost-qemu: $*" >&2; }

# major version of a qemu-system-x86_64 binary (0 if it does not run)
major() { "$1" --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([0-9]*\)\..*/\1/p' | grep . || echo 0; }

pick() {
  if [ -n "${COCOON_TESTHOST_QEMU:-}" ]; then
    echo "$COCOON_TESTHOST_QEMU"; return
  fi
  local sys
  sys=$(command -v qemu-system-x86_64 || true)
  if [ -n "$sys" ] && [ "$(major "$sys")" -ge 8 ]; then
    echo "$sys"; return
  fi
  # An unpacked one from an earlier run (the newest).
  local have
  have=$(ls -d "$cache"/*/qemu-system-x86_64 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$have" ] && [ "$(major "$have")" -ge 8 ]; then
    echo "$have"; return
  fi
  if fetch >&2; then
    have=$(ls -d "$cache"/*/qemu-system-x86_64 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$have" ] && [ "$(major "$have")" -ge 8 ]; then
      echo "$have"; return
    fi
  fi
  [ -n "$sys" ] || { warn "no qemu-system-x86_64: run 'make deps'"; exit 2; }
  warn "WARNING: using the system's $("$sys" --version | head -n1): before 8.0 every exec of a PIE binary is translated anew in the test host, which slows tests and skews benches"
  echo "$sys"
}

# Unpack the backports suite's qemu-system-x86 into $cache/VERSION.
fetch() (
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || { warn "no VERSION_CODENAME in /etc/os-release"; return 1; }
  # The archive the system's sources use for its release (…/dists/<codename>/main/…).
  archive=$(apt-get indextargets --format '$(URI)' 'Created-By: Packages' 2>/dev/null \
    | sed -n "s#^\(.*\)/dists/$codename/main/.*#\1#p" | head -n1)
  [ -n "$archive" ] || { warn "no apt source for $codename/main to take $codename-backports from"; return 1; }
  echo "[deps] unpacking qemu-system-x86 from $codename-backports for the test host (into $cache)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  lists=$tmp/lists
  mkdir -p "$lists/partial" "$tmp/debs" "$tmp/cache/archives/partial"
  echo "deb $archive $codename-backports main" >"$tmp/sources.list"
  apt=(-o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o Dir::State::Lists="$lists" -o Dir::Cache="$tmp/cache" -o APT::Sandbox::User=root -qq)
  apt-get "${apt[@]}" update >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; warn "apt-get update of $codename-backports failed"; return 1; }
  (cd "$tmp/debs" && apt-get "${apt[@]}" download qemu-system-x86 qemu-system-common qemu-system-data seabios \
    >/dev/null 2>"$tmp/err") || { cat "$tmp/err" >&2; warn "apt-get download from $codename-backports failed"; return 1; }
  version=$(dpkg-deb -f "$tmp"/debs/qemu-system-x86_*.deb Version | tr ':~' '__')
  for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
  # Its libraries are the release's own; any it lacks come from there.
  missing=$(ldd "$tmp/root/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}')
  if [ -n "$missing" ]; then
    deps=$(dpkg-deb -f "$tmp"/debs/qemu-system-x86_*.deb Depends | tr ',' '\n' \
      | sed 's/^ *//; s/ .*//' | grep -v -e '^qemu-' -e '^seabios' -e '^ipxe')
    echo "[deps] the test host's QEMU needs libraries: installing $(echo $deps)"
    # shellcheck disable=SC2086 # a list of package names
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $deps >/dev/null 2>&1 || true
    else
      sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $deps >/dev/null 2>&1 || true
    fi
    if ldd "$tmp/root/usr/bin/qemu-system-x86_64" | grep -q 'not found'; then
      warn "its libraries are missing: $(ldd "$tmp/root/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}' | tr '\n' ' ')"
      return 1
    fi
  fi
  dir=$cache/$version
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  mv "$tmp/root" "$dir.tmp/root"
  # The firmware and option ROMs of this QEMU first, the system's after.
  cat >"$dir.tmp/qemu-system-x86_64" <<EOF
#!/bin/sh
exec "$dir/root/usr/bin/qemu-system-x86_64" -L "$dir/root/usr/share/qemu" -L "$dir/root/usr/share/seabios" -L /usr/share/qemu "\$@"
EOF
  chmod +x "$dir.tmp/qemu-system-x86_64"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  "$dir/qemu-system-x86_64" --version | head -n1 | sed 's/^/[deps] test host: /'
)

qemu=$(pick)
case "${1:-}" in
  --version) "$qemu" --version | head -n1 ;;
  "") echo "$qemu" ;;
  *) warn "unknown argument '$1' (usage: testhost-qemu.sh [--version])"; exit 2 ;;
esac
