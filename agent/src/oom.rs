//! OOM kill notifications, pushed by the kernel (no polling).
//!
//! cgroup v2 (the guest): one inotify instance watches every container's
//! `memory.events`; the kernel signals a modification whenever a counter
//! changes, and an increase of `oom_kill` is an event. cgroup v1 (only on a
//! hybrid host, where the host tests run): an eventfd registered through
//! `cgroup.event_control` on `memory.oom_control`.
//! Events queue until the shim collects them with GetOOMEvent.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};

use crate::container::lock;

#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("inotify")]
    Inotify(#[source] nix::Error),
    #[error("eventfd")]
    EventFd(#[source] nix::Error),
    #[error("registering with {0}")]
    Register(PathBuf, #[source] std::io::Error),
    #[error("registering with the async reactor")]
    Async(#[source] std::io::Error),
    #[error("the OOM event queue is closed")]
    Closed,
}

struct Watched {
    id: String,
    file: PathBuf,
    kills: u64,
}

/// The sending side of the event queue, counting what is not collected yet.
#[derive(Clone)]
struct Reporter {
    tx: mpsc::UnboundedSender<String>,
    queued: Arc<AtomicUsize>,
    collected: Arc<Notify>,
}

impl Reporter {
    fn send(&self, id: String) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(id).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct WatchedV1 {
    task: tokio::task::JoinHandle<()>,
    control: PathBuf,
    /// The highest `oom_kill` count already reported; shared with the task.
    kills: Arc<AtomicU64>,
}

/// Raises `seen` to `now`; true if this call raised it (and so must report).
fn raise(seen: &AtomicU64, now: u64) -> bool {
    seen.fetch_max(now, Ordering::AcqRel) < now
}

struct RawInotify(Inotify);

impl AsRawFd for RawInotify {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct RawEventFd(EventFd);

impl AsRawFd for RawEventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct OomWatcher {
    tx: Reporter,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    inotify: Option<Arc<AsyncFd<RawInotify>>>,
    v2: Mutex<HashMap<WatchDescriptor, Watched>>,
    /// v1: the task that waits on each container's eventfd.
    v1: Mutex<HashMap<String, WatchedV1>>,
    unified: bool,
}

/// The `oom_kill` counter in a `memory.events` or `memory.oom_control` file.
pub fn read_oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

impl OomWatcher {
    /// Must run inside the tokio runtime.
    pub fn new() -> Result<Arc<Self>, OomError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
        let inotify = if unified {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(OomError::Inotify)?;
            // SAFETY: the inotify fd is owned by the RawInotify inside the
            // AsyncFd and stays open, unchanged, for the AsyncFd's lifetime.
            let afd = unsafe { AsyncFd::register(RawInotify(ino)) }
                .map_err(|e| OomError::Async(std::io::Error::other(e.to_string())))?;
            Some(Arc::new(afd))
        } else {
            None
        };
        let me = Arc::new(OomWatcher {
            tx: Reporter {
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                collected: Arc::new(Notify::new()),
            },
            rx: tokio::sync::Mutex::new(rx),
            inotify,
            v2: Mutex::new(HashMap::new()),
            v1: Mutex::new(HashMap::new()),
            unified,
        });
        if let Some(ino) = me.inotify.clone() {
            let weak = Arc::downgrade(&me);
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = ino.readable().await else {
                        return;
                    };
                    let events = match guard
                        .try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from))
                    {
                        Ok(Ok(ev)) => ev,
                        Ok(Err(_)) | Err(_) => continue,
                    };
                    let Some(me) = weak.upgrade() else { return };
                    for ev in events {
                        me.check_v2(ev.wd);
                    }
                }
            });
        }
        Ok(me)
    }

    fn check_v2(&self, wd: WatchDescriptor) {
        let mut map = lock(&self.v2);
        if let Some(w) = map.get_mut(&wd) {
            if let Some(k) = read_oom_kills(&w.file) {
                if k > w.kills {
                    w.kills = k;
                    tracing::warn!(id = %w.id, kills = k, "container OOM kill");
                    self.tx.send(w.id.clone());
                }
            }
        }
    }

    /// Starts watching a container's cgroup (`cgroup_path` is relative to
    /// the cgroup mount). Failures are logged: a missing memory controller
    /// must not fail the container.
    pub fn watch(&self, id: &str, cgroup_path: &Path) {
        let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        let res = if self.unified {
            self.watch_v2(
                id,
                &Path::new(DEFAULT_CGROUP_ROOT)
                    .join(rel)
                    .join("memory.events"),
            )
        } else {
            self.watch_v1(id, &Path::new(DEFAULT_CGROUP_ROOT).join("memory").join(rel))
        };
        if let Err(e) = res {
            tracing::warn!(id, error = %crate::error_code::chain(&e), "no OOM notifications");
        }
    }

    fn watch_v2(&self, id: &str, file: &Path) -> Result<(), OomError> {
        let ino = self.inotify.as_ref().ok_or(OomError::Closed)?;
        let wd = ino
            .get_ref()
            .0
            .add_watch(file, AddWatchFlags::IN_MODIFY)
            .map_err(OomError::Inotify)?;
        let kills = read_oom_kills(file).unwrap_or(0);
        lock(&self.v2).insert(
            wd,
            Watched {
                id: id.to_string(),
                file: file.to_path_buf(),
                kills,
            },
        );
        Ok(())
    }

    fn watch_v1(&self, id: &str, dir: &Path) -> Result<(), OomError> {
        let control = dir.join("memory.oom_control");
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(OomError::EventFd)?;
        let ofd =
            std::fs::File::open(&control).map_err(|e| OomError::Register(control.clone(), e))?;
        let line = format!("{} {}", efd.as_fd().as_raw_fd(), ofd.as_raw_fd());
        std::fs::write(dir.join("cgroup.event_control"), line)
            .map_err(|e| OomError::Register(dir.join("cgroup.event_control"), e))?;
        // SAFETY: the eventfd is owned by the RawEventFd inside the AsyncFd
        // and stays open, unchanged, for the AsyncFd's lifetime.
        let afd = unsafe { AsyncFd::register(RawEventFd(efd)) }
            .map_err(|e| OomError::Async(std::io::Error::other(e.to_string())))?;
        let tx = self.tx.clone();
        let id_owned = id.to_string();
        let kills = Arc::new(AtomicU64::new(read_oom_kills(&control).unwrap_or(0)));
        let seen = kills.clone();
        let file = control.clone();
        let task = tokio::spawn(async move {
            let _keep_open = ofd;
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    return;
                };
                if guard
                    .try_io(|fd| fd.get_ref().0.read().map_err(std::io::Error::from))
                    .is_err()
                {
                    continue;
                }
                // The kernel signals when the cgroup goes under OOM, before
                // the victim is killed and counted: give the kill a moment.
                // (Also fires when the cgroup is removed.) A kill counted
                // later is still reported by `unwatch`.
                for _ in 0..50 {
                    match read_oom_kills(&file) {
                        None => return,
                        Some(now) if raise(&seen, now) => {
                            tracing::warn!(id = %id_owned, kills = now, "container OOM kill");
                            tx.send(id_owned.clone());
                            break;
                        }
                        Some(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                }
            }
        });
        lock(&self.v1).insert(
            id.to_string(),
            WatchedV1 {
                task,
                control,
                kills,
            },
        );
        Ok(())
    }

    /// Stops watching a container. Call it before the cgroup is removed: a
    /// kill the kernel counted but the watcher has not reported yet (the
    /// notification races with the container's exit) is reported here.
    pub fn unwatch(&self, id: &str) {
        let mut map = lock(&self.v2);
        let wds: Vec<WatchDescriptor> = map
            .iter()
            .filter(|(_, w)| w.id == id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            if let Some(w) = map.remove(&wd) {
                if read_oom_kills(&w.file).is_some_and(|k| k > w.kills) {
                    tracing::warn!(id, "container OOM kill (counted at removal)");
                    self.tx.send(w.id);
                }
            }
            if let Some(ino) = &self.inotify {
                let _ = ino.get_ref().0.rm_watch(wd);
            }
        }
        drop(map);
        if let Some(w) = lock(&self.v1).remove(id) {
            w.task.abort();
            if read_oom_kills(&w.control).is_some_and(|k| raise(&w.kills, k)) {
                tracing::warn!(id, "container OOM kill (counted at removal)");
                self.tx.send(id.to_string());
            }
        }
    }

    /// The next OOM event, waiting for one.
    pub async fn next(&self) -> Result<String, OomError> {
        let id = self.rx.lock().await.recv().await.ok_or(OomError::Closed)?;
        self.tx.queued.fetch_sub(1, Ordering::AcqRel);
        self.tx.collected.notify_waiters();
        Ok(id)
    }

    /// Waits until every queued event has been collected, at most `limit`:
    /// the sandbox is destroyed only after the shim has its last events.
    pub async fn drain(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let collected = self.tx.collected.notified();
            if self.tx.queued.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, collected).await.is_err() {
                return self.tx.queued.load(Ordering::Acquire) == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(
            &f,
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(read_oom_kills(&f), Some(2));
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n").unwrap();
        assert_eq!(read_oom_kills(&f), Some(7));
        std::fs::write(&f, "oom_kill_disable 0\n").unwrap();
        assert_eq!(read_oom_kills(&f), None);
    }

    #[test]
    fn a_kill_is_reported_once_by_whoever_sees_it_first() {
        let seen = AtomicU64::new(1);
        assert!(!raise(&seen, 1));
        assert!(raise(&seen, 2));
        assert!(!raise(&seen, 2));
        assert!(!raise(&seen, 1));
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }

    /// Watches `file` as container "c"; a v1 watch needs a real cgroup, so
    /// there the map entry stands in for it.
    fn watch(w: &OomWatcher, file: &Path) {
        if w.unified {
            w.watch_v2("c", file).unwrap();
        } else {
            lock(&w.v1).insert(
                "c".into(),
                WatchedV1 {
                    task: tokio::spawn(std::future::pending()),
                    control: file.to_path_buf(),
                    kills: Arc::new(AtomicU64::new(0)),
                },
            );
        }
    }

    #[tokio::test]
    async fn unwatch_reports_a_kill_counted_after_the_last_notification() {
        let w = OomWatcher::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom 0\noom_kill 0\n").unwrap();
        watch(&w, &file);
        // Nothing new: nothing reported.
        std::fs::write(&file, "oom 1\noom_kill 0\n").unwrap();
        w.unwatch("c");
        assert!(w.rx.lock().await.try_recv().is_err());
        // Counted, then removed before the watcher looked.
        watch(&w, &file);
        std::fs::write(&file, "oom 2\noom_kill 1\n").unwrap();
        w.unwatch("c");
        assert!(!w.drain(std::time::Duration::from_millis(20)).await);
        assert_eq!(w.next().await.unwrap(), "c");
        assert!(w.drain(std::time::Duration::from_millis(20)).await);
    }
}
