//! The 16550 console on COM1 (vm-superio), its output sink with a kernel
//! panic detector, and the stdin feeder.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::ExitState;
use crate::snapshot::SerialSnapshot;

/// The line Linux prints when it panics.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest partial line kept for panic detection.
const LINE_CAPACITY: usize = 256;

/// Raises the serial IRQ by writing to an EventFd registered as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Wraps the console sink and watches the text for a kernel panic line,
/// keeping at most `LINE_CAPACITY` bytes of the current line.
pub struct PanicWatcher {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    exit: Arc<ExitState>,
}

impl PanicWatcher {
    /// Watch output going to `inner`; report panics to `exit`.
    pub fn new(inner: Box<dyn Write + Send>, exit: Arc<ExitState>) -> Self {
        PanicWatcher {
            inner,
            line: Vec::with_capacity(LINE_CAPACITY),
            exit,
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.line.clear();
                continue;
            }
            if self.line.len() == LINE_CAPACITY {
                // Keep a tail long enough for a marker that straddles the cut.
                self.line.drain(..LINE_CAPACITY - PANIC_MARKER.len());
            }
            self.line.push(b);
            #[cfg(debug_assertions)]
            if self.line.ends_with(crate::test_trigger::MARKER) {
                crate::test_trigger::fire();
            }
            if self.line.ends_with(PANIC_MARKER) && !self.exit.panic_seen() {
                tracing::warn!("guest kernel panic detected on the console");
                self.exit.note_panic();
            }
        }
    }
}

impl Write for PanicWatcher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.observe(buf);
        // The guest must never block or fail on a broken sink.
        if let Err(e) = self.inner.write_all(buf) {
            crate::limited!(warn, error = %e, "console output failed");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Err(e) = self.inner.flush() {
            crate::limited!(warn, error = %e, "console flush failed");
        }
        Ok(())
    }
}

/// A snapshot's UART state was refused (an over-long input FIFO, or the
/// interrupt it has pending could not be raised).
#[derive(Debug, thiserror::Error)]
#[error("cannot restore the serial port: {0}")]
pub struct SerialStateError(String);

/// The vm-superio serial type we use.
pub type SerialInner = Serial<EventFdTrigger, NoEvents, PanicWatcher>;

/// COM1 as a bus device.
pub struct SerialDevice {
    serial: SerialInner,
}

impl SerialDevice {
    /// A UART raising its interrupt through `irq_evt` and writing to `out`.
    pub fn new(irq_evt: EventFd, out: Box<dyn Write + Send>, exit: Arc<ExitState>) -> Self {
        SerialDevice {
            serial: Serial::new(EventFdTrigger(irq_evt), PanicWatcher::new(out, exit)),
        }
    }

    /// A UART like [`SerialDevice::new`]'s, with the registers of a
    /// snapshot (a pending interrupt is raised again).
    pub fn with_state(
        irq_evt: EventFd,
        out: Box<dyn Write + Send>,
        exit: Arc<ExitState>,
        state: &SerialSnapshot,
    ) -> Result<Self, SerialStateError> {
        let state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(
            &state,
            EventFdTrigger(irq_evt),
            NoEvents,
            PanicWatcher::new(out, exit),
        )
        .map_err(|e| SerialStateError(format!("{e:?}")))?;
        Ok(SerialDevice { serial })
    }

    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Flush the console sink.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }

    /// Queue input bytes for the guest; returns how many were accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                crate::limited!(warn, error = ?e, "cannot queue console input");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            crate::limited!(debug, len = data.len(), "serial read with bad size");
            data.fill(0xff);
            return;
        }
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            crate::limited!(debug, len = data.len(), "serial write with bad size");
            return;
        }
        if let Err(e) = self.serial.write(offset as u8, data[0]) {
            crate::limited!(warn, error = ?e, "serial write failed");
        }
    }
}

/// Copy stdin into the serial port until stdin closes or `exit` stops.
/// Runs on its own thread; a blocked `read` is left behind at exit.
pub fn spawn_stdin_feeder(
    serial: Arc<Mutex<SerialDevice>>,
    exit: Arc<ExitState>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::enter(crate::seccomp::ThreadKind::SerialInput) {
                tracing::error!(error = %e, "no stdin input to the guest: its filter failed");
                return;
            }
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reads into a stack buffer of the given length from fd 0.
                let n =
                    unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 || exit.stopping() {
                    return;
                }
                let mut rest = &buf[..n as usize];
                while !rest.is_empty() && !exit.stopping() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained its FIFO yet.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SharedBuffer;

    fn device() -> (SerialDevice, SharedBuffer, Arc<ExitState>, EventFd) {
        let buf = SharedBuffer::new();
        let exit = Arc::new(ExitState::new());
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(
            evt.try_clone().unwrap(),
            Box::new(buf.clone()),
            exit.clone(),
        );
        (dev, buf, exit, evt)
    }

    #[test]
    fn output_reaches_the_sink() {
        let (mut dev, buf, exit, _) = device();
        for b in b"hello\n" {
            dev.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(buf.contents(), b"hello\n");
        assert!(!exit.panic_seen());
    }

    #[test]
    fn detects_panic_line() {
        let (mut dev, _, exit, _) = device();
        for b in b"[    1.0] Kernel panic - not syncing: No working init found.\n" {
            dev.write(0x3f8, 0, &[*b]);
        }
        assert!(exit.panic_seen());
    }

    #[test]
    fn detects_panic_split_across_line_buffer_cut() {
        let exit = Arc::new(ExitState::new());
        let mut w = PanicWatcher::new(Box::new(io::sink()), exit.clone());
        let mut text = vec![b'x'; LINE_CAPACITY - 10];
        text.extend_from_slice(PANIC_MARKER);
        for b in &text {
            w.write_all(&[*b]).unwrap();
        }
        assert!(exit.panic_seen());
        assert!(w.line.len() <= LINE_CAPACITY);
    }

    #[test]
    fn long_lines_stay_bounded() {
        let exit = Arc::new(ExitState::new());
        let mut w = PanicWatcher::new(Box::new(io::sink()), exit.clone());
        w.write_all(&vec![b'a'; 100_000]).unwrap();
        assert!(w.line.len() <= LINE_CAPACITY);
        assert!(!exit.panic_seen());
    }

    #[test]
    fn input_raises_interrupt() {
        let (mut dev, _, _, evt) = device();
        // Enable the "received data available" interrupt (IER bit 0).
        dev.write(0x3f8, 1, &[1]);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0x3f8, 0, &mut b);
        assert_eq!(b[0], b'a');
    }

    #[test]
    fn bad_sizes_are_ignored() {
        let (mut dev, buf, _, _) = device();
        let mut two = [0u8; 2];
        dev.read(0x3f8, 0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0x3f8, 0, b"ab");
        assert!(buf.contents().is_empty());
    }
}
