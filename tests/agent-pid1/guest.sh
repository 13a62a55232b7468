#!/bin/sh
# PID 1 of the probe VM (kernel `rdinit=/bin/sh -- /guest.sh`): starts a
# client in the background, then execs the agent (/init) so that the agent
# is PID 1. The client keeps the initramfs root (the agent moves its own
# root off it), so it mounts what it needs itself.
B=/bin/busybox
$B mknod /dev/null c 1 3
$B mkdir -p /c/rootfs/proc /c/rootfs/dev /c/rootfs/sys /c/rootfs/tmp
C="/ctl --addr unix:///a.sock --stream-addr unix:///s.sock"
(
  until [ -S /a.sock ]; do $B sleep 1; done
  $B mount -t proc p /proc; $B mount -t sysfs s /sys; $B mount -t cgroup2 c /sys/fs/cgroup
  $C check
  echo "PROBE pid 1: $($B cat /proc/1/cmdline)"
  $C run c1 /c/config.json; echo "PROBE run exit $?"
  echo "PROBE subtree_control: $($B cat /sys/fs/cgroup/cgroup.subtree_control)"
  $C destroy-sandbox; echo "PROBE destroyed"
) </dev/console &
export COCOON_AGENT_LISTEN=unix:///a.sock COCOON_AGENT_STREAM_LISTEN=unix:///s.sock
exec /init
