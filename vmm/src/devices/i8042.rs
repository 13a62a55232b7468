//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k`
//! (command 0xFE on port 0x64 resets the machine) and for a driver probe
//! that polls for controller replies. There is no keyboard and no IRQ.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::arch::x86_64::layout::{I8042_COMMAND_PORT, I8042_DATA_PORT};
use crate::exit::ExitState;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

/// What the next data-port write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Ctr,
    KbdOutput,
}

/// The i8042 controller on ports 0x60 and 0x64.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitState>,
    ctr: u8,
    output: Option<u8>,
    pending: Pending,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<ExitState>) -> Self {
        I8042 {
            exit,
            ctr: CTR_AUX_DISABLED,
            output: None,
            pending: Pending::None,
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_some() {
            STATUS_OUTPUT_FULL
        } else {
            0
        };
        full | STATUS_SYSTEM_FLAG
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_RESET_CPU => {
                tracing::info!("guest requested a reset through the i8042");
                self.exit.request_reset();
            }
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.pending = Pending::Ctr,
            CMD_WRITE_KBD_OUTPUT => self.pending = Pending::KbdOutput,
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_KBD_TEST => self.output = Some(KBD_TEST_OK),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            other => crate::limited!(debug, cmd = other, "ignoring i8042 command"),
        }
    }

    fn data(&mut self, value: u8) {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::Ctr => self.ctr = value,
            Pending::KbdOutput => self.output = Some(value),
            // A keyboard command: there is no keyboard, but acknowledge it.
            Pending::None => self.output = Some(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match (base + offset) as u16 {
            I8042_COMMAND_PORT => *first = self.status(),
            I8042_DATA_PORT => *first = self.output.take().unwrap_or(0),
            _ => {}
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match (base + offset) as u16 {
            I8042_COMMAND_PORT => self.command(value),
            I8042_DATA_PORT => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;
    use std::time::Duration;

    fn read(dev: &mut I8042, port: u16) -> u8 {
        let mut b = [0xffu8];
        dev.read(u64::from(port), 0, &mut b);
        b[0]
    }

    #[test]
    fn status_says_input_buffer_empty() {
        let mut dev = I8042::new(Arc::new(ExitState::new()));
        assert_eq!(read(&mut dev, 0x64) & 0x2, 0);
        assert_eq!(read(&mut dev, 0x64) & 0x1, 0);
    }

    #[test]
    fn reset_command_requests_reset() {
        let exit = Arc::new(ExitState::new());
        let mut dev = I8042::new(exit.clone());
        dev.write(0x64, 0, &[0xfe]);
        assert_eq!(exit.wait(Some(Duration::ZERO)), Some(ExitReason::Reset));
    }

    #[test]
    fn controller_replies() {
        let mut dev = I8042::new(Arc::new(ExitState::new()));
        dev.write(0x64, 0, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, 0x64) & 1, 1);
        assert_eq!(read(&mut dev, 0x60), 0x55);
        assert_eq!(read(&mut dev, 0x64) & 1, 0);
        dev.write(0x64, 0, &[CMD_WRITE_CTR]);
        dev.write(0x60, 0, &[0x47]);
        dev.write(0x64, 0, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, 0x60), 0x47);
        dev.write(0x60, 0, &[0xf2]);
        assert_eq!(read(&mut dev, 0x60), KBD_ACK);
        // Unknown commands and empty accesses are harmless.
        dev.write(0x64, 0, &[0x12]);
        dev.write(0x64, 0, &[]);
    }
}
