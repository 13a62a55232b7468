#!/usr/bin/env bash
# Installs what cocoon needs to build and test, idempotently: quiet when
# everything is there, and says what it installs otherwise.
set -euo pipefail

# Debian packages: the test host (QEMU + Debian's kernel + busybox), the guest
# kernel source and its build tools, and the initrd tooling.
packages=(
  qemu-system-x86      # the nested test host and the QEMU microvm peer in make bench
  linux-image-amd64    # the test host's kernel (has kvm_amd, 9p, overlay, vhost_vsock)
  busybox-static       # the test host's userland
  flex bison bc libelf-dev libssl-dev make gcc   # guest kernel build
  cpio xz-utils python3 # initrd packing, kernel source unpacking
  util-linux           # flock, script
  libcap-ng-dev libseccomp-dev  # seccomp in the agent (static libseccomp.a); virtiofsd's build
  containerd runc      # the shim's end-to-end tests and make demo; runc is the agent bench's baseline
  # The CRI tests (tests/ctr/containerd.sh start-cri): Go builds crictl and
  # critest (scripts/cri-tools.sh); the CNI plugins (bridge, host-local,
  # loopback, portmap in /usr/lib/cni) and iptables give pods their network;
  # the distribution registry serves the test images; libc6-dev links the
  # images' small static helpers (pause, nonewprivs).
  golang-go containernetworking-plugins iptables docker-registry libc6-dev
)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The newest linux-source-X.Y the archive has (the guest kernel source).
apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { echo "[deps] apt-get update"; sudo_ apt-get update -qq >/dev/null; apt_updated=1; }; }
newest_source() { apt-cache search --names-only '^linux-source-[0-9.]+$' 2>/dev/null | cut -d' ' -f1 | sort -V | tail -n1; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! ls /usr/src/linux-source-*.tar.xz >/dev/null 2>&1; then
  src=$(newest_source)
  if [ -z "$src" ]; then apt_update; src=$(newest_source); fi
  [ -n "$src" ] || { echo "[deps] error: no linux-source-* package in the archive" >&2; exit 1; }
  missing+=("$src")
fi

if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  echo "[deps] installing: ${missing[*]}"
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/cocoon-deps-apt.log 2>&1 \
    || { tail -20 /tmp/cocoon-deps-apt.log >&2; echo "[deps] error: apt-get install failed (log: /tmp/cocoon-deps-apt.log)" >&2; exit 1; }
fi

# Debian's docker-registry starts and enables a registry service on port
# 5000; the CRI tests run a registry of their own, so the system one is
# stopped and disabled (once: quiet when it already is).
if dpkg-query -W -f '${Status}' docker-registry 2>/dev/null | grep -q 'install ok installed'; then
  if [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet docker-registry.service 2>/dev/null || systemctl is-active --quiet docker-registry.service; then
      echo "[deps] stopping and disabling the docker-registry service (the CRI tests run their own registry)"
      sudo_ systemctl disable --now docker-registry.service >/dev/null 2>&1
    fi
  elif compgen -G '/etc/rc[2-5].d/S*docker-registry' >/dev/null; then
    echo "[deps] stopping and disabling the docker-registry service (the CRI tests run their own registry)"
    sudo_ update-rc.d docker-registry disable >/dev/null 2>&1
    sudo_ service docker-registry stop >/dev/null 2>&1 || true
  fi
fi

# The CRI test images' busybox (tests/ctr/criimages.py): Debian's `busybox`,
# whose shell runs commands from PATH as the busybox image critest expects
# does; busybox-static's runs its own applets without exec'ing them (so a
# masked /bin/ls still runs). The two packages conflict and the test host
# needs busybox-static, so this one's binary is unpacked into the cache.
bb_cache=${COCOON_CACHE:-/var/cache/cocoon}/busybox-deb
if ! compgen -G "$bb_cache/*/busybox" >/dev/null; then
  echo "[deps] apt-get download busybox (its binary, for the CRI test images, into $bb_cache)"
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -qq busybox >/dev/null 2>&1); then
    apt_update
    (cd "$tmp" && apt-get download -qq busybox >/dev/null 2>&1) || { rm -rf "$tmp"; echo "[deps] error: apt-get download busybox failed" >&2; exit 1; }
  fi
  deb=$(echo "$tmp"/busybox_*.deb)
  version=$(dpkg-deb -f "$deb" Version | tr ':' '_')
  dpkg-deb -x "$deb" "$tmp/x"
  rm -rf "$bb_cache"/*.tmp
  mkdir -p "$bb_cache/$version.tmp"
  cp "$tmp/x/bin/busybox" "$bb_cache/$version.tmp/busybox"
  rm -rf "$tmp" "${bb_cache:?}/$version"
  mv "$bb_cache/$version.tmp" "$bb_cache/$version"
fi

# The test host's QEMU: the system's if it is 8.0 or newer, else one from the
# release's backports unpacked into the cache (scripts/testhost-qemu.sh says
# why). Quiet once it is there.
"$(dirname "$0")/testhost-qemu.sh" >/dev/null

# Rust components used by make test.
# (The list is read whole: grep -q on a pipe can end it early, and under
# pipefail the writer's broken pipe would count as "not installed".)
installed_components=$(rustup component list --installed 2>/dev/null || true)
for comp in rustfmt clippy; do
  grep -q "^$comp" <<<"$installed_components" || { echo "[deps] rustup component add $comp"; rustup component add "$comp" >/dev/null 2>&1; }
done
# cargo-fuzz, for make fuzz-smoke (scripts/fuzz-smoke.sh; a minute or two).
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  echo "[deps] cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked --quiet >/tmp/cocoon-deps-cargo-fuzz.log 2>&1 \
    || { tail -20 /tmp/cocoon-deps-cargo-fuzz.log >&2; echo "[deps] error: cargo install cargo-fuzz failed (log: /tmp/cocoon-deps-cargo-fuzz.log)" >&2; exit 1; }
fi
# virtiofsd, the vhost-user-fs backend (into ~/.cargo/bin; a few minutes on 2 cores).
virtiofsd_version=1.14.0
virtiofsd_bin() { command -v virtiofsd 2>/dev/null || { [ -x "$HOME/.cargo/bin/virtiofsd" ] && echo "$HOME/.cargo/bin/virtiofsd"; }; }
if ! { v=$(virtiofsd_bin) && "$v" --version 2>/dev/null | grep -q "^virtiofsd $virtiofsd_version\$"; }; then
  echo "[deps] cargo install virtiofsd --version $virtiofsd_version --locked (takes a few minutes)"
  cargo install virtiofsd --version "$virtiofsd_version" --locked --quiet >/tmp/cocoon-deps-virtiofsd.log 2>&1 \
    || { tail -20 /tmp/cocoon-deps-virtiofsd.log >&2; echo "[deps] error: cargo install virtiofsd failed (log: /tmp/cocoon-deps-virtiofsd.log)" >&2; exit 1; }
  echo "[deps] installed $("$HOME/.cargo/bin/virtiofsd" --version) at $HOME/.cargo/bin/virtiofsd"
fi
exit 0
