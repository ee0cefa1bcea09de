// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The snapshot format: what a stopped VM is made of, and the two files it
//! is saved to (see "Snapshot format" in the README).
//!
//! - The **state file** (`state`): a fixed header (`MAGIC`, the format
//!   `VERSION`, the payload's length and CRC-32), then the [`VmState`]
//!   serialised with serde in postcard's compact format.
//! - The **memory file** (`memory`): guest RAM as it is, byte `n` of the
//!   file being byte `n` of RAM; pages of zeros are left as holes. A lazy
//!   restore (`apf-vmm restore`) serves pages from it by userfaultfd.
//!
//! [`VmState::decode`] checks everything it can before anything is created:
//! a restore either starts from a state that passed every check, or does not
//! start.
//!
//! Nothing here is KVM specific, so it is tested on any host.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kvm_ioctls::reg_size;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::layout::{MAX_MEM_MIB, MAX_VCPUS, MIB, MIN_MEM_MIB, RAM_START};

/// First bytes of a state file.
pub const MAGIC: [u8; 8] = *b"APFSNAP\0";
/// The state format this VMM writes and reads. Bumped on any change to
/// [`VmState`] or to what the fields mean.
pub const VERSION: u32 = 1;
/// Bytes before the payload: magic, version, length, CRC-32.
pub const HEADER_SIZE: usize = 8 + 4 + 8 + 4;
/// A state larger than this is not a state file of this VMM.
const MAX_PAYLOAD: u64 = 64 << 20;
/// File names inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// See [`STATE_FILE`].
pub const MEMORY_FILE: &str = "memory";

/// `KVM_ASYNC_PF_ENABLED`: bit 0 of the BLOCK attribute.
pub const APF_BLOCK_ENABLED: u64 = 1;

/// One vCPU register as `KVM_GET_ONE_REG` returned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reg {
    /// Register id (`KVM_REG_ARM64 | size | ...`).
    pub id: u64,
    /// Its value, as many bytes as the id's size field says.
    pub value: Vec<u8>,
}

/// A vCPU's APF attributes (`KVM_ARM_VCPU_ASYNC_PF_CTRL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApfAttrs {
    /// `KVM_ARM_VCPU_ASYNC_PF_IRQ`.
    pub irq: u32,
    /// `KVM_ARM_VCPU_ASYNC_PF_BLOCK`: block IPA | flags, 0 when disabled.
    pub block: u64,
}

/// One vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `MPIDR_EL1`, which names its redistributor.
    pub mpidr: u64,
    /// `KVM_GET_MP_STATE` (running, or stopped by PSCI).
    pub mp_state: u32,
    /// Every register of `KVM_GET_REG_LIST`, firmware pseudo-registers
    /// and timers included, in that order.
    pub regs: Vec<Reg>,
    /// APF attributes; `None` when the host kernel has none.
    pub apf: Option<ApfAttrs>,
}

/// One vGIC register: `KVM_{GET,SET}_DEVICE_ATTR` on the vGIC device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicReg {
    /// Attribute group (`KVM_DEV_ARM_VGIC_GRP_*`).
    pub group: u32,
    /// Attribute (offset or system register, with the MPIDR in bits 63:32
    /// for the per-CPU groups).
    pub attr: u64,
    /// Value: 32 bits for the distributor, redistributor and line-level
    /// groups, 64 for the CPU interface.
    pub value: u64,
}

/// The 16550's registers and input FIFO (vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// DLL.
    pub baud_divisor_low: u8,
    /// DLM.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// Everything of a stopped VM but its memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Guest physical address of RAM.
    pub ram_base: u64,
    /// Bytes of RAM (the memory file's size).
    pub ram_size: u64,
    /// The vCPUs, in creation order (which fixes their redistributors).
    pub vcpus: Vec<VcpuState>,
    /// vGIC registers in restore order: distributor (GICD_IIDR first),
    /// redistributors, line levels, CPU interfaces.
    pub gic: Vec<GicReg>,
    /// The UART.
    pub uart: UartState,
}

/// Snapshot errors.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// A file could not be opened, read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Not a state file.
    #[error("{0} is not an apf-vmm state file (bad magic)")]
    Magic(PathBuf),
    /// A state file of another format version.
    #[error("{path} has snapshot format version {found}; this apf-vmm reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says, or a CRC mismatch.
    #[error("{path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state decoded but cannot be restored.
    #[error("the snapshot cannot be restored: {0}")]
    Invalid(String),
    /// Encoding failed.
    #[error("encoding the VM state: {0}")]
    Encode(postcard::Error),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl VmState {
    /// The state file's bytes: header and payload.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = postcard::to_stdvec(self).map_err(SnapshotError::Encode)?;
        let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes and checks a state file's bytes; `path` is for messages.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<VmState, SnapshotError> {
        let corrupt = |why: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(SnapshotError::Magic(path.to_path_buf()));
        }
        if bytes.len() < HEADER_SIZE {
            return Err(corrupt(format!(
                "{} bytes, shorter than the header",
                bytes.len()
            )));
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = word(8);
        if version != VERSION {
            return Err(SnapshotError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let len = u64::from_le_bytes(len);
        let crc = word(20);
        let payload = &bytes[HEADER_SIZE..];
        if len > MAX_PAYLOAD || payload.len() as u64 != len {
            return Err(corrupt(format!(
                "the header announces {len} bytes of state, the file holds {}",
                payload.len()
            )));
        }
        let actual = crc32fast::hash(payload);
        if actual != crc {
            return Err(corrupt(format!(
                "CRC-32 {actual:#010x}, the header says {crc:#010x}"
            )));
        }
        let state: VmState = postcard::from_bytes(payload)
            .map_err(|e| corrupt(format!("undecodable state: {e}")))?;
        state.validate()?;
        Ok(state)
    }

    /// Checks what a restore relies on.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |why: String| Err(SnapshotError::Invalid(why));
        if self.ram_base != RAM_START {
            return bad(format!(
                "RAM at {:#x}, this VMM places it at {RAM_START:#x}",
                self.ram_base
            ));
        }
        if self.ram_size % MIB != 0 || !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&(self.ram_size / MIB))
        {
            return bad(format!(
                "{} bytes of RAM, not {MIN_MEM_MIB}..{MAX_MEM_MIB} MiB",
                self.ram_size
            ));
        }
        if self.vcpus.is_empty() || self.vcpus.len() > usize::from(MAX_VCPUS) {
            return bad(format!("{} vCPUs, not 1..{MAX_VCPUS}", self.vcpus.len()));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.regs.is_empty() {
                return bad(format!("vCPU {i} has no registers"));
            }
            if let Some(r) = v.regs.iter().find(|r| r.value.len() != reg_size(r.id)) {
                return bad(format!(
                    "vCPU {i} register {:#x} has {} bytes, its id says {}",
                    r.id,
                    r.value.len(),
                    reg_size(r.id)
                ));
            }
        }
        if self.gic.is_empty() {
            return bad("no vGIC state".into());
        }
        Ok(())
    }

    /// vCPUs whose APF block is registered: tasks of the guest may be
    /// parked on them, waiting for the wake-all of the restore.
    pub fn apf_enabled_vcpus(&self) -> Vec<usize> {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, v)| v.apf.is_some_and(|a| a.block & APF_BLOCK_ENABLED != 0))
            .map(|(i, _)| i)
            .collect()
    }

    /// Writes the state file `dir/state`.
    pub fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(STATE_FILE);
        let bytes = self.encode()?;
        let mut f = File::create(&path).map_err(io_err("creating", &path))?;
        f.write_all(&bytes).map_err(io_err("writing", &path))?;
        f.sync_all().map_err(io_err("writing", &path))
    }

    /// Reads and checks `dir/state`, and checks `dir/memory` against it.
    /// Returns the state and the opened memory file.
    pub fn load(dir: &Path) -> Result<(VmState, File), SnapshotError> {
        let path = dir.join(STATE_FILE);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err("reading", &path))?;
        let state = VmState::decode(&bytes, &path)?;
        let mem_path = dir.join(MEMORY_FILE);
        let mem = File::open(&mem_path).map_err(io_err("opening", &mem_path))?;
        let len = mem.metadata().map_err(io_err("reading", &mem_path))?.len();
        if len != state.ram_size {
            return Err(SnapshotError::Corrupt {
                path: mem_path,
                why: format!(
                    "{len} bytes, the state says {} bytes of RAM",
                    state.ram_size
                ),
            });
        }
        Ok((state, mem))
    }
}

/// Writes guest RAM to the memory file, one page at a time: `page(i, buf)`
/// fills `buf` with page `i`. Pages of zeros stay holes. Returns the number
/// of pages written (not holes).
pub fn write_memory<F>(
    path: &Path,
    ram_size: u64,
    page_size: usize,
    mut page: F,
) -> Result<u64, SnapshotError>
where
    F: FnMut(usize, &mut [u8]) -> io::Result<()>,
{
    let mut f = File::create(path).map_err(io_err("creating", path))?;
    let mut buf = vec![0u8; page_size];
    let pages = ram_size / page_size as u64;
    let mut written = 0;
    for i in 0..pages as usize {
        page(i, &mut buf).map_err(io_err("reading guest RAM for", path))?;
        if buf.iter().all(|b| *b == 0) {
            continue;
        }
        f.seek(SeekFrom::Start(i as u64 * page_size as u64))
            .and_then(|_| f.write_all(&buf))
            .map_err(io_err("writing", path))?;
        written += 1;
    }
    f.set_len(ram_size)
        .and_then(|_| f.sync_all())
        .map_err(io_err("writing", path))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> VmState {
        let reg = |id: u64, n: usize| Reg {
            id,
            value: (0..n as u8).collect(),
        };
        VmState {
            ram_base: RAM_START,
            ram_size: 128 * MIB,
            vcpus: vec![
                VcpuState {
                    mpidr: 0x8000_0000,
                    mp_state: 0,
                    regs: vec![
                        reg(0x6030_0000_0010_0000, 8),
                        reg(0x6040_0000_0010_0054, 16),
                    ],
                    apf: Some(ApfAttrs {
                        irq: 18,
                        block: 0x4000_1000 | APF_BLOCK_ENABLED,
                    }),
                },
                VcpuState {
                    mpidr: 0x8000_0001,
                    mp_state: 1,
                    regs: vec![reg(0x6030_0000_0010_0000, 8)],
                    apf: Some(ApfAttrs { irq: 18, block: 0 }),
                },
            ],
            gic: vec![GicReg {
                group: 1,
                attr: 0x8,
                value: 0x43b,
            }],
            uart: UartState {
                line_status: 0x60,
                in_buffer: vec![6],
                ..Default::default()
            },
        }
    }

    fn p() -> &'static Path {
        Path::new("state")
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.encode().unwrap();
        assert_eq!(&bytes[..8], b"APFSNAP\0");
        assert_eq!(VmState::decode(&bytes, p()).unwrap(), s);
        assert_eq!(s.apf_enabled_vcpus(), vec![0]);
    }

    #[test]
    fn other_version_magic_and_corruption_are_refused() {
        let good = sample().encode().unwrap();

        let mut v = good.clone();
        v[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = VmState::decode(&v, p()).unwrap_err();
        assert!(matches!(e, SnapshotError::Version { found: 2, .. }), "{e}");
        assert!(e.to_string().contains("reads version 1"));

        let mut m = good.clone();
        m[0] = b'X';
        assert!(matches!(
            VmState::decode(&m, p()),
            Err(SnapshotError::Magic(_))
        ));
        assert!(matches!(
            VmState::decode(b"APF", p()),
            Err(SnapshotError::Magic(_))
        ));

        // One flipped bit anywhere in the payload.
        for at in [HEADER_SIZE, good.len() / 2, good.len() - 1] {
            let mut c = good.clone();
            c[at] ^= 0x10;
            let e = VmState::decode(&c, p()).unwrap_err();
            assert!(e.to_string().contains("CRC-32"), "{e}");
        }
        // Cut short.
        let e = VmState::decode(&good[..good.len() - 3], p()).unwrap_err();
        assert!(e.to_string().contains("announces"), "{e}");
        let e = VmState::decode(&good[..HEADER_SIZE - 1], p()).unwrap_err();
        assert!(e.to_string().contains("shorter than the header"), "{e}");
    }

    #[test]
    fn states_that_cannot_be_restored_are_refused() {
        let check = |f: &dyn Fn(&mut VmState), text: &str| {
            let mut s = sample();
            f(&mut s);
            // Encoded with a valid CRC: only the content is wrong.
            let e = VmState::decode(&s.encode().unwrap(), p()).unwrap_err();
            assert!(matches!(e, SnapshotError::Invalid(_)), "{e}");
            assert!(e.to_string().contains(text), "{e} lacks {text}");
        };
        check(&|s| s.ram_base = 0, "RAM at 0x0");
        check(&|s| s.ram_size = 3, "bytes of RAM");
        check(&|s| s.ram_size = (MAX_MEM_MIB + 1) * MIB, "bytes of RAM");
        check(&|s| s.vcpus.clear(), "0 vCPUs");
        check(&|s| s.vcpus[1].regs.clear(), "vCPU 1 has no registers");
        check(
            &|s| s.vcpus[0].regs[1].value.pop().map(drop).unwrap_or(()),
            "15 bytes",
        );
        check(&|s| s.gic.clear(), "no vGIC state");
    }

    #[test]
    fn files_round_trip_and_memory_size_is_checked() {
        let dir = std::env::temp_dir().join(format!("apf-vmm-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = sample();
        s.save(&dir).unwrap();
        let ps = 4096;
        let written = write_memory(&dir.join(MEMORY_FILE), s.ram_size, ps, |i, buf| {
            buf.fill(0);
            if i % 1000 == 7 {
                buf[5] = i as u8 | 1;
            }
            Ok(())
        })
        .unwrap();
        let pages = (s.ram_size / ps as u64) as usize;
        assert_eq!(
            written as usize,
            (0..pages).filter(|i| i % 1000 == 7).count()
        );
        let (back, mut mem) = VmState::load(&dir).unwrap();
        assert_eq!(back, s);
        let mut page = vec![0u8; ps];
        mem.seek(SeekFrom::Start(1007 * ps as u64)).unwrap();
        mem.read_exact(&mut page).unwrap();
        assert_eq!(page[5], (1007u32 as u8) | 1);
        assert!(page.iter().enumerate().all(|(i, b)| i == 5 || *b == 0));

        // A memory file of the wrong size is refused.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(MEMORY_FILE))
            .unwrap();
        f.set_len(s.ram_size - 4096).unwrap();
        let e = VmState::load(&dir).unwrap_err();
        assert!(e.to_string().contains("the state says"), "{e}");
        std::fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
        assert!(matches!(VmState::load(&dir), Err(SnapshotError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
