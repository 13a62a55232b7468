//! Bounds every vhost-user request in time. The `vhost` crate retries
//! `EAGAIN` forever, so a socket timeout would turn a stuck backend into a
//! busy loop; instead a small thread shuts the socket down when a request
//! runs past its deadline, which makes the blocked call fail at once.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::FsError;

#[derive(Default)]
struct State {
    deadline: Option<(Instant, &'static str)>,
    fired: Option<&'static str>,
    stop: bool,
}

/// Shuts `socket` down if an armed request outlives its timeout.
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Disarms the watchdog when dropped.
pub struct Armed<'a>(&'a Watchdog);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).deadline = None;
        cv.notify_all();
    }
}

impl Watchdog {
    /// Watch `socket` (a clone of the connection's socket).
    pub fn new(socket: UnixStream, timeout: Duration) -> Result<Self, FsError> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                // Made by the main thread before its own filter.
                if let Err(e) = crate::seccomp::enter(crate::seccomp::ThreadKind::FsWatchdog) {
                    tracing::error!(error = %e, "the vhost-user watchdog runs without its filter");
                    return;
                }
                watch(&s, &socket)
            })
            .map_err(FsError::resource("watchdog thread"))?;
        Ok(Watchdog {
            shared,
            timeout,
            thread: Some(thread),
        })
    }

    /// Start timing request `what` until the returned guard is dropped.
    pub fn arm(&self, what: &'static str) -> Armed<'_> {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).deadline =
            Some((Instant::now() + self.timeout, what));
        cv.notify_all();
        Armed(self)
    }

    /// The request that timed out, if one did.
    pub fn fired(&self) -> Option<&'static str> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fired
    }
}

fn watch(shared: &(Mutex<State>, Condvar), socket: &UnixStream) {
    let (lock, cv) = shared;
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if st.stop {
            return;
        }
        match st.deadline {
            None => st = cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some((deadline, what)) => {
                let now = Instant::now();
                if now >= deadline {
                    tracing::error!(
                        request = what,
                        "vhost-user backend did not answer in time; closing the connection"
                    );
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    st.fired = Some(what);
                    st.deadline = None;
                } else {
                    st = cv
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_late_request_closes_the_socket() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let dog = Watchdog::new(ours.try_clone().unwrap(), Duration::from_millis(50)).unwrap();
        let start = Instant::now();
        {
            let _armed = dog.arm("GET_FEATURES");
            // A backend that never answers: the read ends when the dog bites.
            let mut buf = [0u8; 1];
            assert_eq!(ours.read(&mut buf).unwrap(), 0);
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(dog.fired(), Some("GET_FEATURES"));
        drop(theirs);
    }

    #[test]
    fn a_prompt_request_leaves_it_open() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let dog = Watchdog::new(ours.try_clone().unwrap(), Duration::from_millis(200)).unwrap();
        drop(dog.arm("SET_OWNER"));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(dog.fired(), None);
        drop(dog);
        drop((ours, theirs));
    }
}
