#!/usr/bin/env bash
# Builds (once, cached by its inputs) the test host's initramfs: busybox, our
# init and the host kernel modules needed to mount the host root over 9p with
# an overlay. Prints the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${COCOON_CACHE:-/var/cache/cocoon}
kver=${COCOON_TESTHOST_KERNEL:-$(ls /lib/modules | grep -E 'amd64$' | sort -V | tail -n1)}
[ -n "$kver" ] && [ -f "/boot/vmlinuz-$kver" ] || { echo "testhost: no Debian amd64 kernel in /boot: run 'make deps' (linux-image-amd64)" >&2; exit 2; }

[ -x /bin/busybox ] || { echo "testhost: busybox missing: run 'make deps' (busybox-static)" >&2; exit 2; }

wanted="virtio_pci 9pnet_virtio 9p overlay"
hash=$( { echo "$kver"; cat "$0" "$here/init.sh"; echo "$wanted"; sha256sum /bin/busybox; } | sha256sum | cut -c1-16)
dir="$cache/testhost/$hash"
if [ -f "$dir/initramfs.cpio.gz" ]; then echo "$dir/initramfs.cpio.gz"; exit 0; fi

mkdir -p "$cache/testhost"
exec 9>"$cache/testhost/.lock"; flock 9
if [ -f "$dir/initramfs.cpio.gz" ]; then echo "$dir/initramfs.cpio.gz"; exit 0; fi
echo "testhost: building the initramfs for kernel $kver" >&2

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,modules,lower,upper,newroot}
cp /bin/busybox "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"; done
cp "$here/init.sh" "$root/init"; chmod 755 "$root/init"

# The dependency closure of the wanted modules, in load order.
moddir=/lib/modules/$kver
declare -A seen=()
order=()
resolve() {  # $1 = path relative to $moddir
  local rel=$1 dep
  [ -n "${seen[$rel]:-}" ] && return
  seen[$rel]=1
  for dep in $(grep -E "^$rel:" "$moddir/modules.dep" | cut -d: -f2); do resolve "$dep"; done
  order+=("$rel")
}
for m in $wanted; do
  rel=$(grep -m1 -E "/${m//_/[_-]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1 || true)
  [ -n "$rel" ] || { echo "testhost: module $m not found for $kver" >&2; exit 2; }
  resolve "$rel"
done
: >"$root/modules.order"
for rel in "${order[@]}"; do
  cp "$moddir/$rel" "$root/modules/"; basename "$rel" >>"$root/modules.order"
done

mkdir -p "$dir.tmp"
(cd "$root" && find . | sort | cpio -o -H newc --quiet --reproducible) | gzip -1 >"$dir.tmp/initramfs.cpio.gz"
echo "$kver" >"$dir.tmp/kernel-version"
rm -rf "$dir"; mv "$dir.tmp" "$dir"
echo "$dir/initramfs.cpio.gz"
