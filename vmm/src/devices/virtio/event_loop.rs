//! The one event loop every virtio device thread runs (the idea of Cloud
//! Hypervisor's `epoll_helper`): an epoll over a stop EventFd, the queue
//! kicks (the EventFds KVM signals as ioeventfds on QueueNotify, see
//! [`QueueEvents`]) and whatever descriptors the device's backend watches.
//! The device's [`EventHandler`] serves each event.
//!
//! Every wakeup ends the same way for every device: if a pass used
//! buffers, one interrupt; if a pass failed, the used-ring interrupt (what
//! it used before failing is there) and DEVICE_NEEDS_RESET through
//! [`VirtioInterrupt`] (the one broken flag of a device), the backend's
//! descriptors are dropped from the epoll and from then on kicks are
//! drained and nothing is served until the driver resets the device, which
//! stops the thread. A panic ends in the same flag (`device_thread.rs`).
//!
//! [`Inline`] runs the same passes without a thread, for the unit tests
//! and fuzz targets that drive a handler against `MockSplitQueue`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioInterrupt;

/// What woke the device thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The thread started (before any other event): a restored device
    /// announces what it must, a backend with queued data moves it.
    Started,
    /// The driver notified queue `index`.
    Queue(usize),
    /// A descriptor the handler watches with this token is ready.
    Backend(u32),
    /// [`EventHandler::timeout`] passed without an event.
    Timeout,
}

/// A device's side of the loop.
pub trait EventHandler: Send + 'static {
    /// Why a pass failed (the device then needs a reset).
    type Error: std::error::Error + Send + 'static;

    /// The device, as log lines name it ("virtio-net on tap0").
    fn name(&self) -> String;

    /// Serve `event`; `Ok(true)` when a used ring changed.
    fn handle(&mut self, event: Event, ctl: &mut Control<'_>) -> Result<bool, Self::Error>;

    /// How long the loop may wait for an event before [`Event::Timeout`]
    /// (`None`: forever).
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// The queue kicks of one device, made once with the device and kept for
/// its life: KVM signals them (ioeventfds registered on QueueNotify with
/// the queue index as datamatch), the transport writes them for a notify
/// KVM did not match, and each activation's loop waits on clones.
#[derive(Debug)]
pub struct QueueEvents(Vec<EventFd>);

impl QueueEvents {
    /// One non-blocking EventFd per queue.
    pub fn new(queues: usize) -> io::Result<Self> {
        (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map(QueueEvents)
    }

    /// The EventFds, index = queue.
    pub fn as_slice(&self) -> &[EventFd] {
        &self.0
    }

    /// Clones for a device thread.
    pub fn try_clone(&self) -> io::Result<Vec<EventFd>> {
        self.0.iter().map(EventFd::try_clone).collect()
    }
}

const TOKEN_STOP: u64 = u64::MAX;
/// Most queues one loop serves (their kicks are a bit mask per wakeup).
pub const MAX_QUEUES: usize = 64;
const TOKEN_BACKEND: u64 = 1 << 32;

/// What a handler may change about the loop while it serves an event.
pub struct Control<'a> {
    epoll: &'a Epoll,
    kicks: &'a [EventFd],
    state: &'a mut LoopState,
}

impl Control<'_> {
    /// Wake the loop with [`Event::Backend`]`(token)` when `fd` has `events`.
    pub fn watch(&mut self, fd: RawFd, events: EventSet, token: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, TOKEN_BACKEND | u64::from(token)),
        )?;
        self.state.watched.push(fd);
        Ok(())
    }

    /// Stop watching `fd`.
    pub fn unwatch(&mut self, fd: RawFd) -> io::Result<()> {
        self.state.watched.retain(|&w| w != fd);
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Start waking on the queue kicks (a loop started with
    /// `watch_queues: false`, whose kicks another process served).
    pub fn watch_queues(&mut self) -> io::Result<()> {
        if !self.state.kicks_watched {
            add_kicks(self.epoll, self.kicks)?;
            self.state.kicks_watched = true;
        }
        Ok(())
    }
}

fn add_kicks(epoll: &Epoll, kicks: &[EventFd]) -> io::Result<()> {
    for (i, k) in kicks.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            k.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    Ok(())
}

#[derive(Debug)]
struct LoopState {
    /// Backend descriptors in the epoll.
    watched: Vec<RawFd>,
    kicks_watched: bool,
    /// False once a pass failed (or the device already needed a reset).
    serving: bool,
}

/// Everything a device thread's loop owns, made at activation (where a
/// failure is the activation's error) and moved to the thread.
pub struct LoopParts {
    epoll: Epoll,
    /// Kept open while its registration is in the epoll.
    _stop: EventFd,
    kicks: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    state: LoopState,
}

impl LoopParts {
    /// A loop over `kicks` (clones of the device's [`QueueEvents`]),
    /// waking on them from the start when `watch_queues`. Returns the
    /// parts and the stop EventFd for the owner.
    pub fn new(
        kicks: Vec<EventFd>,
        interrupt: Arc<VirtioInterrupt>,
        watch_queues: bool,
    ) -> io::Result<(Self, EventFd)> {
        if kicks.len() > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a device loop serves at most {MAX_QUEUES} queues"),
            ));
        }
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        if watch_queues {
            add_kicks(&epoll, &kicks)?;
        }
        let owner_stop = stop.try_clone()?;
        let serving = !interrupt.needs_reset();
        Ok((
            LoopParts {
                epoll,
                _stop: stop,
                kicks,
                interrupt,
                state: LoopState {
                    watched: Vec::new(),
                    kicks_watched: watch_queues,
                    serving,
                },
            },
            owner_stop,
        ))
    }

    /// The interrupt the loop raises.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// One pass of `handler` over `event`: whether buffers were used. A
    /// failure raises DEVICE_NEEDS_RESET, drops the backend descriptors
    /// and ends serving.
    fn pass<H: EventHandler>(&mut self, handler: &mut H, event: Event) -> bool {
        if !self.state.serving {
            return false;
        }
        let mut ctl = Control {
            epoll: &self.epoll,
            kicks: &self.kicks,
            state: &mut self.state,
        };
        match handler.handle(event, &mut ctl) {
            Ok(used) => used,
            Err(e) => {
                // Chains used before the failure (and the bad one, handed
                // back empty) are in the used ring: the driver is told.
                self.interrupt.signal_used_queue();
                self.interrupt.signal_needs_reset();
                self.state.serving = false;
                for fd in std::mem::take(&mut self.state.watched) {
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
                crate::limited!(
                    error,
                    device = %handler.name(),
                    error = &e as &dyn std::error::Error,
                    "virtio device stopped: it needs a reset"
                );
                false
            }
        }
    }

    /// Serve events until the stop EventFd fires; the handler comes back.
    pub fn run<H: EventHandler>(mut self, mut handler: H) -> H {
        let mut events = vec![EpollEvent::default(); 8 + self.kicks.len()];
        if self.pass(&mut handler, Event::Started) {
            self.interrupt.signal_used_queue();
        }
        loop {
            let timeout = match handler.timeout() {
                Some(d) if self.state.serving => {
                    // Round up: a 0 ms wait for a 0.4 ms timeout would spin.
                    let ms = d.as_micros().div_ceil(1000).min(60_000);
                    ms as i32
                }
                _ => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.interrupt.signal_needs_reset();
                    tracing::error!(device = %handler.name(), error = %e, "virtio device thread cannot wait for events; it stops");
                    return handler;
                }
            };
            let mut used = false;
            if n == 0 {
                used |= self.pass(&mut handler, Event::Timeout);
            }
            // Queues first (in index order, once each), then the backend.
            let mut queues = 0u64; // bit i: queue i was kicked
            let mut backend = Vec::new();
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return handler,
                    t if t & TOKEN_BACKEND != 0 => backend.push(t as u32),
                    i => {
                        if let Some(k) = self.kicks.get(i as usize) {
                            let _ = k.read();
                            queues |= 1 << i;
                        }
                    }
                }
            }
            for i in 0..self.kicks.len() {
                if queues & (1 << i) != 0 {
                    used |= self.pass(&mut handler, Event::Queue(i));
                }
            }
            for t in backend {
                used |= self.pass(&mut handler, Event::Backend(t));
            }
            if used {
                self.interrupt.signal_used_queue();
            }
        }
    }
}

/// A handler driven without a thread: each call is one pass, ending the
/// way the loop ends it (interrupt, or DEVICE_NEEDS_RESET on an error).
pub struct Inline<H: EventHandler> {
    /// The handler.
    pub handler: H,
    parts: LoopParts,
}

impl<H: EventHandler> Inline<H> {
    /// Drive `handler`, raising `interrupt`; `queues` kicks are made.
    pub fn new(handler: H, interrupt: Arc<VirtioInterrupt>, queues: usize) -> io::Result<Self> {
        let kicks = QueueEvents::new(queues)?.try_clone()?;
        let (parts, _stop) = LoopParts::new(kicks, interrupt, true)?;
        Ok(Inline { handler, parts })
    }

    /// Serve `event` as the loop would; returns whether the driver was
    /// interrupted for used buffers.
    pub fn event(&mut self, event: Event) -> bool {
        let used = self.parts.pass(&mut self.handler, event);
        if used {
            self.parts.interrupt.signal_used_queue();
        }
        used
    }

    /// Whether passes are still served (no pass failed).
    pub fn is_serving(&self) -> bool {
        self.parts.state.serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bad")]
    struct Bad;

    /// Counts events; fails on queue 1; watches a pipe-like EventFd.
    struct Probe {
        seen: Arc<std::sync::Mutex<Vec<Event>>>,
        backend: EventFd,
    }

    impl EventHandler for Probe {
        type Error = Bad;
        fn name(&self) -> String {
            "probe".into()
        }
        fn handle(&mut self, event: Event, ctl: &mut Control<'_>) -> Result<bool, Bad> {
            self.seen.lock().unwrap().push(event);
            match event {
                Event::Started => {
                    ctl.watch(self.backend.as_raw_fd(), EventSet::IN, 7)
                        .unwrap();
                    Ok(false)
                }
                Event::Backend(_) => {
                    let _ = self.backend.read();
                    Ok(true)
                }
                Event::Queue(1) => Err(Bad),
                _ => Ok(true),
            }
        }
    }

    fn wait_for(f: impl Fn() -> bool) {
        crate::devices::virtio::test_chains::wait_until("the event loop", f)
    }

    #[test]
    fn kicks_backend_and_errors_go_through_one_path() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        let events = QueueEvents::new(2).unwrap();
        let (parts, stop) =
            LoopParts::new(events.try_clone().unwrap(), interrupt.clone(), true).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let backend = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = Probe {
            seen: seen.clone(),
            backend: backend.try_clone().unwrap(),
        };
        let t = std::thread::spawn(move || parts.run(probe));
        let count = |e: Event| seen.lock().unwrap().iter().filter(|&&s| s == e).count();
        wait_for(|| count(Event::Started) == 1);
        events.as_slice()[0].write(1).unwrap();
        wait_for(|| count(Event::Queue(0)) == 1);
        wait_for(|| irq.read().is_ok());
        backend.write(1).unwrap();
        wait_for(|| count(Event::Backend(7)) == 1);
        assert!(!interrupt.needs_reset());
        events.as_slice()[1].write(1).unwrap();
        wait_for(|| interrupt.needs_reset());
        // Broken: kicks are drained, nothing more is served.
        events.as_slice()[0].write(1).unwrap();
        backend.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count(Event::Queue(0)), 1);
        assert_eq!(count(Event::Backend(7)), 1);
        stop.write(1).unwrap();
        let probe = t.join().unwrap();
        assert_eq!(probe.name(), "probe");
    }

    #[test]
    fn inline_passes_interrupt_and_stop_after_an_error() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        let probe = Probe {
            seen: Default::default(),
            backend: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let mut d = Inline::new(probe, interrupt.clone(), 2).unwrap();
        assert!(!d.event(Event::Started));
        assert!(d.event(Event::Queue(0)));
        assert_eq!(irq.read().unwrap(), 1);
        assert!(!d.event(Event::Queue(1)));
        assert!(interrupt.needs_reset());
        assert!(!d.is_serving());
        assert!(!d.event(Event::Queue(0)), "a broken device serves nothing");
    }
}
