// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the userfaultfd memory mode knows about each page of guest RAM:
//! whether it is populated (mapped in the guest RAM mapping), and whether
//! a saved copy of its content exists in the in-memory store.
//!
//! Eviction (`--uffd-evict-ms`) copies every populated page into the store
//! and drops it with `MADV_DONTNEED`, so that the next access is a MISSING
//! fault again; the handler then serves the saved copy. This models a
//! repeated snapshot restore or post-copy migration with the data intact.
//!
//! The store is an anonymous `MAP_NORESERVE` mapping the size of guest RAM:
//! only pages that were saved take memory.
//!
//! One `PageStore` is shared, behind a mutex, by the fault handler (which
//! serves and marks pages) and the evictor (which saves and drops them). The
//! evictor must only read pages that are populated: reading a missing page
//! would fault into the handler, which waits for the same mutex.

use std::io;

use thiserror::Error;

/// Page store errors.
#[derive(Debug, Error)]
pub enum PageStoreError {
    /// The range is empty or not page aligned.
    #[error("range {start:#x}+{len:#x} is not aligned to the {page_size} byte page size")]
    Unaligned {
        /// Host address.
        start: u64,
        /// Length.
        len: u64,
        /// Host page size.
        page_size: u64,
    },
    /// The store mapping could not be created.
    #[error("mapping the {len} byte page store: {source}")]
    Map {
        /// Bytes requested.
        len: u64,
        /// Cause.
        source: io::Error,
    },
    /// mincore() on guest RAM failed.
    #[error("mincore() on guest RAM: {0}")]
    Mincore(io::Error),
    /// Dropping pages failed.
    #[error("madvise(MADV_DONTNEED) of {len:#x} bytes at {addr:#x}: {source}")]
    Drop {
        /// Host address.
        addr: u64,
        /// Length.
        len: u64,
        /// Cause.
        source: io::Error,
    },
}

/// A fixed-size bit set, one bit per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBits {
    words: Vec<u64>,
    len: usize,
}

impl PageBits {
    /// `len` bits, all clear.
    pub fn new(len: usize) -> PageBits {
        PageBits {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`; false out of range.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; ignored out of range.
    pub fn set(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
    }

    /// Number of set bits.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Maximal runs of set bits as `(first, count)`, in order.
    pub fn runs(&self) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.len {
            let word = self.words[i / 64] >> (i % 64);
            if word == 0 {
                // Skip the rest of this word.
                i = (i / 64 + 1) * 64;
                continue;
            }
            if word & 1 == 0 {
                i += word.trailing_zeros() as usize;
                continue;
            }
            let start = i;
            while i < self.len && self.get(i) {
                i += 1;
            }
            runs.push((start, i - start));
        }
        runs
    }
}

/// Counters of the evictions done through a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictCounts {
    /// Eviction passes.
    pub evictions: u64,
    /// Pages saved and dropped, summed over all passes.
    pub pages_evicted: u64,
}

/// Where a page to be served comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Its content was saved by an eviction; the pointer is its copy in the
    /// store, valid for one page while the store lives.
    Copy(*const u8),
    /// Never evicted: serve it from the source image or zeros.
    None,
}

/// Per-page state of guest RAM in the userfaultfd mode.
///
/// # Invariants
///
/// `guest` is the start of a live, page-aligned mapping of `len` bytes that
/// outlives the store; `store` is an anonymous mapping of `len` bytes owned
/// by this value and unmapped on drop.
pub struct PageStore {
    guest: *mut u8,
    store: *mut u8,
    len: usize,
    page_size: usize,
    populated: PageBits,
    saved: PageBits,
    counts: EvictCounts,
}

// SAFETY: the raw pointers refer to process-wide mappings, not to
// thread-local data; all access to them goes through `&self`/`&mut self`,
// and the store is shared only behind a mutex.
unsafe impl Send for PageStore {}

impl PageStore {
    /// Sets up the state for the guest RAM mapping `[guest, guest + len)`.
    /// Pages already resident (the kernel, initrd and DTB loaded before
    /// userfaultfd registration) start out populated.
    ///
    /// # Safety
    ///
    /// `[guest, guest + len)` must be a mapping of this process that stays
    /// mapped for the whole life of the returned store.
    pub unsafe fn new(
        guest: *mut u8,
        len: u64,
        page_size: u64,
    ) -> Result<PageStore, PageStoreError> {
        let unaligned = || PageStoreError::Unaligned {
            start: guest as u64,
            len,
            page_size,
        };
        if page_size == 0
            || !page_size.is_power_of_two()
            || len == 0
            || len % page_size != 0
            || guest as u64 % page_size != 0
        {
            return Err(unaligned());
        }
        let ulen = usize::try_from(len).map_err(|_| unaligned())?;
        let ps = usize::try_from(page_size).map_err(|_| unaligned())?;
        let pages = ulen / ps;

        // SAFETY: a new anonymous mapping with no address hint; the result
        // is checked before use.
        let store = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if store == libc::MAP_FAILED {
            return Err(PageStoreError::Map {
                len,
                source: io::Error::last_os_error(),
            });
        }
        // INVARIANT: `store` is the mapping just created; `guest` is live
        // per the caller's contract.
        let mut ps_state = PageStore {
            guest,
            store: store.cast(),
            len: ulen,
            page_size: ps,
            populated: PageBits::new(pages),
            saved: PageBits::new(pages),
            counts: EvictCounts::default(),
        };

        let mut resident = vec![0u8; pages];
        // SAFETY: `guest` is page aligned and mapped for `ulen` bytes, and
        // `resident` has one byte per page of it.
        let ret = unsafe { libc::mincore(guest.cast(), ulen, resident.as_mut_ptr()) };
        if ret != 0 {
            return Err(PageStoreError::Mincore(io::Error::last_os_error()));
        }
        for (i, v) in resident.iter().enumerate() {
            if v & 1 != 0 {
                ps_state.populated.set(i);
            }
        }
        Ok(ps_state)
    }

    /// Number of pages covered.
    pub fn pages(&self) -> usize {
        self.populated.len()
    }

    /// Page size in bytes.
    #[cfg(test)]
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Index of the page holding byte `offset` of guest RAM.
    pub fn page_index(&self, offset: u64) -> Option<usize> {
        usize::try_from(offset)
            .ok()
            .filter(|o| *o < self.len)
            .map(|o| o / self.page_size)
    }

    /// Records that page `index` is mapped again (served by UFFDIO_COPY,
    /// or found present).
    pub fn mark_populated(&mut self, index: usize) {
        self.populated.set(index);
    }

    /// Whether page `index` is known to be mapped.
    pub fn is_populated(&self, index: usize) -> bool {
        self.populated.get(index)
    }

    /// Number of populated pages.
    #[cfg(test)]
    pub fn populated_count(&self) -> usize {
        self.populated.count()
    }

    /// The saved copy of page `index`, if it was ever evicted.
    pub fn saved(&self, index: usize) -> Saved {
        if index < self.pages() && self.saved.get(index) {
            // SAFETY: `index * page_size` is within the store mapping
            // (index < pages), which lives as long as `self`.
            Saved::Copy(unsafe { self.store.add(index * self.page_size) }.cast_const())
        } else {
            Saved::None
        }
    }

    /// Copies page `index` as the guest would read it now into `buf`,
    /// without faulting: the page itself if populated, its saved copy if
    /// evicted, else what the handler would serve (`unserved` fills it).
    /// The vCPUs must be stopped; the handler is kept out by the caller's
    /// lock on the store.
    pub fn read_page<F>(&self, index: usize, buf: &mut [u8], unserved: F) -> io::Result<()>
    where
        F: FnOnce(&mut [u8]) -> io::Result<()>,
    {
        if index >= self.pages() || buf.len() != self.page_size {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let offset = index * self.page_size;
        if self.populated.get(index) {
            // SAFETY: the page is inside the guest mapping, live per the
            // invariant, and populated, so reading it does not fault into
            // userfaultfd; nothing writes it while the vCPUs are stopped.
            unsafe {
                std::ptr::copy_nonoverlapping(self.guest.add(offset), buf.as_mut_ptr(), buf.len())
            };
            return Ok(());
        }
        match self.saved(index) {
            Saved::Copy(p) => {
                // SAFETY: a saved copy is one page inside the store mapping.
                unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
                Ok(())
            }
            Saved::None => unserved(buf),
        }
    }

    /// Counters so far.
    #[cfg(test)]
    pub fn counts(&self) -> EvictCounts {
        self.counts
    }

    /// Saves every populated page into the store and drops it from guest
    /// RAM, so that its next access is a MISSING fault served from the
    /// saved copy. Returns the number of pages evicted.
    ///
    /// The caller must make sure nothing writes guest RAM meanwhile (all
    /// vCPUs paused outside KVM_RUN); holding the store's mutex keeps the
    /// fault handler out.
    pub fn evict(&mut self) -> Result<u64, PageStoreError> {
        let runs = self.populated.runs();
        let mut evicted: u64 = 0;
        for (first, count) in runs {
            let offset = first * self.page_size;
            let bytes = count * self.page_size;
            // SAFETY: `offset + bytes <= len`, so both ranges lie within
            // their mappings (the guest's is live per the invariant). The
            // guest pages are populated, so reading them cannot fault into
            // userfaultfd; the two mappings are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.guest.add(offset).cast_const(),
                    self.store.add(offset),
                    bytes,
                );
            }
            for i in first..first + count {
                self.saved.set(i);
            }
            // SAFETY: the range is page aligned and inside the guest RAM
            // mapping; MADV_DONTNEED only drops its private pages, whose
            // content was saved just above.
            let ret =
                unsafe { libc::madvise(self.guest.add(offset).cast(), bytes, libc::MADV_DONTNEED) };
            if ret != 0 {
                return Err(PageStoreError::Drop {
                    addr: self.guest as u64 + offset as u64,
                    len: bytes as u64,
                    source: io::Error::last_os_error(),
                });
            }
            evicted += count as u64;
        }
        self.populated.clear_all();
        self.counts.evictions += 1;
        self.counts.pages_evicted += evicted;
        Ok(evicted)
    }
}

impl Drop for PageStore {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the store mapping created in `new`,
        // which nothing references any more (`saved` pointers borrow self).
        unsafe { libc::munmap(self.store.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Anon;
    use crate::uffd::host_page_size;

    #[test]
    fn bits_and_runs() {
        let mut b = PageBits::new(200);
        assert_eq!(b.len(), 200);
        assert!(b.runs().is_empty());
        for i in [0, 1, 2, 63, 64, 65, 130, 199, 500] {
            b.set(i);
        }
        assert!(b.get(64) && !b.get(3) && !b.get(500));
        assert_eq!(b.count(), 8);
        assert_eq!(b.runs(), vec![(0, 3), (63, 3), (130, 1), (199, 1)]);
        b.clear_all();
        assert_eq!(b.count(), 0);
        assert!(PageBits::new(0).runs().is_empty());

        let mut full = PageBits::new(128);
        (0..128).for_each(|i| full.set(i));
        assert_eq!(full.runs(), vec![(0, 128)]);
    }

    #[test]
    fn rejects_bad_ranges() {
        let ps = host_page_size();
        let mem = Anon::new(4 * ps as usize);
        // SAFETY: the mapping outlives every store made here.
        unsafe {
            assert!(matches!(
                PageStore::new(mem.ptr.add(1), ps, ps),
                Err(PageStoreError::Unaligned { .. })
            ));
            assert!(matches!(
                PageStore::new(mem.ptr, ps + 1, ps),
                Err(PageStoreError::Unaligned { .. })
            ));
            assert!(matches!(
                PageStore::new(mem.ptr, 0, ps),
                Err(PageStoreError::Unaligned { .. })
            ));
            assert!(matches!(
                PageStore::new(mem.ptr, ps, 3000),
                Err(PageStoreError::Unaligned { .. })
            ));
        }
    }

    #[test]
    fn resident_pages_start_populated_and_evict_saves_them() {
        let ps = host_page_size() as usize;
        let pages = 16;
        let mem = Anon::new(ps * pages);
        for p in [1, 2, 3, 9] {
            mem.write_byte(p * ps + 5, p as u8 + 100);
        }
        // SAFETY: the mapping outlives the store.
        let mut store = unsafe { PageStore::new(mem.ptr, (ps * pages) as u64, ps as u64) }.unwrap();
        assert_eq!(store.pages(), pages);
        assert_eq!(store.page_size(), ps);
        assert_eq!(store.populated_count(), 4);
        assert!(store.is_populated(9) && !store.is_populated(4));
        assert_eq!(store.saved(1), Saved::None);
        assert_eq!(store.page_index((ps * 3 + 7) as u64), Some(3));
        assert_eq!(store.page_index((ps * pages) as u64), None);

        assert_eq!(store.evict().unwrap(), 4);
        assert_eq!(store.populated_count(), 0);
        assert_eq!(mem.resident(), vec![false; pages], "pages dropped");
        for p in [1, 2, 3, 9] {
            let Saved::Copy(copy) = store.saved(p) else {
                panic!("page {p} not saved");
            };
            // SAFETY: a saved copy is one page inside the live store.
            let byte = unsafe { *copy.add(5) };
            assert_eq!(byte, p as u8 + 100);
        }
        assert_eq!(store.saved(4), Saved::None);
        assert_eq!(store.saved(pages), Saved::None);
        assert_eq!(
            store.counts(),
            EvictCounts {
                evictions: 1,
                pages_evicted: 4
            }
        );

        // Nothing populated: an eviction pass drops nothing.
        assert_eq!(store.evict().unwrap(), 0);
        assert_eq!(store.counts().evictions, 2);
        assert_eq!(store.counts().pages_evicted, 4);
        // Without userfaultfd the dropped pages read back as zeros.
        assert_eq!(mem.read_byte(ps + 5), 0);

        // read_page: saved copies, then what the source would serve.
        let mut buf = vec![0u8; ps];
        store.read_page(9, &mut buf, |_| unreachable!()).unwrap();
        assert_eq!(buf[5], 109);
        store
            .read_page(4, &mut buf, |b| {
                b.fill(0xee);
                Ok(())
            })
            .unwrap();
        assert!(buf.iter().all(|b| *b == 0xee));
        mem.write_byte(4 * ps + 1, 42);
        store.mark_populated(4);
        store.read_page(4, &mut buf, |_| unreachable!()).unwrap();
        assert_eq!(buf[1], 42);
        assert!(store.read_page(pages, &mut buf, |_| Ok(())).is_err());
    }
}
