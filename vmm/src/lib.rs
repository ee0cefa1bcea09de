// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Library part of the apf-vmm crate: the pieces of the `apf-e2e` driver
//! that are tested on any host (argument parsing, reading the console
//! output, the checks, the swap header), and the memory cgroup report line
//! that the VMM prints and the driver reads (`memcg`), and the control
//! socket's protocol that both speak (`control`). The VMM itself is
//! the `apf-vmm` binary (`src/main.rs`).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod control;
pub mod e2e;
pub mod memcg;
