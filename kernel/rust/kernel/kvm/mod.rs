// SPDX-License-Identifier: GPL-2.0

//! KVM/arm64 abstractions.
//!
//! Small, safe views of the KVM objects that arm64 hypervisor features
//! written in Rust need: vCPUs and VMs, guest physical addresses, the
//! stage-2 abort syndrome, cached guest memory, vGIC PPIs, SMCCC results and
//! the generic asynchronous page fault machinery.
//!
//! C headers: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h),
//! [`arch/arm64/include/asm/kvm_host.h`](srctree/arch/arm64/include/asm/kvm_host.h).

pub mod abort;
pub mod async_pf;
mod gpa;
pub mod guest_cache;
pub mod smccc;
mod vcpu;

pub use gpa::{Gfn, Gpa};
pub use vcpu::{Kvm, Memslot, OwnedVcpu, Vcpu, PPIS};
