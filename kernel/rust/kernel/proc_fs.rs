// SPDX-License-Identifier: GPL-2.0

//! Read-only `/proc` files made of one formatted text.
//!
//! C headers: [`include/linux/proc_fs.h`](srctree/include/linux/proc_fs.h),
//! [`include/linux/seq_file.h`](srctree/include/linux/seq_file.h).

use crate::{bindings, error::from_result, prelude::*, str::CStr};
use core::{ffi::c_void, fmt};

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

/// What a single-show `/proc` file prints, with the data it needs.
pub trait ShowSingle: Send + Sync {
    /// Writes the whole content of the file. Process context; readers may
    /// run it on several CPUs at once.
    fn show(&self, m: &mut SeqFile) -> Result;
}

/// A file in `/proc` created with `proc_create_single_data()`, with what
/// shows it; removed on drop.
///
/// # Invariants
///
/// `entry` is the live entry created for `T`'s show function, with a
/// pointer to `*show` as its data.
///
/// # Examples
///
/// ```
/// use core::fmt::Write;
/// use kernel::{c_str, proc_fs::{SeqFile, ShowSingle, SingleFile}};
///
/// struct Answer(u32);
///
/// impl ShowSingle for Answer {
///     fn show(&self, m: &mut SeqFile) -> Result {
///         writeln!(m, "answer {}", self.0).map_err(|_| EINVAL)
///     }
/// }
///
/// let file = SingleFile::create(c_str!("rust_doctest_answer"), Answer(42))?;
/// // `cat /proc/rust_doctest_answer` prints "answer 42" until it is dropped.
/// drop(file);
/// # Ok::<(), Error>(())
/// ```
pub struct SingleFile<T: ShowSingle> {
    entry: *mut bindings::proc_dir_entry,
    show: KBox<T>,
}

// SAFETY: The entry may be removed from any thread, and `T: Send`.
unsafe impl<T: ShowSingle> Send for SingleFile<T> {}
// SAFETY: No method gives access to the entry; `T: Sync`.
unsafe impl<T: ShowSingle> Sync for SingleFile<T> {}

/// The `show` callback of a file made by [`SingleFile::create`].
///
/// # Safety
///
/// Called by seq_file only, in process context, with `m` the live
/// `seq_file` of a read of that file, whose `private` is the entry's data.
unsafe extern "C" fn show_trampoline<T: ShowSingle>(
    m: *mut bindings::seq_file,
    _v: *mut c_void,
) -> core::ffi::c_int {
    // SAFETY: `single_open()` made the entry's data the file's `private`,
    // which by the type invariant points to the `T`, alive until the entry
    // is removed, which waits for this read.
    let show = unsafe { &*(*m).private.cast::<T>() };
    // INVARIANT: seq_file calls `show` with the file being read.
    let mut file = SeqFile(m);
    from_result(|| show.show(&mut file).map(|()| 0))
}

impl<T: ShowSingle> SingleFile<T> {
    /// Creates `/proc/<name>`, readable by everyone, shown by `show`.
    ///
    /// Process context: it allocates and may sleep.
    pub fn create(name: &'static CStr, show: T) -> Result<Self> {
        let show = KBox::new(show, GFP_KERNEL)?;
        let data = core::ptr::from_ref(&*show).cast_mut().cast::<c_void>();
        // SAFETY: `name` is static, the trampoline has the C signature, and
        // `data` points to the boxed `T`, which outlives the entry.
        let entry = unsafe {
            bindings::proc_create_single_data(
                name.as_char_ptr(),
                0o444,
                core::ptr::null_mut(),
                Some(show_trampoline::<T>),
                data,
            )
        };
        if entry.is_null() {
            return Err(ENOMEM);
        }
        // INVARIANT: created above with `data` pointing to `show`.
        Ok(Self { entry, show })
    }

    /// What shows the file.
    pub fn show(&self) -> &T {
        &self.show
    }
}

impl<T: ShowSingle> Drop for SingleFile<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `entry` is live; `proc_remove()`
        // waits for readers to finish, so `show` is dropped after the last.
        unsafe { bindings::proc_remove(self.entry) };
    }
}
