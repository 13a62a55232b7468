#!/bin/sh
# PID 1 of the nested test host (busybox). Mounts the host's root read-only
# over 9p with a tmpfs overlay on top, loads KVM (nested SVM under QEMU TCG),
# runs /out/cmd.sh in that root, its output in /out/output and its exit
# code in /out/rc.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" 2>/dev/null || echo "testhost: insmod $m failed" >/dev/ttyS0; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /lower || { echo "testhost: cannot mount host root" >/dev/ttyS0; poweroff -f; }
mount -t tmpfs -o size=75% tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || { echo "testhost: overlay failed" >/dev/ttyS0; poweroff -f; }
mkdir -p /newroot/run/testhost
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=524288 out /newroot/run/testhost
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
# /tmp is a tmpfs (overlayfs cannot be an overlay upperdir, and containerd's
# snapshots live under /tmp in the tests); a working tree under /tmp (CI
# clones anywhere) is carried over from the overlay onto it.
cwd=$(cat /newroot/run/testhost/cwd 2>/dev/null)
keep=""
case "$cwd" in
  /tmp/?*) keep=/tmp/$(echo "${cwd#/tmp/}" | cut -d/ -f1)
           mkdir -p /kept; mount --bind "/newroot$keep" /kept ;;
esac
mount -t tmpfs tmpfs /newroot/tmp
if [ -n "$keep" ]; then mkdir -p "/newroot$keep"; mount --move /kept "/newroot$keep"; fi
mount -t tmpfs tmpfs /newroot/run/lock 2>/dev/null
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null
# switch_root, not chroot: a chrooted process may not create user namespaces.
exec switch_root /newroot /bin/sh -c '
  modprobe -q -a kvm_amd vhost_vsock tun fuse veth bridge 2>/dev/null
  [ -c /dev/kvm ] || echo "testhost: warning: no /dev/kvm in the test host" >&2
  # A heartbeat on the share: run.sh takes a stale one for a hung test host.
  ( while :; do date +%s >/run/testhost/heartbeat; sleep 5; done ) &
  # The output goes to a file on the share (9p writes arrive whole; an
  # emulated serial port under load was seen to drop bytes), which run.sh
  # follows live. Through a pipe, so that CMD sees no terminal.
  { sh /run/testhost/cmd.sh </dev/null 2>&1; echo $? >/run/testhost/rc; } | cat >/run/testhost/output
  sync
  echo o >/proc/sysrq-trigger
  poweroff -f'
