// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `apf-e2e`: runs apf-vmm with a guest running the APF workload, inside
//! the emulated host, and checks what the guest and the host report.
//!
//! - `args`: the driver's command line.
//! - `parse`: reading the VMM's output (guest console and VMM statistics).
//! - `check`: the checks and the verdict.
//! - `swap`: disk swap, `vm.page-cluster` and cgroup v2 set-up in the
//!   emulated host.
//! - `diskstat`: the swap device's I/O counters around a run.
//! - `trace`: where a fault's time goes, from KVM's trace events (`--trace`).

pub mod args;
pub mod check;
pub mod diskstat;
pub mod parse;
pub mod swap;
pub mod trace;
