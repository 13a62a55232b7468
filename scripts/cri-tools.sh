#!/usr/bin/env bash
# Prints the directory that holds `crictl` (a CRI client) and `critest` (the
# CRI validation suite), for the CRI end-to-end tests.
#
# Both on PATH: that directory. Else they are built once, offline, from the
# cri-tools v1.26.1 source tarball (its dependencies are vendored) with
# Debian's Go, into $COCOON_CACHE/cri-tools/<sha256 prefix>/ (default
# /var/cache/cocoon), and that directory is printed; later calls return at once.
#   COCOON_CRI_TOOLS_TAR   the tarball (default: ../shared/vendor/cri-tools-1.26.1.tar.gz
#                          beside the checkout)
# Progress goes to stderr, the directory alone to stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[cri-tools] %s\n' "$*" >&2; }
die() { printf '[cri-tools] error: %s\n' "$*" >&2; exit 1; }

version=1.26.1
sha256=46bcc6153212b4366d89ba7e993a3667ba1a97cbd66c8c4d4c2ecb6657f85210

if c=$(command -v crictl) && t=$(command -v critest) && [ "$(dirname "$c")" = "$(dirname "$t")" ]; then
  dirname "$c"; exit 0
fi

out=${COCOON_CACHE:-/var/cache/cocoon}/cri-tools/${sha256:0:16}
if [ -x "$out/crictl" ] && [ -x "$out/critest" ]; then echo "$out"; exit 0; fi

tar=${COCOON_CRI_TOOLS_TAR:-$(dirname "$repo")/shared/vendor/cri-tools-$version.tar.gz}
[ -f "$tar" ] || die "crictl and critest are not on PATH and there is no cri-tools source tarball at $tar.
  Either put crictl and critest (cri-tools v$version, CRI v1) on PATH, or point COCOON_CRI_TOOLS_TAR
  at the cri-tools v$version source tarball (the kubernetes-sigs/cri-tools tag v$version, sha256 $sha256);
  it is built here with Debian's Go (make deps installs golang-go)."
command -v go >/dev/null || die "'go' is missing: run 'make deps' (installs Debian's golang-go)"
got=$(sha256sum "$tar" | cut -d' ' -f1)
[ "$got" = "$sha256" ] || die "$tar has sha256 $got, expected $sha256 (cri-tools v$version)"

mkdir -p "$(dirname "$out")"
exec 9>"$(dirname "$out")/.lock"; flock 9
if [ -x "$out/crictl" ] && [ -x "$out/critest" ]; then echo "$out"; exit 0; fi

# Built in a temporary directory beside the result, which takes its place
# only once both binaries are there.
work=$(mktemp -d "$(dirname "$out")/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building crictl and critest v$version from $tar (once; ~1-2 min on 2 cores)"
tar -xzf "$tar" -C "$work"
src=$(find "$work" -mindepth 2 -maxdepth 2 -name go.mod -printf '%h\n' -quit)
[ -n "$src" ] || die "$tar holds no Go module"
# Offline: the vendored modules only, no module proxy, no toolchain download.
export GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0 GOTOOLCHAIN=local
export GOCACHE=${COCOON_CACHE:-/var/cache/cocoon}/cri-tools/gocache GOPATH=$work/gopath
t0=$(date +%s)
log "go build ./cmd/crictl"
(cd "$src" && go build -trimpath -o "$work/bin/crictl" ./cmd/crictl)
log "go test -c ./cmd/critest ($(( $(date +%s) - t0 )) s so far)"
(cd "$src" && go test -c -trimpath -o "$work/bin/critest" ./cmd/critest)
"$work/bin/crictl" --version >/dev/null || die "the crictl just built does not run"
rm -rf "$out"
mv "$work/bin" "$out"
log "built in $(( $(date +%s) - t0 )) s: $out"
echo "$out"
