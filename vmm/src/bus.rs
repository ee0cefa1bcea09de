// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MMIO dispatch for the devices emulated in user space (just the UART;
//! the GIC is in the kernel).

use std::io::Write;

use crate::layout::{SERIAL_BASE, SERIAL_SIZE};
use crate::serial::{SerialDevice, SerialError};

/// The user-space MMIO devices of the machine.
pub struct MmioBus<W: Write> {
    serial: SerialDevice<W>,
}

impl<W: Write> MmioBus<W> {
    /// Builds the bus around the UART.
    pub fn new(serial: SerialDevice<W>) -> Self {
        MmioBus { serial }
    }

    /// Returns the UART.
    pub fn serial(&self) -> &SerialDevice<W> {
        &self.serial
    }

    fn serial_offset(addr: u64) -> Option<u64> {
        addr.checked_sub(SERIAL_BASE).filter(|o| *o < SERIAL_SIZE)
    }

    /// Handles a guest read. Returns false (and zero-fills `data`) when no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match Self::serial_offset(addr) {
            Some(off) => {
                self.serial.mmio_read(off, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Handles a guest write. Returns `Ok(false)` when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<bool, SerialError> {
        match Self::serial_offset(addr) {
            Some(off) => self.serial.mmio_write(off, data).map(|()| true),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn bus() -> MmioBus<Vec<u8>> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        MmioBus::new(SerialDevice::new(evt, Vec::new()))
    }

    #[test]
    fn dispatch() {
        let bus = bus();
        let mut data = [0xffu8; 1];
        // LSR of the UART.
        assert!(bus.read(SERIAL_BASE + 5, &mut data));
        assert_eq!(data[0] & 0x60, 0x60);
        assert!(bus.write(SERIAL_BASE, b"a").unwrap());
        // Last byte of the window still belongs to the UART (unused register).
        assert!(bus.read(SERIAL_BASE + SERIAL_SIZE - 1, &mut data));

        let mut data = [0xffu8; 4];
        assert!(!bus.read(SERIAL_BASE + SERIAL_SIZE, &mut data));
        assert_eq!(data, [0; 4]);
        assert!(!bus.read(SERIAL_BASE - 1, &mut data));
        assert!(!bus.write(0, b"x").unwrap());
        assert!(!bus.write(u64::MAX, b"x").unwrap());
    }
}
