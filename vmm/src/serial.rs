// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The 16550 UART on the MMIO bus, backed by vm-superio.
//!
//! Registers are one byte wide and one byte apart (`reg-shift` 0), so the
//! MMIO offset is the register index. The interrupt is an eventfd that the
//! VMM registers as an irqfd for the UART's SPI.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use thiserror::Error;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::snapshot::UartState;
use vmm_sys_util::eventfd::EventFd;

/// Number of 16550 registers.
const REGISTER_COUNT: u64 = 8;

/// A console line with which the guest asks for a userfaultfd eviction pass
/// now (the benchmark does, before each measured round). Only heeded when
/// the evictor runs (`--uffd-evict-ms`).
pub const EVICT_REQUEST: &[u8] = b"apf-vmm: evict";

/// The byte the VMM puts on the UART's input once that pass is done (ACK).
pub const EVICT_DONE: u8 = 0x06;

/// Longest line kept for [`LineTap`]'s hook; the rest of a longer line is
/// still written out, but not seen by the hook.
const MAX_LINE: usize = 256;

/// What the VMM does with each line of the guest's console.
pub type LineHook = Box<dyn FnMut(&[u8]) + Send>;

/// The VMM's console: the guest's output goes to standard output, and the
/// VMM looks at each line.
pub type Console = LineTap<io::Stdout, LineHook>;

/// The guest's console output: passed through to `out`, and each completed
/// line (without its end of line) shown to `hook`.
pub struct LineTap<W: Write, H: FnMut(&[u8])> {
    out: W,
    line: Vec<u8>,
    hook: H,
}

impl<W: Write, H: FnMut(&[u8])> LineTap<W, H> {
    /// Wraps `out`.
    pub fn new(out: W, hook: H) -> Self {
        LineTap {
            out,
            line: Vec::with_capacity(MAX_LINE),
            hook,
        }
    }
}

impl<W: Write, H: FnMut(&[u8])> Write for LineTap<W, H> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    (self.hook)(&self.line);
                    self.line.clear();
                }
                b'\r' => {}
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Interrupt trigger writing to an eventfd (an irqfd on the VM).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        self.0.write(1)
    }
}

/// Errors from guest accesses to the UART.
#[derive(Debug, Error)]
pub enum SerialError {
    /// Output or interrupt injection failed.
    #[error("serial: {0:?}")]
    Device(vm_superio::serial::Error<io::Error>),
}

/// A 16550 UART at a fixed MMIO window, shared by all vCPU threads.
pub struct SerialDevice<W: Write> {
    inner: Mutex<Serial<EventFdTrigger, NoEvents, W>>,
}

impl<W: Write> SerialDevice<W> {
    /// Creates the UART; `irq` is signalled whenever the interrupt line rises.
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialDevice {
            inner: Mutex::new(Serial::new(EventFdTrigger::new(irq), out)),
        }
    }

    /// Recreates the UART of a snapshot.
    pub fn from_state(irq: EventFd, out: W, state: &UartState) -> Result<Self, SerialError> {
        let s = SerialState {
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
        let serial = Serial::from_state(&s, EventFdTrigger::new(irq), NoEvents, out)
            .map_err(SerialError::Device)?;
        Ok(SerialDevice {
            inner: Mutex::new(serial),
        })
    }

    /// The UART's registers and input, for a snapshot.
    pub fn state(&self) -> UartState {
        let s = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state();
        UartState {
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

    /// Puts `bytes` on the UART's input, as if typed, and raises the
    /// receive interrupt if the guest enabled it.
    pub fn enqueue_input(&self, bytes: &[u8]) -> Result<(), SerialError> {
        let mut serial = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        serial
            .enqueue_raw_bytes(bytes)
            .map(|_| ())
            .map_err(SerialError::Device)
    }

    /// Guest read of `data.len()` bytes at `offset` in the window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        if offset < REGISTER_COUNT {
            let mut serial = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            // offset < 8, the cast cannot truncate.
            *first = serial.read(offset as u8);
        }
    }

    /// Guest write of `data` at `offset` in the window. Only the first byte
    /// of a wider access reaches the register; unknown offsets are ignored.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> Result<(), SerialError> {
        let Some(&value) = data.first() else {
            return Ok(());
        };
        if offset >= REGISTER_COUNT {
            return Ok(());
        }
        let mut serial = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        serial
            .write(offset as u8, value)
            .map_err(SerialError::Device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can look into after the device took ownership.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_THR_EMPTY: u8 = 0x02;

    fn device() -> (SerialDevice<SharedBuf>, SharedBuf, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(evt.try_clone().unwrap(), out.clone());
        (dev, out, evt)
    }

    #[test]
    fn transmit_reaches_writer() {
        let (dev, out, _evt) = device();
        for b in b"Booting Linux\n" {
            dev.mmio_write(THR, &[*b]).unwrap();
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"Booting Linux\n");
    }

    #[test]
    fn line_tap_sees_whole_lines() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let out = SharedBuf::default();
        let mut tap = LineTap::new(out.clone(), move |l: &[u8]| {
            seen.lock().unwrap().push(l.to_vec())
        });
        tap.write_all(b"apf-vmm: ev").unwrap();
        tap.write_all(b"ict\r\nnext").unwrap();
        tap.write_all(&[b'x'; 300]).unwrap();
        tap.write_all(b"\n").unwrap();
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], EVICT_REQUEST);
        assert_eq!(lines[1].len(), MAX_LINE, "a long line is cut for the hook");
        // Every byte still reaches the writer.
        assert_eq!(out.0.lock().unwrap().len(), 11 + 9 + 300 + 1);
    }

    #[test]
    fn input_raises_data_ready() {
        let (dev, _out, evt) = device();
        const IER_RX: u8 = 0x01;
        const RBR: u64 = 0;
        dev.mmio_write(IER, &[IER_RX]).unwrap();
        dev.enqueue_input(&[EVICT_DONE]).unwrap();
        assert!(evt.read().unwrap() >= 1);
        let mut lsr = [0u8; 1];
        dev.mmio_read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0x01, "data ready");
        let mut rbr = [0u8; 1];
        dev.mmio_read(RBR, &mut rbr);
        assert_eq!(rbr[0], EVICT_DONE);
    }

    #[test]
    fn line_status_reports_transmitter_empty() {
        let (dev, _out, _evt) = device();
        let mut lsr = [0xffu8; 1];
        dev.mmio_read(LSR, &mut lsr);
        // THRE (bit 5) and TEMT (bit 6): the 8250 driver waits for these.
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_signals_eventfd() {
        let (dev, _out, evt) = device();
        // Nothing pending yet.
        assert!(evt.read().is_err());
        dev.mmio_write(IER, &[IER_THR_EMPTY]).unwrap();
        dev.mmio_write(THR, b"x").unwrap();
        assert!(evt.read().unwrap() >= 1);
        let mut iir = [0u8; 1];
        dev.mmio_read(IIR, &mut iir);
        // Interrupt pending (bit 0 clear), cause THR empty (0b001 << 1).
        assert_eq!(iir[0] & 0x0f, 0x02);
    }

    #[test]
    fn out_of_range_and_wide_accesses() {
        let (dev, out, _evt) = device();
        let mut data = [0xaau8; 4];
        dev.mmio_read(0x100, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);
        dev.mmio_write(0x100, b"z").unwrap();
        dev.mmio_write(THR, &[]).unwrap();
        assert!(out.0.lock().unwrap().is_empty());

        // A 4-byte read of LSR returns the register in the low byte only.
        dev.mmio_read(LSR, &mut data);
        assert_eq!(data[0] & 0x60, 0x60);
        assert_eq!(&data[1..], &[0, 0, 0]);
        // A 4-byte write to THR transmits its low byte.
        dev.mmio_write(THR, &[b'q', 1, 2, 3]).unwrap();
        assert_eq!(out.0.lock().unwrap().as_slice(), b"q");
    }
}
