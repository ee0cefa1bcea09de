// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Helpers shared by the unit tests and the tests in `tests/`.

use std::path::{Path, PathBuf};

/// The little-endian `u16` at `off` in `b`.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

/// The little-endian `u32` at `off` in `b`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The little-endian `u64` at `off` in `b`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// An anonymous private mapping, unmapped on drop.
pub struct Anon {
    /// Start of the mapping.
    pub ptr: *mut u8,
    /// Its length.
    pub len: usize,
}

// SAFETY: the mapping is process-wide; tests touch it from several threads
// only through volatile byte accesses.
unsafe impl Send for Anon {}
// SAFETY: as above.
unsafe impl Sync for Anon {}

impl Anon {
    /// Maps `len` bytes.
    pub fn new(len: usize) -> Anon {
        // SAFETY: anonymous mapping with no address hint; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Anon {
            ptr: ptr.cast(),
            len,
        }
    }

    /// Reads one byte; volatile so that the access (and the fault it
    /// causes) really happens.
    pub fn read_byte(&self, offset: usize) -> u8 {
        assert!(offset < self.len);
        // SAFETY: in bounds of the live mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(offset)) }
    }

    /// Writes one byte, volatile.
    pub fn write_byte(&self, offset: usize, value: u8) {
        assert!(offset < self.len);
        // SAFETY: in bounds of the live mapping.
        unsafe { std::ptr::write_volatile(self.ptr.add(offset), value) }
    }

    /// Which pages are resident, per mincore().
    pub fn resident(&self) -> Vec<bool> {
        let ps = crate::uffd::host_page_size() as usize;
        let mut v = vec![0u8; self.len.div_ceil(ps)];
        // SAFETY: the mapping is page aligned and `v` has a byte per page.
        let ret = unsafe { libc::mincore(self.ptr.cast(), self.len, v.as_mut_ptr()) };
        assert_eq!(ret, 0);
        v.into_iter().map(|b| b & 1 != 0).collect()
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Splits a line of a `tests/*.list` file as `userspace/init/init.c` does:
/// words separated by blanks; a word that starts with a double quote runs
/// to the next one and may hold blanks.
pub fn list_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start_matches([' ', '\t']);
    while !rest.is_empty() {
        let (word, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_once([' ', '\t']).unwrap_or((rest, "")),
        };
        words.push(word.to_string());
        rest = after.trim_start_matches([' ', '\t']);
    }
    words
}

/// Every case of the harness's `tests/*.list` files, as the list it is in
/// and its words (`NAME TIMEOUT COMMAND ARGS...`); comments, blank lines
/// and `include` lines left out.
pub fn list_cases() -> Vec<(PathBuf, Vec<String>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
    let mut lists: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "list"))
        .collect();
    lists.sort();
    assert!(lists.len() >= 5, "{lists:?}");
    let mut out = Vec::new();
    for list in lists {
        let text = std::fs::read_to_string(&list).unwrap();
        for line in text.lines() {
            let words = list_words(line);
            if words.is_empty() || words[0].starts_with('#') || words[0] == "include" {
                continue;
            }
            out.push((list.clone(), words));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_words_split_like_init() {
        assert_eq!(
            list_words("a 30 /bin/x --c \"d e\"  f\t\"\""),
            ["a", "30", "/bin/x", "--c", "d e", "f", ""]
        );
    }
}
