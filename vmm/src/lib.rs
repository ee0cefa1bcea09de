// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The apf-vmm crate's library: everything both binaries use.
//!
//! - The VMM (`apf-vmm`, `src/main.rs` parses the command line and runs
//!   it): the layout of guest memory, the kernel image, the device tree,
//!   ACPI and EFI tables, guest memory and its userfaultfd and cgroup
//!   modes, the devices, the vCPUs and the vGIC, APF's attributes and
//!   statistics, snapshots and post-copy migration, and the control
//!   socket.
//! - The e2e driver (`apf-e2e`, `src/bin/apf-e2e.rs`): its arguments,
//!   reading the console output, the checks and the swap header (`e2e`).
//! - Between the two: the lines the VMM prints and the driver reads back
//!   (`lines`, and `memcg` for the cgroup report).
//!
//! Everything up to the KVM calls builds and is tested on any Linux host;
//! the VM itself (`gic`, `vcpu`, `vm`) only exists on aarch64.

#![deny(clippy::undocumented_unsafe_blocks)]
// On other architectures the VM path is compiled out, which leaves parts of
// the code without a caller there; the aarch64 build has them all.
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]

pub mod acpi;
pub mod apf;
pub mod args;
pub mod bus;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod e2e;
pub mod efi;
pub mod error;
pub mod evict;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod lifecycle;
pub mod lines;
pub mod logger;
pub mod memcg;
pub mod memory;
pub mod migrate;
pub mod pagestore;
pub mod pause;
pub mod regs;
pub mod serial;
pub mod snapshot;
pub mod stats;
#[doc(hidden)]
pub mod testutil;
pub mod uffd;

#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;
#[cfg(target_arch = "aarch64")]
pub mod vm;
