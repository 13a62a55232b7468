//! A hostile guest against the host boundary, end to end through `ctr`:
//! a `--privileged` container (root with every capability in the guest)
//! mounts the pod's virtio-fs share itself (`mount -t virtiofs cocoonfs
//! /m`) and plants what it can there: writes through a read-only volume,
//! symlinks where the shim will later create, bind or unmount, junk that
//! the `delete` after a killed shim has to cope with. Each test asserts
//! the HOST outcome (files, mounts, processes), not what the guest saw,
//! and cleans up after itself on failure too (`Guard`).
//!
//! Seen with the guest kernel of today: a second mount of the tag does not
//! show the share root but the newest FUSE submount (virtio-fs reuses the
//! newest superblock of the connection): the ro volume in the first test,
//! the container's own rootfs or a pod volume in the others. The attacks
//! therefore go at whatever /m shows and at /m/<id>/...; the assertions are
//! on the host, whichever place the guest reached.
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{mount_points, umount_detach, Pods};

/// Shell prologue of every attack: busybox's applets that the image does
/// not link, and the share mounted at /m (says `share-mounted` or not).
const MOUNT_SHARE: &str = "
mount() { busybox mount \"$@\"; }
ln() { busybox ln \"$@\"; }
find() { busybox find \"$@\"; }
busybox mkdir -p /m
if mount -t virtiofs cocoonfs /m; then echo share-mounted; else echo share-mount-failed; fi
echo \"/m holds: $(ls /m | tr '\\n' ' ')\"
";

/// Undoes on drop (also when a test failed) what a test and its attacker
/// may have left: containers, VMMs and virtiofsds, mounts under the run
/// dir, new mounts outside it (an attack that worked), the victim mount,
/// the host temp dirs. Declared after the `Pods`, so dropped first.
struct Guard<'a> {
    c: &'a Pods<'a>,
    mounts_before: Vec<PathBuf>,
    victim: Option<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl<'a> Guard<'a> {
    fn new(c: &'a Pods<'a>) -> Guard<'a> {
        Guard {
            c,
            mounts_before: mount_points(),
            victim: None,
            dirs: Vec::new(),
        }
    }

    /// A fresh host directory, removed by the guard.
    fn host_dir(&mut self, name: &str) -> PathBuf {
        let d = PathBuf::from(format!("/tmp/cocoon-e2e-hb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        self.dirs.push(d.clone());
        d
    }

    /// Mount points added since the guard was made outside the run dir and
    /// containerd's own dir (where the shim and containerd mount): what
    /// the host gained from an attack.
    fn new_mounts_outside(&self) -> Vec<PathBuf> {
        let mut before: HashMap<&PathBuf, usize> = HashMap::new();
        for m in &self.mounts_before {
            *before.entry(m).or_default() += 1;
        }
        let mut new = Vec::new();
        for m in mount_points() {
            match before.get_mut(&m) {
                Some(n) if *n > 0 => *n -= 1,
                _ => {
                    if !m.starts_with(&self.c.run_dir)
                        && !m.starts_with(&self.c.dir)
                        && Some(&m) != self.victim.as_ref()
                    {
                        new.push(m);
                    }
                }
            }
        }
        new
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.c.cleanup();
        for m in self.new_mounts_outside().iter().rev() {
            eprintln!(
                "cleanup: unmounting {} (mounted by the attack)",
                m.display()
            );
            umount_detach(m);
        }
        if let Some(v) = &self.victim {
            for _ in 0..5 {
                if !mount_points().contains(v) {
                    break;
                }
                umount_detach(v);
            }
        }
        let mounted = mount_points();
        for d in &self.dirs {
            // Never recurse into something still mounted.
            if mounted.iter().any(|m| m.starts_with(d)) {
                eprintln!("cleanup: {} still has mounts; left", d.display());
            } else {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// A directory's entries, sorted.
fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("reading {}: {e}", d.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The attack's output must show it ran: the share was mounted.
fn assert_share_mounted(out: &str, err: &str) {
    assert!(
        out.contains("share-mounted"),
        "the attack did not run (the share could not be mounted):\n{out}\n{err}"
    );
}

#[test]
fn ctr_readonly_volume_stays_readonly_through_the_share() {
    require_supported_vmm!();
    let c = Pods::shared(&["rovol"]);
    let mut g = Guard::new(&c);
    let vol = g.host_dir("rovol");
    std::fs::write(vol.join("keep-ro.txt"), "original\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", vol.display());
    let script = format!(
        "{MOUNT_SHARE}
if echo pwned > /data/keep-ro.txt; then echo data-writable; else echo data-read-only; fi
attack() {{
  [ -d \"$1\" ] || return 0
  echo \"attacking $1\"
  echo pwned > \"$1/keep-ro.txt\" && echo \"overwrote $1/keep-ro.txt\"
  echo new > \"$1/new-file\" && echo \"created $1/new-file\"
  ln -s /etc \"$1/etc-link\" && echo \"linked $1/etc-link\"
}}
for f in $(find /m -maxdepth 6 -name keep-ro.txt 2>/dev/null); do attack \"${{f%/keep-ro.txt}}\"; done
for d in /m/rovol/mounts/*; do attack \"$d\"; done
true
"
    );
    let (rc, out, err) = c.run(
        "rovol",
        &["--privileged", "--mount", &mount],
        &["sh", "-c", &script],
    );
    eprintln!("attack (exit {rc}):\n{out}{err}");
    assert_share_mounted(&out, &err);
    assert!(
        out.contains("data-read-only"),
        "a write through the ro volume at /data worked:\n{out}"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("keep-ro.txt")).unwrap(),
        "original\n",
        "the host file behind a read-only volume was overwritten; attack output:\n{out}"
    );
    assert_eq!(
        entries(&vol),
        ["keep-ro.txt"],
        "entries created in the host dir behind a read-only volume; attack output:\n{out}"
    );
    c.assert_clean_within(Duration::from_secs(30), "after ctr run --rm");
}

#[test]
fn ctr_symlinks_planted_for_the_next_container_of_the_pod() {
    require_supported_vmm!();
    let c = Pods::shared(&["pod-sbx", "pod-next1", "pod-next2"]);
    let mut g = Guard::new(&c);
    let target = g.host_dir("target");
    std::fs::write(target.join("marker"), "marker\n").unwrap();
    std::fs::create_dir(target.join("dir")).unwrap();
    let vol = g.host_dir("podvol");
    std::fs::write(vol.join("in-vol"), "vol\n").unwrap();
    let volfile_dir = g.host_dir("podvolfile");
    let volfile = volfile_dir.join("file");
    std::fs::write(&volfile, "volfile\n").unwrap();
    let hostname = std::fs::read("/etc/hostname").ok();
    // The pod's volumes: a directory and a file. The sandbox has the same
    // ones, so its own `mounts/N` shows which N the next container's get.
    let vols = [
        "--mount".to_string(),
        format!("type=bind,src={},dst=/vol,options=rbind", vol.display()),
        "--mount".to_string(),
        format!(
            "type=bind,src={},dst=/volfile,options=rbind",
            volfile.display()
        ),
    ];
    let vols: Vec<&str> = vols.iter().map(String::as_str).collect();
    let mut sbx = vec![
        "--privileged",
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
    ];
    sbx.extend_from_slice(&vols);
    c.run_detached_with("pod-sbx", &sbx, &["sleep", "1000"]);
    let t = target.display();
    let script = format!(
        "{MOUNT_SHARE}
# next1: the whole container dir is a symlink to a host dir.
ln -s {t} /m/pod-next1 && echo planted /m/pod-next1
# next2: a real dir whose rootfs and mounts/N are symlinks to host paths.
busybox mkdir -p /m/pod-next2/mounts
ln -s {t}/dir /m/pod-next2/rootfs && echo planted /m/pod-next2/rootfs
for m in /m/pod-sbx/mounts/*; do
  [ -e \"$m\" ] || continue
  n=${{m##*/}}
  if [ -d \"$m\" ]; then ln -s /etc /m/pod-next2/mounts/$n && echo planted dir /m/pod-next2/mounts/$n
  else ln -s {t}/marker /m/pod-next2/mounts/$n && echo planted file /m/pod-next2/mounts/$n; fi
done
# Anywhere else writable.
for d in /m /m/* /m/*/mounts; do
  [ -d \"$d\" ] && ln -s {t} \"$d/planted-link\" 2>/dev/null && echo planted $d/planted-link
done
true
"
    );
    let (rc, out, err) = c.exec("pod-sbx", "attack", &["sh", "-c", &script]);
    eprintln!("attack (exit {rc}):\n{out}{err}");
    assert_share_mounted(&out, &err);
    let mut member = vec![
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod-sbx",
    ];
    member.extend_from_slice(&vols);
    for next in ["pod-next1", "pod-next2"] {
        let (rc, out, err) = c.run(next, &member, &["echo", "ok"]);
        eprintln!("{next} joined the pod: exit {rc}, {out}{err}");
        let new = g.new_mounts_outside();
        assert!(
            new.is_empty(),
            "{next} left host mounts outside the run dir: {new:?}"
        );
    }
    let check_host = |when: &str| {
        assert_eq!(
            entries(&target),
            ["dir", "marker"],
            "{when}: entries created in the host dir {t}"
        );
        assert!(
            entries(&target.join("dir")).is_empty(),
            "{when}: entries created in {t}/dir"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("marker")).unwrap(),
            "marker\n",
            "{when}: {t}/marker was changed"
        );
        assert_eq!(
            std::fs::read("/etc/hostname").ok(),
            hostname,
            "{when}: /etc/hostname changed"
        );
        assert_eq!(
            std::fs::read_to_string(&volfile).unwrap(),
            "volfile\n",
            "{when}: the pod's file volume changed"
        );
    };
    check_host("after the next containers ran");
    let (rc, _, err) = c.ctr(&["task", "rm", "-f", "pod-sbx"]);
    assert_eq!(rc, 0, "ctr task rm -f pod-sbx: {err}");
    assert_eq!(c.ctr(&["container", "rm", "pod-sbx"]).0, 0);
    check_host("after the pod was removed");
    let new = g.new_mounts_outside();
    assert!(
        new.is_empty(),
        "host mounts left outside the run dir: {new:?}"
    );
    c.assert_clean_within(Duration::from_secs(30), "after the pod was removed");
}

#[test]
fn ctr_teardown_does_not_unmount_a_host_mount_named_by_the_guest() {
    require_supported_vmm!();
    let c = Pods::shared(&["tdown"]);
    let mut g = Guard::new(&c);
    let victim = g.host_dir("victim");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "cocoon-e2e-victim"])
        .arg(&victim)
        .status()
        .unwrap();
    assert!(st.success(), "mounting the victim tmpfs");
    g.victim = Some(victim.clone());
    std::fs::write(victim.join("on-the-tmpfs"), "victim\n").unwrap();
    let v = victim.display();
    let script = format!(
        "{MOUNT_SHARE}
busybox mkdir -p /m/tdown/mounts
for n in 0 1 7 8 15; do ln -s {v} /m/tdown/mounts/$n && echo planted /m/tdown/mounts/$n; done
ln -s {v} /m/tdown/rootfs 2>/dev/null && echo planted /m/tdown/rootfs
for d in /m/*/mounts; do ln -s {v} \"$d/9\" 2>/dev/null && echo planted $d/9; done
true
"
    );
    let (rc, out, err) = c.run("tdown", &["--privileged"], &["sh", "-c", &script]);
    eprintln!("attack (exit {rc}):\n{out}{err}");
    assert_share_mounted(&out, &err);
    assert!(
        mount_points().contains(&victim),
        "the host's tmpfs at {v} was unmounted by the container's teardown; attack output:\n{out}"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("on-the-tmpfs"))
            .ok()
            .as_deref(),
        Some("victim\n"),
        "the victim tmpfs's file is gone"
    );
    c.assert_clean_within(Duration::from_secs(30), "after ctr run --rm");
}

#[test]
fn ctr_killed_shim_after_guest_writes_in_the_share_leaves_nothing() {
    require_supported_vmm!();
    let c = Pods::shared(&["wreck"]);
    let _g = Guard::new(&c);
    c.run_detached_with("wreck", &["--privileged"], &["sleep", "1000"]);
    let script = format!(
        "{MOUNT_SHARE}
for d in /m /m/* /m/*/mounts /m/*/rootfs; do
  [ -d \"$d\" ] || continue
  busybox mkdir -p \"$d/junk-dir/sub\" && echo \"junk x\" > \"$d/junk-dir/sub/f\" && echo wrote $d/junk-dir
  echo junk > \"$d/junk-file\" && echo wrote $d/junk-file
done
true
"
    );
    let (rc, out, err) = c.exec("wreck", "junk", &["sh", "-c", &script]);
    eprintln!("guest writes (exit {rc}):\n{out}{err}");
    assert_share_mounted(&out, &err);
    let shims = c.shim_pids("wreck");
    assert!(!shims.is_empty(), "no shim of this test serves wreck");
    for pid in shims {
        // SAFETY: kill(2) on our own shim's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // containerd sees the shim go, then the task is deleted through ctr
    // (which runs `containerd-shim-cocoon-v2 delete`).
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.task_status("wreck").as_deref() == Some("RUNNING") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (rc, _, err) = c.ctr(&["task", "rm", "-f", "wreck"]);
    eprintln!("ctr task rm -f wreck: exit {rc} {err}");
    let (rc, _, err) = c.ctr(&["container", "rm", "wreck"]);
    eprintln!("ctr container rm wreck: exit {rc} {err}");
    c.assert_clean_within(
        Duration::from_secs(60),
        "after the shim was killed and the container deleted",
    );
    assert_eq!(rc, 0, "ctr container rm wreck: {err}");
}
