// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM's top-level error, and the exit status each kind gives.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::acpi::AcpiError;
use crate::cgroup::CgroupError;
use crate::efi::EfiError;
use crate::fdt::FdtError;
use crate::image::ImageError;
use crate::layout::LayoutError;
use crate::memory::MemoryError;
use crate::pagestore::PageStoreError;
use crate::uffd::UffdError;
use crate::{control, lifecycle};

/// Exit status for bad arguments or unusable input files.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for failures while setting up or running the VM.
pub const EXIT_FAILURE: u8 = 1;

/// Top-level errors.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Fdt(#[from] FdtError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Efi(#[from] EfiError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Uffd(#[from] UffdError),
    #[error(transparent)]
    PageStore(#[from] PageStoreError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("creating the UART interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[cfg(not(target_arch = "aarch64"))]
    #[error(
        "apf-vmm runs guests only on an arm64 KVM host; this build is for {0} \
         (the arguments and input files were checked)"
    )]
    UnsupportedArch(&'static str),
}

impl Error {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Image(_) | Error::Layout(_) => EXIT_USAGE,
            // A snapshot that cannot be restored, or may not be.
            Error::Lifecycle(
                lifecycle::LifecycleError::Snapshot(_) | lifecycle::LifecycleError::ApfLoss { .. },
            ) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// A file or directory that could not be used, and why: the I/O error of
/// every module that reads or writes files by path.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct FileError {
    /// The file or directory.
    pub path: PathBuf,
    /// Cause.
    pub source: io::Error,
}

impl FileError {
    /// For `map_err`: the error of an operation on `path`.
    pub fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_path_buf(),
            source,
        }
    }
}
