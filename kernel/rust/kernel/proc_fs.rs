// SPDX-License-Identifier: GPL-2.0

//! Read-only `/proc` files made of one formatted text.
//!
//! C headers: [`include/linux/proc_fs.h`](srctree/include/linux/proc_fs.h),
//! [`include/linux/seq_file.h`](srctree/include/linux/seq_file.h).

use crate::{bindings, error::from_result, prelude::*, str::CStr};
use core::{ffi::c_void, fmt, marker::PhantomData};

/// The text of a `/proc` file being read, a `struct seq_file`.
///
/// # Invariants
///
/// `0` is the `seq_file` of a read in progress.
pub struct SeqFile(*mut bindings::seq_file);

impl fmt::Write for SeqFile {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: By the type invariant the seq_file is live; `s` is valid
        // for `s.len()` bytes. Overflow is handled by seq_file itself, which
        // calls `show` again with a bigger buffer.
        unsafe { bindings::seq_write(self.0, s.as_ptr().cast(), s.len()) };
        Ok(())
    }
}

/// What a single-show `/proc` file prints.
pub trait ShowSingle {
    /// Writes the whole content of the file.
    fn show(m: &mut SeqFile) -> Result;
}

/// A file in `/proc` created with `proc_create_single()`, removed on drop.
///
/// # Invariants
///
/// `entry` is the live entry created for `T`'s show function.
pub struct SingleFile<T: ShowSingle> {
    entry: *mut bindings::proc_dir_entry,
    _show: PhantomData<T>,
}

// SAFETY: The entry may be removed from any thread.
unsafe impl<T: ShowSingle> Send for SingleFile<T> {}
// SAFETY: No method gives access to the entry.
unsafe impl<T: ShowSingle> Sync for SingleFile<T> {}

/// The `show` callback of a file made by [`SingleFile::create`].
///
/// # Safety
///
/// Called by seq_file only, in process context, with `m` the live
/// `seq_file` of a read of that file.
unsafe extern "C" fn show_trampoline<T: ShowSingle>(
    m: *mut bindings::seq_file,
    _v: *mut c_void,
) -> core::ffi::c_int {
    // INVARIANT: seq_file calls `show` with the file being read.
    let mut file = SeqFile(m);
    from_result(|| T::show(&mut file).map(|()| 0))
}

impl<T: ShowSingle> SingleFile<T> {
    /// Creates `/proc/<name>`, readable by everyone.
    pub fn create(name: &'static CStr) -> Result<Self> {
        // SAFETY: `name` is static and the trampoline has the C signature.
        let entry = unsafe {
            bindings::proc_create_single_data(
                name.as_char_ptr(),
                0o444,
                core::ptr::null_mut(),
                Some(show_trampoline::<T>),
                core::ptr::null_mut(),
            )
        };
        if entry.is_null() {
            return Err(ENOMEM);
        }
        // INVARIANT: created above.
        Ok(Self {
            entry,
            _show: PhantomData,
        })
    }
}

impl<T: ShowSingle> Drop for SingleFile<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `entry` is live; `proc_remove()`
        // waits for readers to finish.
        unsafe { bindings::proc_remove(self.entry) };
    }
}
