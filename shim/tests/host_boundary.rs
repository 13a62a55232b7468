//! The host boundary, played from the host side as root (no VM): the
//! attacker's files are written into the pod directory the way virtiofsd
//! would write them on a hostile guest's behalf, or planted where a guest
//! must never be able to write, and the shim's share, teardown and
//! delete-after-crash must touch nothing outside the pod directory.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cocoon_shim::config::Config;
use cocoon_shim::sandbox::cgroup::{spawn_into, PodCgroup};
use cocoon_shim::sandbox::PodDir;
use cocoon_shim::storage::{self, mount_points};
use oci_spec::runtime::{Mount, Spec};

/// The tests compare the whole mount table before and after: one at a
/// time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One pod directory, a container bundle and the host "victims" an
/// attacker aims at, all under one temp dir.
struct Scene {
    _serial: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    pod: PodDir,
    bundle: PathBuf,
    /// Host dirs bound as volumes.
    ro_vol: PathBuf,
    rw_vol: PathBuf,
    /// Outside the pod: must never be mounted on, created in or truncated.
    victim_dir: PathBuf,
    victim_file: PathBuf,
    mounts_before: Vec<PathBuf>,
}

const MARK: &[u8] = b"host data, hands off";

impl Scene {
    fn new() -> Scene {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("cocoon-boundary")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let pod = PodDir::new(&d.join("run"), "pod1");
        let bundle = d.join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        std::fs::write(bundle.join("rootfs/etc/hostname"), "guest").unwrap();
        let (ro_vol, rw_vol) = (d.join("ro-vol"), d.join("rw-vol"));
        for v in [&ro_vol, &rw_vol] {
            std::fs::create_dir_all(v).unwrap();
            std::fs::write(v.join("data"), MARK).unwrap();
        }
        let victim_dir = d.join("victim");
        std::fs::create_dir_all(&victim_dir).unwrap();
        let victim_file = victim_dir.join("file");
        std::fs::write(&victim_file, MARK).unwrap();
        let mounts_before = mount_points();
        Scene {
            _serial: serial,
            dir,
            pod,
            bundle,
            ro_vol,
            rw_vol,
            victim_dir,
            victim_file,
            mounts_before,
        }
    }

    fn spec(&self) -> Spec {
        let mut spec = Spec::default();
        let mut root = spec.root().clone().unwrap();
        root.set_path("rootfs".into());
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let bind = |src: &Path, dst: &str, ro: bool| {
            let mut m = Mount::default();
            m.set_destination(dst.into());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(src.to_path_buf()));
            let mut o = vec!["rbind".to_string()];
            if ro {
                o.push("ro".into());
            }
            m.set_options(Some(o));
            m
        };
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let first = mounts.len();
        mounts.push(bind(&self.ro_vol, "/ro", true));
        mounts.push(bind(&self.rw_vol, "/rw", false));
        mounts.push(bind(&self.ro_vol.join("data"), "/ro-file", true));
        spec.set_mounts(Some(mounts));
        assert_eq!(first, self.first_bind());
        spec
    }

    /// Index of the first bind in [`Scene::spec`]'s mounts (after the
    /// default spec's own mounts).
    fn first_bind(&self) -> usize {
        Spec::default().mounts().clone().unwrap_or_default().len()
    }

    fn share(&self, id: &str) -> Result<(), storage::StorageError> {
        let mut spec = self.spec();
        storage::share_container(
            &mut spec,
            &self.bundle,
            &self.pod,
            Path::new("/run/share"),
            id,
            storage::ShareFlags::Vm,
        )
    }

    /// The host is as it was: nothing mounted outside the pod dir, the
    /// victims untouched, the volumes' data intact.
    fn assert_host_unchanged(&self) {
        self.assert_host_unchanged_but(|_| false)
    }

    /// As [`Scene::assert_host_unchanged`], but entries of the victim dir
    /// for which `own` is true (the test's own attacker's) are allowed.
    fn assert_host_unchanged_but(&self, own: impl Fn(&std::fs::DirEntry) -> bool) {
        let now = mount_points();
        let outside: Vec<_> = now
            .iter()
            .filter(|m| !m.starts_with(self.pod.root()) && !self.mounts_before.contains(m))
            .collect();
        assert!(
            outside.is_empty(),
            "mounted outside the pod dir: {outside:?}"
        );
        let gone: Vec<_> = self
            .mounts_before
            .iter()
            .filter(|m| !now.contains(m))
            .collect();
        assert!(gone.is_empty(), "host mounts were unmounted: {gone:?}");
        assert_eq!(
            std::fs::read(&self.victim_file).unwrap(),
            MARK,
            "victim file changed"
        );
        let entries: Vec<_> = std::fs::read_dir(&self.victim_dir)
            .unwrap()
            .flatten()
            .filter(|e| !own(e))
            .map(|e| e.file_name())
            .collect();
        assert_eq!(entries, ["file"], "victim dir changed: {entries:?}");
        for v in [&self.ro_vol, &self.rw_vol] {
            assert_eq!(std::fs::read(v.join("data")).unwrap(), MARK);
        }
    }

    /// A shim configuration whose run dir holds the scene's pod.
    fn config(&self) -> Config {
        Config {
            run_dir: self.pod.root().parent().unwrap().to_path_buf(),
            ..Config::default()
        }
    }

    fn teardown(&self) {
        cocoon_shim::task::remove_pod_dir(&self.pod);
        assert!(!self.pod.root().exists(), "pod dir left");
        assert!(!storage::has_mounts_below(self.pod.root()), "mounts left");
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for mp in mount_points().into_iter().rev() {
            if mp.starts_with(self.dir.path()) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn the_guest_writes_only_inside_writable_rootfs_and_volumes() {
    let s = Scene::new();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    let mode = std::fs::metadata(s.pod.root())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "pod dir mode");
    s.share("c1").unwrap();
    let view = s.pod.shared();
    let n = s.first_bind();
    // What virtiofsd exports is read-only at every level the guest does
    // not own: no file, dir or symlink can be planted there.
    let erofs = Some(libc::EROFS);
    assert_eq!(errno(std::fs::write(view.join("evil"), "x")), erofs);
    assert_eq!(errno(std::fs::create_dir(view.join("c2"))), erofs);
    assert_eq!(errno(symlink("/etc", view.join("c2"))), erofs);
    assert_eq!(errno(std::fs::write(view.join("c1/evil"), "x")), erofs);
    assert_eq!(errno(symlink("/", view.join("c1/mounts/99"))), erofs);
    assert!(std::fs::remove_dir(view.join("c1/rootfs")).is_err());
    // Read-only volumes are read-only, writable ones writable, and the
    // writable rootfs is writable.
    let ro = view.join(format!("c1/mounts/{n}"));
    let rw = view.join(format!("c1/mounts/{}", n + 1));
    let ro_file = view.join(format!("c1/mounts/{}", n + 2));
    assert_eq!(errno(std::fs::write(ro.join("data"), "x")), erofs);
    assert_eq!(errno(std::fs::write(ro.join("new"), "x")), erofs);
    assert_eq!(errno(std::fs::write(&ro_file, "x")), erofs);
    std::fs::write(rw.join("new"), "ok").unwrap();
    std::fs::write(view.join("c1/rootfs/new"), "ok").unwrap();
    assert_eq!(std::fs::read(s.rw_vol.join("new")).unwrap(), b"ok");
    // Every bind is nosuid,nodev.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let binds: Vec<&str> = info
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| Path::new(mp).starts_with(s.pod.root().join("private/c1")))
        })
        .collect();
    assert_eq!(binds.len(), 4, "{binds:#?}");
    for l in &binds {
        let opts = l.split(' ').nth(5).unwrap();
        assert!(opts.contains("nosuid") && opts.contains("nodev"), "{l}");
    }
    std::fs::remove_file(s.rw_vol.join("new")).unwrap();
    storage::unshare_container(&s.pod, "c1");
    s.assert_host_unchanged();
    s.teardown();
}

/// virtiofsd's mount namespace is a copy made when it started: a bind
/// that becomes read-only only after it propagated there stays writable
/// there (the remount does not propagate).
#[test]
fn a_read_only_volume_is_read_only_in_a_namespace_made_before_it() {
    let s = Scene::new();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    // A stand-in for virtiofsd: a process in a slave copy of our mounts.
    let mut ns = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sleep", "120"])
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = ns.id();
    let _reap = Reap(&mut ns);
    // Wait until it is in its own namespace.
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    for _ in 0..200 {
        if std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .is_some_and(|l| l != ours)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    s.share("c1").unwrap();
    let n = s.first_bind();
    let there = |rel: &str| {
        PathBuf::from(format!("/proc/{pid}/root"))
            .join(s.pod.shared().strip_prefix("/").unwrap())
            .join(rel)
    };
    // The binds reached that namespace...
    let rw = there(&format!("c1/mounts/{}", n + 1));
    std::fs::write(rw.join("seen"), "ok").expect("the rw volume propagated into the namespace");
    std::fs::remove_file(s.rw_vol.join("seen")).unwrap();
    // ...and the read-only one is read-only there too.
    let ro = there(&format!("c1/mounts/{n}"));
    assert_eq!(
        errno(std::fs::write(ro.join("data"), "x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(std::fs::write(ro.join("new"), "x")),
        Some(libc::EROFS)
    );
    assert_eq!(errno(symlink("/etc", ro.join("etc"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::write(there("evil"), "x")), Some(libc::EROFS));
    storage::unshare_container(&s.pod, "c1");
    s.assert_host_unchanged();
    s.teardown();
}

/// A volume receives the mounts made later below its host source only
/// when its propagation asks for them (CRI's HostToContainer is `rslave`);
/// otherwise (`rprivate`, the default) a clone of a shared source would be
/// its peer and show the guest whatever the host mounts there.
#[test]
fn host_mounts_reach_a_volume_only_when_its_propagation_asks() {
    let s = Scene::new();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    // The source is a shared mount, as a kubelet's pod volumes are.
    let src = &s.rw_vol;
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let flags = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
    nix::mount::mount(Some(src), src, None::<&str>, flags, None::<&str>).unwrap();
    let shared = nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC;
    nix::mount::mount(None::<&str>, src, None::<&str>, shared, None::<&str>).unwrap();
    let volume = |propagation: &str| {
        let mut spec = s.spec();
        let mut m = Mount::default();
        m.set_destination("/vol".into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(src.clone()));
        m.set_options(Some(vec!["rbind".into(), propagation.into()]));
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(m);
        let n = mounts.len() - 1;
        spec.set_mounts(Some(mounts));
        (spec, n)
    };
    let (mut private_spec, n) = volume("rprivate");
    let (mut slave_spec, _) = volume("rslave");
    for (id, spec) in [("c1", &mut private_spec), ("c2", &mut slave_spec)] {
        let guest = Path::new("/run/share");
        storage::share_container(spec, &s.bundle, &s.pod, guest, id, storage::ShareFlags::Vm)
            .unwrap();
    }
    // The host mounts a tmpfs below the source, with a file in it.
    nix::mount::mount(
        Some("tmpfs"),
        &src.join("sub"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(src.join("sub/late"), "mounted after the share").unwrap();
    let seen = |id: &str| {
        s.pod
            .shared()
            .join(format!("{id}/mounts/{n}/sub/late"))
            .exists()
    };
    let (private_sees, slave_sees) = (seen("c1"), seen("c2"));
    nix::mount::umount2(&src.join("sub"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    storage::unshare_container(&s.pod, "c1");
    storage::unshare_container(&s.pod, "c2");
    nix::mount::umount2(src, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(
        !private_sees,
        "an rprivate volume received a later host mount"
    );
    assert!(
        slave_sees,
        "an rslave volume did not receive a later host mount"
    );
    std::fs::remove_dir(src.join("sub")).unwrap();
    s.assert_host_unchanged();
    s.teardown();
}

/// containerd's clean-up after a killed shim is one bounded `delete` per
/// container; when it is cut off, or never comes, the next shim to start a
/// pod sweeps: a pod directory whose lock no shim holds, older than a
/// minute, is destroyed with every container's binds. A locked or a fresh
/// one is left alone.
#[test]
fn a_pod_no_shim_serves_is_swept_and_a_served_one_is_not() {
    let s = Scene::new();
    let cfg = s.config();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    s.share("c1").unwrap();
    s.share("c2").unwrap();
    // Not a pod directory: never touched.
    let other = cfg.run_dir.join("vmm-uids");
    std::fs::create_dir_all(&other).unwrap();
    let min_age = cocoon_shim::cleanup::SWEEP_MIN_AGE;
    let sweep = || cocoon_shim::cleanup::sweep_orphans(&cfg, min_age);
    // Fresh: its shim may not have locked it yet.
    assert!(sweep().is_empty());
    let old = std::time::SystemTime::now() - min_age - Duration::from_secs(5);
    std::fs::File::open(s.pod.root())
        .unwrap()
        .set_modified(old)
        .unwrap();
    // Served: the shim holds the lock.
    let held = s.pod.try_lock().unwrap().expect("the lock is free");
    assert!(sweep().is_empty());
    assert!(s.pod.shared().join("c1/rootfs/etc/hostname").exists());
    // The shim is gone (its lock with it), and no delete came.
    drop(held);
    assert_eq!(sweep(), ["pod1"]);
    assert!(other.is_dir());
    std::fs::remove_dir(&other).unwrap();
    s.assert_host_unchanged();
    assert!(!s.pod.root().exists(), "pod dir left");
    assert!(!storage::has_mounts_below(s.pod.root()), "mounts left");
}

/// Where the shim creates and mounts: `private/<id>`, its `rootfs`, its
/// `mounts` and `mounts/<n>`. A symlink at any of them must not be
/// followed.
fn targets(n: usize) -> Vec<String> {
    vec![
        "private/c1".into(),
        "private/c1/rootfs".into(),
        "private/c1/mounts".into(),
        format!("private/c1/mounts/{n}"),
        format!("private/c1/mounts/{}", n + 2),
        "containers".into(),
    ]
}

#[test]
fn symlinks_planted_before_a_create_are_not_followed() {
    let first = Spec::default().mounts().clone().unwrap_or_default().len();
    for (i, rel) in targets(first).into_iter().enumerate() {
        for aim_at_file in [false, true] {
            let s = Scene::new();
            storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
            let at = s.pod.root().join(&rel);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            let _ = std::fs::remove_dir(&at);
            let aim = if aim_at_file {
                &s.victim_file
            } else {
                &s.victim_dir
            };
            symlink(aim, &at).unwrap();
            let r = s.share("c1");
            if rel == "containers" {
                // The record dir itself: refused, and said so.
                let e = r.expect_err("a symlinked record dir must be refused");
                let msg = cocoon_shim::task::rpc_error::chain(&e);
                assert!(msg.contains("containers"), "{msg}");
            } else {
                let e = r.expect_err(&format!("case {i}: a symlink at {rel} must be refused"));
                let msg = cocoon_shim::task::rpc_error::chain(&e);
                assert!(
                    msg.contains("symlink") || msg.contains("File exists"),
                    "{rel}: {msg}"
                );
            }
            s.assert_host_unchanged();
            storage::unshare_container(&s.pod, "c1");
            let _ = std::fs::remove_file(&at);
            s.assert_host_unchanged();
            s.teardown();
        }
    }
}

#[test]
fn symlinks_swapped_in_during_creates_are_never_followed() {
    let s = Scene::new();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    let n = s.first_bind();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The attacker: keeps turning every path the shim touches into a
    // symlink to the victim dir, as fast as it can.
    let attacker = {
        let stop = stop.clone();
        let paths: Vec<PathBuf> = targets(n)
            .into_iter()
            .filter(|r| r != "containers")
            .map(|r| s.pod.root().join(r))
            .collect();
        let victim = s.victim_dir.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in &paths {
                    let tmp = p.with_extension("swap");
                    // An empty dir the shim just made can be swapped out.
                    let _ = std::fs::remove_dir(p);
                    if symlink(&victim, &tmp).is_ok() {
                        // Replaces an empty dir or a file atomically.
                        if std::fs::rename(&tmp, p).is_ok() {
                            swaps += 1;
                        } else {
                            let _ = std::fs::remove_file(&tmp);
                        }
                    }
                }
            }
            swaps
        })
    };
    let mut refused = 0;
    for _ in 0..200 {
        if s.share("c1").is_err() {
            refused += 1;
        }
        // The attacker's own symlinks land in the victim dir when it swaps
        // a parent and then works below it; the shim creates only dirs and
        // empty files, and mounts.
        s.assert_host_unchanged_but(|e| e.file_type().is_ok_and(|t| t.is_symlink()));
        storage::unshare_container(&s.pod, "c1");
        // Clear what the attacker left for the next round.
        for r in targets(n).iter().rev() {
            let p = s.pod.root().join(r);
            if p.is_symlink() {
                let _ = std::fs::remove_file(&p);
            }
        }
        let c1 = s.pod.root().join("private/c1");
        assert!(
            !storage::has_mounts_below(&c1),
            "a refused create left a mount"
        );
        let _ = std::fs::remove_dir_all(&c1);
        let _ = std::fs::remove_file(s.pod.root().join("containers/c1"));
        // The attacker's own symlinks land in the victim dir when it swaps
        // a parent and then works below it; the shim creates only dirs and
        // empty files, and mounts.
        s.assert_host_unchanged_but(|e| e.file_type().is_ok_and(|t| t.is_symlink()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    assert!(swaps > 0, "the attacker never got a swap in");
    eprintln!("{refused} of 200 creates refused a swapped-in symlink ({swaps} swaps)");
    s.teardown();
}

#[test]
fn teardown_unmounts_only_what_it_mounted() {
    let s = Scene::new();
    // A host mount the attacker names for teardown to unmount.
    let victim_mount = s.dir.path().join("victim-mount");
    std::fs::create_dir_all(&victim_mount).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &victim_mount,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let mounts_before = mount_points();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    s.share("c1").unwrap();
    // Planted where teardown looks (as if the guest could write there) and
    // inside the writable rootfs, where it can.
    let mdir = s.pod.private().join("c1/mounts");
    symlink(&victim_mount, mdir.join("77")).unwrap();
    symlink(&victim_mount, s.pod.shared().join("c1/rootfs/mnt")).unwrap();
    storage::unshare_container(&s.pod, "c1");
    assert!(
        mount_points().contains(&victim_mount),
        "teardown unmounted the host mount the attacker named"
    );
    s.teardown();
    let now = mount_points();
    assert!(
        now.contains(&victim_mount),
        "the host mount was unmounted by the pod teardown"
    );
    let gone: Vec<_> = mounts_before
        .iter()
        .filter(|m| !now.contains(m) && !m.starts_with(s.pod.root()))
        .collect();
    assert!(gone.is_empty(), "{gone:?}");
    nix::mount::umount2(&victim_mount, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

#[test]
fn delete_after_a_killed_shim_kills_the_pod_cgroup_and_removes_everything() {
    let s = Scene::new();
    let cfg = s.config();
    storage::setup_share(&s.pod, storage::ShareFlags::Vm).unwrap();
    s.share("c1").unwrap();
    // The "VMM": a process tree in the pod cgroup, one of them forked off
    // in the background (as virtiofsd's sandbox child is).
    let rel = PathBuf::from(format!("cocoon-test/{}", std::process::id()));
    let cg = PodCgroup::create(&rel).unwrap();
    cg.save(&s.pod.cgroup_record()).unwrap();
    // Whatever the outcome, the test's processes and cgroups go.
    struct Reap(PodCgroup);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.destroy(Duration::from_secs(5));
            let _ = std::fs::remove_dir(self.0.path.parent().unwrap());
        }
    }
    let _reap = Reap(cg.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = rt.block_on(async {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "sleep 1000 & exec sleep 1000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        spawn_into(&mut cmd, &cg).unwrap();
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        std::mem::forget(child);
        pid
    });
    std::fs::write(s.pod.pid_file("vmm"), pid.to_string()).unwrap();
    let mut procs = String::new();
    for _ in 0..100 {
        procs = std::fs::read_to_string(cg.path.join("cgroup.procs")).unwrap();
        if procs.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<i32> = procs.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{procs}");
    // The guest wrote into everything it can write to.
    std::fs::write(s.pod.shared().join("c1/rootfs/junk"), "x").unwrap();
    std::fs::create_dir(s.pod.shared().join("c1/rootfs/junkdir")).unwrap();
    // The bundle as Create left it.
    let rec = cocoon_shim::task::BundleRecord {
        pod_id: "pod1".into(),
        config_path: None,
    };
    std::fs::write(
        s.bundle.join(cocoon_shim::task::BUNDLE_POD_FILE),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    cocoon_shim::cleanup::cleanup_after_killed_shim(&cfg, &s.bundle, "c1", "pod1");
    for p in pids {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|st| !st.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {p} of the pod cgroup survived the delete");
    }
    assert!(!cg.path.exists(), "the pod cgroup was left");
    assert!(!s.pod.root().exists(), "the pod dir was left");
    assert!(!storage::has_mounts_below(s.dir.path()), "mounts left");
    // The image's rootfs got the guest's files (it is the container's), and
    // nothing else on the host changed.
    s.assert_host_unchanged();
}
