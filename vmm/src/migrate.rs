// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Post-copy migration over a stream socket (a Unix socket here; the same
//! bytes would run over TCP between hosts).
//!
//! The source, with its vCPUs stopped, sends the VM state and then guest
//! RAM; the destination runs the VM at once, with RAM behind userfaultfd:
//! a fault asks the source for its page, and the source answers such
//! requests before it goes on pushing the rest in order. When every page
//! has arrived the destination says DONE and the source exits.
//!
//! Messages, little-endian, each starting with a one-byte tag:
//!
//! | from | tag | body |
//! |---|---|---|
//! | source | `STATE` 1 | u64 page size, u64 length, the state file's bytes |
//! | source | `PAGE` 2 | u64 page index, one page |
//! | source | `ZERO` 3 | u64 page index (a page of zeros) |
//! | source | `END` 4 | (every page was sent) |
//! | destination | `REQ` 0x10 | u64 page index |
//! | destination | `DONE` 0x11 | (every page was installed) |
//!
//! Nothing here is KVM specific, so it is tested on any host.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use thiserror::Error;

use crate::pagestore::PageBits;

const STATE: u8 = 1;
const PAGE: u8 = 2;
const ZERO: u8 = 3;
const END: u8 = 4;
const REQ: u8 = 0x10;
const DONE: u8 = 0x11;

/// Largest page size accepted from a source.
const MAX_PAGE_SIZE: u64 = 64 << 10;
/// Largest state accepted from a source.
const MAX_STATE: u64 = 64 << 20;

/// Migration errors.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The socket failed.
    #[error("migration socket: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something this protocol does not have.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// Reading a page of guest RAM failed on the source.
    #[error("reading page {index} of guest RAM: {source}")]
    Page {
        /// Page index.
        index: usize,
        /// Cause.
        source: io::Error,
    },
    /// Installing a page failed on the destination.
    #[error("installing page {index}: {why}")]
    Install {
        /// Page index.
        index: usize,
        /// Cause.
        why: String,
    },
    /// The destination went away before it had every page.
    #[error("the destination closed the connection after {sent} of {pages} pages, before DONE")]
    Abandoned {
        /// Pages sent.
        sent: usize,
        /// Pages in all.
        pages: usize,
    },
}

fn u64_of(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn tag_of(r: &mut impl Read) -> io::Result<Option<u8>> {
    let mut t = [0u8; 1];
    match r.read(&mut t)? {
        0 => Ok(None),
        _ => Ok(Some(t[0])),
    }
}

/// The source's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Pages sent because the destination asked.
    pub demanded: u64,
    /// Pages sent in the background.
    pub pushed: u64,
    /// Of all pages sent, those sent as ZERO.
    pub zero: u64,
}

/// What the destination tells the source.
enum FromDest {
    Req(usize),
    Done,
}

/// Source side: sends the state file's bytes, then every page, demanded
/// ones first; `read_page(i, buf)` reads page `i` of the stopped VM.
/// Returns once the destination said DONE.
pub fn send<F>(
    stream: UnixStream,
    state: &[u8],
    page_size: usize,
    pages: usize,
    mut read_page: F,
) -> Result<SourceStats, MigrateError>
where
    F: FnMut(usize, &mut [u8]) -> io::Result<()>,
{
    let mut out = stream.try_clone()?;
    let mut head = vec![STATE];
    head.extend_from_slice(&(page_size as u64).to_le_bytes());
    head.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.write_all(&head)?;
    out.write_all(state)?;

    let (tx, rx) = mpsc::channel();
    let reader: JoinHandle<Result<(), MigrateError>> = thread::Builder::new()
        .name("migrate-rx".into())
        .spawn(move || {
            let mut r = BufReader::new(stream);
            loop {
                let msg = match tag_of(&mut r)? {
                    None => return Ok(()),
                    Some(REQ) => FromDest::Req(u64_of(&mut r)? as usize),
                    Some(DONE) => FromDest::Done,
                    Some(t) => return Err(MigrateError::Protocol(format!("unknown tag {t:#x}"))),
                };
                if tx.send(msg).is_err() {
                    return Ok(());
                }
            }
        })?;

    let mut sent = PageBits::new(pages);
    let mut sent_count = 0;
    let mut stats = SourceStats::default();
    // One message buffer for every page: tag, index, then the page.
    let mut msg = vec![0u8; 9 + page_size];
    let mut send_page = |i: usize, out: &mut UnixStream, stats: &mut SourceStats| {
        read_page(i, &mut msg[9..]).map_err(|source| MigrateError::Page { index: i, source })?;
        msg[1..9].copy_from_slice(&(i as u64).to_le_bytes());
        let zero = msg[9..].iter().all(|b| *b == 0);
        msg[0] = if zero { ZERO } else { PAGE };
        out.write_all(if zero { &msg[..9] } else { &msg })?;
        stats.zero += u64::from(zero);
        Ok::<(), MigrateError>(())
    };

    let mut next = 0;
    let mut end_sent = false;
    let done = loop {
        // Demand first.
        let msg = if next < pages {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => break false,
            }
        } else {
            if !end_sent {
                out.write_all(&[END])?;
                end_sent = true;
            }
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break false,
            }
        };
        match msg {
            Some(FromDest::Done) => break true,
            Some(FromDest::Req(i)) if i >= pages => {
                return Err(MigrateError::Protocol(format!(
                    "request for page {i} of {pages}"
                )));
            }
            Some(FromDest::Req(i)) => {
                if !sent.get(i) {
                    send_page(i, &mut out, &mut stats)?;
                    sent.set(i);
                    sent_count += 1;
                    stats.demanded += 1;
                }
            }
            None => {
                if !sent.get(next) {
                    send_page(next, &mut out, &mut stats)?;
                    sent.set(next);
                    sent_count += 1;
                    stats.pushed += 1;
                }
                next += 1;
            }
        }
    };
    // Ends the reader, which may be waiting for more from a destination
    // that keeps its end open.
    let _ = out.shutdown(std::net::Shutdown::Both);
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(MigrateError::Protocol("reader thread panicked".into())),
    }
    if !done {
        return Err(MigrateError::Abandoned {
            sent: sent_count,
            pages,
        });
    }
    Ok(stats)
}

/// Destination side, first step: reads the state message. Returns the
/// page size and the state file's bytes (to be checked by the caller).
pub fn receive_state(stream: &mut UnixStream) -> Result<(usize, Vec<u8>), MigrateError> {
    match tag_of(stream)? {
        Some(STATE) => {}
        Some(t) => {
            return Err(MigrateError::Protocol(format!(
                "expected STATE, got tag {t:#x}"
            )))
        }
        None => {
            return Err(MigrateError::Protocol(
                "connection closed before the state".into(),
            ))
        }
    }
    let page_size = u64_of(stream)?;
    if page_size == 0 || !page_size.is_power_of_two() || page_size > MAX_PAGE_SIZE {
        return Err(MigrateError::Protocol(format!("page size {page_size}")));
    }
    let len = u64_of(stream)?;
    if len > MAX_STATE {
        return Err(MigrateError::Protocol(format!("{len} bytes of state")));
    }
    let mut state = vec![0u8; len as usize];
    stream.read_exact(&mut state)?;
    Ok((page_size as usize, state))
}

/// Destination side: asks the source for pages, once each.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Mutex<(UnixStream, PageBits)>>,
}

impl Requester {
    /// Asks on `stream` for any of `pages` pages.
    pub fn new(stream: UnixStream, pages: usize) -> Requester {
        Requester {
            inner: Arc::new(Mutex::new((stream, PageBits::new(pages)))),
        }
    }

    /// Asks for page `index` unless it was asked for already. Returns
    /// whether a request was sent.
    pub fn request(&self, index: usize) -> io::Result<bool> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (stream, asked) = &mut *g;
        if index >= asked.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        if asked.get(index) {
            return Ok(false);
        }
        asked.set(index);
        let mut m = [0u8; 9];
        m[0] = REQ;
        m[1..].copy_from_slice(&(index as u64).to_le_bytes());
        stream.write_all(&m)?;
        Ok(true)
    }

    fn done(&self) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.write_all(&[DONE])
    }
}

/// The destination's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestStats {
    /// Pages installed.
    pub received: u64,
    /// Of those, pages of zeros.
    pub zero: u64,
}

/// Destination side: installs every page the source sends with
/// `install(i, page)`, and says DONE once all `pages` are in. Runs until
/// then, or until the source closes the connection.
pub fn receive_pages<F>(
    stream: UnixStream,
    requester: &Requester,
    page_size: usize,
    pages: usize,
    mut install: F,
) -> Result<DestStats, MigrateError>
where
    F: FnMut(usize, &[u8]) -> Result<(), String>,
{
    let mut r = BufReader::with_capacity(256 << 10, stream);
    let mut have = PageBits::new(pages);
    let mut stats = DestStats::default();
    let mut page = vec![0u8; page_size];
    let zeros = vec![0u8; page_size];
    while (stats.received as usize) < pages {
        let tag = match tag_of(&mut r)? {
            Some(t) => t,
            None => {
                return Err(MigrateError::Protocol(format!(
                    "the source closed the connection after {} of {pages} pages",
                    stats.received
                )))
            }
        };
        let (index, data) = match tag {
            PAGE => {
                let i = u64_of(&mut r)? as usize;
                r.read_exact(&mut page)?;
                (i, &page)
            }
            ZERO => {
                stats.zero += 1;
                (u64_of(&mut r)? as usize, &zeros)
            }
            END => {
                return Err(MigrateError::Protocol(format!(
                    "END after {} of {pages} pages",
                    stats.received
                )))
            }
            t => return Err(MigrateError::Protocol(format!("unknown tag {t:#x}"))),
        };
        if index >= pages || have.get(index) {
            return Err(MigrateError::Protocol(format!(
                "page {index} sent twice or out of range ({pages} pages)"
            )));
        }
        install(index, data).map_err(|why| MigrateError::Install { index, why })?;
        have.set(index);
        stats.received += 1;
    }
    requester.done()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(i: usize, ps: usize) -> Vec<u8> {
        let mut p = vec![0u8; ps];
        if i % 3 != 0 {
            p[i % ps] = (i % 251) as u8 + 1;
        }
        p
    }

    #[test]
    fn every_page_arrives_intact_demanded_ones_first() {
        let (src, mut dst) = UnixStream::pair().unwrap();
        let ps = 256;
        let pages = 4000;
        let state = b"some state".to_vec();
        let sender = thread::spawn(move || {
            send(src, &state, ps, pages, |i, buf| {
                buf.copy_from_slice(&page_of(i, ps));
                Ok(())
            })
        });
        let (got_ps, got_state) = receive_state(&mut dst).unwrap();
        assert_eq!((got_ps, got_state.as_slice()), (ps, &b"some state"[..]));
        let req = Requester::new(dst.try_clone().unwrap(), pages);
        // Demand the last pages before anything else could have reached them.
        for i in [3999, 3998, 3001] {
            assert!(req.request(i).unwrap());
        }
        assert!(!req.request(3999).unwrap(), "asked once");
        assert!(req.request(pages).is_err());
        let mut ram = vec![0u8; ps * pages];
        let mut order = Vec::new();
        let stats = receive_pages(dst, &req, ps, pages, |i, p| {
            ram[i * ps..(i + 1) * ps].copy_from_slice(p);
            order.push(i);
            Ok(())
        })
        .unwrap();
        let src_stats = sender.join().unwrap().unwrap();
        assert_eq!(stats.received as usize, pages);
        assert_eq!(stats.zero, src_stats.zero);
        assert_eq!(src_stats.demanded + src_stats.pushed, pages as u64);
        assert_eq!(src_stats.demanded, 3);
        assert_eq!(
            src_stats.zero as usize,
            (0..pages).filter(|i| i % 3 == 0).count()
        );
        for i in 0..pages {
            assert_eq!(
                &ram[i * ps..(i + 1) * ps],
                page_of(i, ps).as_slice(),
                "page {i}"
            );
        }
        // The demanded pages jumped the queue: they came after what the
        // socket had buffered (about a thousand pages here), long before
        // the push reached them at 3001 and 3999.
        let pos = |p| order.iter().position(|x| *x == p).unwrap();
        assert!(
            pos(3999) < 3000 && pos(3001) < 3000,
            "{} {}",
            pos(3999),
            pos(3001)
        );
    }

    #[test]
    fn source_reports_a_destination_that_leaves_early() {
        let (src, mut dst) = UnixStream::pair().unwrap();
        let sender = thread::spawn(move || {
            send(src, b"s", 64, 100_000, |_, buf| {
                buf.fill(1);
                Ok(())
            })
        });
        receive_state(&mut dst).unwrap();
        let mut some = [0u8; 1000];
        dst.read_exact(&mut some).unwrap();
        drop(dst);
        let e = sender.join().unwrap().unwrap_err();
        assert!(
            matches!(e, MigrateError::Abandoned { .. } | MigrateError::Io(_)),
            "{e}"
        );
    }

    #[test]
    fn destination_refuses_garbage() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&[9, 0, 0]).unwrap();
        assert!(matches!(
            receive_state(&mut b),
            Err(MigrateError::Protocol(_))
        ));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut m = vec![STATE];
        m.extend_from_slice(&3000u64.to_le_bytes());
        a.write_all(&m).unwrap();
        let e = receive_state(&mut b).unwrap_err();
        assert!(e.to_string().contains("page size 3000"), "{e}");

        // A page sent twice.
        let (mut a, b) = UnixStream::pair().unwrap();
        let req = Requester::new(b.try_clone().unwrap(), 4);
        for _ in 0..2 {
            let mut m = vec![ZERO];
            m.extend_from_slice(&1u64.to_le_bytes());
            a.write_all(&m).unwrap();
        }
        let e = receive_pages(b, &req, 64, 4, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("sent twice"), "{e}");
    }
}
