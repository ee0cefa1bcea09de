// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! apf-vmm: a small arm64 KVM VMM for exercising KVM/arm64 asynchronous
//! page faults. It boots an arm64 Linux Image with a GICv3, PSCI and a
//! 16550 UART, can hide APF from the guest, can make guest page fetches
//! slow (userfaultfd or a memory cgroup), and prints each vCPU's `apf_*`
//! statistics at exit.
//!
//! Everything up to the KVM calls (arguments, input files, layout, device
//! tree or ACPI and EFI tables, memory modes) builds and is tested on any
//! Linux host; the VM itself only exists on aarch64.

#![deny(clippy::undocumented_unsafe_blocks)]
// On other architectures the VM path is compiled out, which leaves parts of
// the code without a caller there; the aarch64 build has them all.
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]

use std::process::ExitCode;

use apf_vmm::error::{Error, EXIT_USAGE};
use apf_vmm::{
    acpi, args, cgroup, cli, control, efi, fdt, image, layout, lifecycle, logger, memory,
};
#[cfg(target_arch = "aarch64")]
use apf_vmm::{bus, evict, serial, uffd, vm};

use args::{BootMode, Command};
use image::KernelInfo;
use layout::{Layout, MIB};
use memory::Blob;

/// Everything derived from the command line before any resource is taken.
struct Prepared {
    args: args::Args,
    layout: Layout,
    /// The device tree (first; x0 points at it) and, with `--boot acpi`,
    /// the EFI and ACPI tables.
    firmware: Vec<Blob>,
}

/// What tells the guest kernel about the machine: the device tree, or for
/// `--boot acpi` the stub device tree, the EFI structures and the ACPI
/// tables.
fn firmware(args: &args::Args, layout: &Layout) -> Result<Vec<Blob>, Error> {
    match args.boot {
        BootMode::Dt => {
            let dtb = fdt::create_fdt(&fdt::FdtConfig {
                vcpus: args.vcpus,
                ram: layout.ram,
                bootargs: &args.cmdline,
                initrd: layout.initrd,
            })?;
            Ok(vec![Blob {
                what: "device tree",
                region: layout.dtb,
                bytes: dtb,
            }])
        }
        BootMode::Acpi => {
            let fw = layout::firmware_layout(layout);
            let acpi = acpi::create_acpi_tables(args.vcpus, fw.acpi)?;
            let efi = efi::create_efi_tables(&efi::EfiConfig {
                ram: layout.ram,
                efi: fw.efi,
                acpi: fw.acpi,
                rsdp: acpi.rsdp,
            })?;
            let dtb = fdt::create_stub_fdt(&fdt::StubFdtConfig {
                bootargs: &args.cmdline,
                initrd: layout.initrd,
                uefi: efi.params,
            })?;
            Ok(vec![
                Blob {
                    what: "stub device tree",
                    region: fw.dtb,
                    bytes: dtb,
                },
                Blob {
                    what: "EFI tables",
                    region: fw.efi,
                    bytes: efi.blob,
                },
                Blob {
                    what: "ACPI tables",
                    region: fw.acpi,
                    bytes: acpi.blob,
                },
            ])
        }
    }
}

/// Checks the input files, places them in guest RAM and writes the DTB
/// (and the EFI and ACPI tables).
fn prepare(args: args::Args) -> Result<Prepared, Error> {
    let kernel: KernelInfo = image::inspect_kernel(&args.kernel)?;
    let initrd_size = args
        .initrd
        .as_deref()
        .map(image::inspect_initrd)
        .transpose()?;
    let layout = layout::compute(args.mem_mib * MIB, &kernel, initrd_size)?;
    let firmware = firmware(&args, &layout)?;
    Ok(Prepared {
        args,
        layout,
        firmware,
    })
}

/// Creates the cgroup for `--mem-mode cgroup` (memory.high = `limit_mib`,
/// memory.max = `max_mib`) and moves the process in. Must happen before
/// guest RAM is touched so that it is charged there.
fn enter_cgroup(limit_mib: u64, max_mib: u64) -> Result<cgroup::Cgroup, Error> {
    let root = std::path::Path::new(cgroup::CGROUP_ROOT);
    cgroup::check_cgroup2(root)?;
    let name = apf_vmm::memcg::cgroup_name(std::process::id());
    let mut cg = cgroup::Cgroup::create(root, &name, limit_mib * MIB, max_mib * MIB)?;
    cg.join()?;
    if !cg.swap_max_set() {
        log::warn!(
            "could not set memory.swap.max=max in {} (no swap accounting?)",
            cg.path().display()
        );
    }
    log::info!(
        "running in cgroup {} with memory.high = {limit_mib} MiB, memory.max = {max_mib} MiB",
        cg.path().display()
    );
    Ok(cg)
}

#[cfg(target_arch = "aarch64")]
fn run(p: Prepared) -> Result<u8, Error> {
    use std::sync::{mpsc, Arc, OnceLock};
    use std::time::Duration;

    use vmm_sys_util::eventfd::EventFd;

    use args::MemMode;
    use lifecycle::{Backing, Session};
    use vm::{EvictSetup, Vm, VmConfig, VmEvent};

    let Prepared {
        args,
        layout,
        firmware,
    } = p;
    let quiet = args.quiet;

    // Dropped last: the process leaves the cgroup only after guest RAM is gone.
    let cgroup = match (args.mem_mode, args.cgroup_limit_mib, args.cgroup_max_mib) {
        (MemMode::Cgroup, Some(limit), Some(max)) => Some(enter_cgroup(limit, max)?),
        _ => None,
    };

    let mem = memory::create(&layout)?;
    if args.mem_mode == MemMode::Cgroup {
        memory::no_huge_pages(&mem, &layout)?;
    }
    memory::load_kernel(&mem, &args.kernel, &layout)?;
    if let (Some(path), Some(region)) = (args.initrd.as_deref(), layout.initrd) {
        memory::load_initrd(&mem, path, region)?;
    }
    for blob in &firmware {
        memory::load_blob(&mem, blob)?;
    }

    let (tx, rx) = mpsc::channel::<VmEvent>();
    // The guest may ask for an eviction pass on its console; the evictor
    // answers on the UART's input (`serial::EVICT_REQUEST`).
    let evict_channel = evict::EvictChannel::new();
    let evict_requests = (args.mem_mode == MemMode::Uffd && args.uffd.evict_ms > 0)
        .then(|| evict_channel.requester());
    // The bus, once made, for the evictor's answers.
    let answer_bus = Arc::new(OnceLock::<Arc<bus::MmioBus<serial::Console>>>::new());

    // Registered after loading, so the images are already present and only
    // the pages the guest touches later go through the handler (until an
    // eviction drops them too).
    let mut evict = None;
    let mut backing = Backing::plain(mem, layout.ram);
    if args.mem_mode == MemMode::Uffd {
        // No source file: a page is served as zeros the first time.
        let (store, _filler) = backing.register_uffd(
            uffd::Fetch {
                latency: Duration::from_micros(args.uffd.latency_us),
                depth: args.uffd.depth,
            },
            uffd::PageSource::File(None),
            None,
            &tx,
        )?;
        if args.uffd.evict_ms > 0 {
            evict = Some(EvictSetup {
                interval: Duration::from_millis(args.uffd.evict_ms),
                store,
                channel: evict_channel,
                on_done: {
                    let answer_bus = answer_bus.clone();
                    Box::new(move || {
                        // The bus exists before any vCPU runs.
                        if let Some(bus) = answer_bus.get() {
                            let _ = bus.serial().enqueue_input(&[serial::EVICT_DONE]);
                        }
                    })
                },
            });
        }
    }

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let hook: serial::LineHook = Box::new(move |line: &[u8]| {
        if let Some(req) = &evict_requests {
            if line.ends_with(serial::EVICT_REQUEST) {
                req.request();
            }
        }
    });
    let serial = serial::SerialDevice::new(
        serial_irq.try_clone().map_err(Error::EventFd)?,
        serial::LineTap::new(std::io::stdout(), hook),
    );
    let bus = Arc::new(bus::MmioBus::new(serial));
    let _ = answer_bus.set(bus.clone());

    let vm = Vm::create(
        &VmConfig {
            vcpus: args.vcpus,
            layout: &layout,
            apf: args.apf,
            apf_irq: args.apf_irq,
        },
        backing.mem(),
        serial_irq,
    )?;
    let code = Session {
        vm,
        bus,
        tx,
        rx,
        evict,
        backing,
        quiet,
        api_socket: args.api_socket,
        migration_in: None,
        cgroup: cgroup.as_ref().map(|cg| cg.path().to_path_buf()),
        on_stop: None,
    }
    .run()?;
    // The process leaves the cgroup only after guest RAM is gone.
    drop(cgroup);
    Ok(code)
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_p: Prepared) -> Result<u8, Error> {
    Err(Error::UnsupportedArch(std::env::consts::ARCH))
}

/// Sends `req` to the VMM behind `a.api_socket` and prints its answer.
fn ask(a: &cli::Ask, req: control::Request) -> Result<u8, Error> {
    let timeout = std::time::Duration::from_secs(a.when.timeout);
    println!("{}", control::send(&a.api_socket, &req, timeout)?);
    Ok(0)
}

/// `apf-vmm snapshot|migrate|restore|receive`.
fn run_move(command: cli::MoveCommand) -> Result<u8, Error> {
    use cli::MoveCommand;
    use control::Request;

    match command {
        MoveCommand::Snapshot(a) => ask(
            &a,
            Request::Snapshot {
                dir: a.to.clone(),
                at: a.when.stop_at(),
            },
        ),
        MoveCommand::Migrate(a) => ask(
            &a,
            Request::Migrate {
                to: a.to.clone(),
                at: a.when.stop_at(),
            },
        ),
        #[cfg(target_arch = "aarch64")]
        MoveCommand::Restore {
            from,
            prefetch,
            target,
        } => lifecycle::restore(&from, prefetch, &target),
        #[cfg(target_arch = "aarch64")]
        MoveCommand::Receive { listen, target } => lifecycle::receive(&listen, &target),
        #[cfg(not(target_arch = "aarch64"))]
        MoveCommand::Restore { from, target, .. } => {
            // Everything up to KVM is checked here too.
            lifecycle::load_for_restore(&from, target.apf_mode(), target.allow_apf_loss)?;
            Err(Error::UnsupportedArch(std::env::consts::ARCH))
        }
        #[cfg(not(target_arch = "aarch64"))]
        MoveCommand::Receive { .. } => Err(Error::UnsupportedArch(std::env::consts::ARCH)),
    }
}

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            // Help goes to stdout and is no error.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let quiet = match &command {
        Command::Run(args) => args.quiet,
        Command::Move(cli::MoveCommand::Restore { target, .. })
        | Command::Move(cli::MoveCommand::Receive { target, .. }) => target.quiet,
        Command::Move(cli::MoveCommand::Snapshot(_) | cli::MoveCommand::Migrate(_)) => false,
    };
    logger::init(quiet);
    let result = match command {
        Command::Run(args) => prepare(*args).and_then(run),
        Command::Move(command) => run_move(command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use apf_vmm::testutil::{u32_at, u64_at};

    /// A minimal arm64 Image (valid header, `image_size` as given) in a
    /// temporary file, removed on drop.
    struct TempImage(std::path::PathBuf);

    impl TempImage {
        fn new(name: &str, image_size: u64) -> TempImage {
            let mut h = vec![0u8; 4096];
            h[16..24].copy_from_slice(&image_size.to_le_bytes());
            h[24..32].copy_from_slice(&0b010u64.to_le_bytes());
            h[56..60].copy_from_slice(b"ARM\x64");
            // Tests run side by side in one process: a name per file.
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("apf-vmm-main-{}-{n}-{name}", std::process::id()));
            std::fs::write(&path, h).unwrap();
            TempImage(path)
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn prepared(extra: &[&str]) -> (Prepared, TempImage, TempImage) {
        let kernel = TempImage::new("Image", 16 * MIB);
        let initrd = TempImage::new("initrd", 0);
        let mut argv: Vec<OsString> = vec![
            "--kernel".into(),
            kernel.0.clone().into(),
            "--initrd".into(),
            initrd.0.clone().into(),
        ];
        argv.extend(extra.iter().map(OsString::from));
        let Ok(Command::Run(args)) = args::parse(argv) else {
            panic!("bad test arguments");
        };
        (prepare(*args).unwrap(), kernel, initrd)
    }

    fn be(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0, |v, b| (v << 8) | u64::from(*b))
    }

    #[test]
    fn dt_boot_writes_the_full_device_tree() {
        let (p, _k, _i) = prepared(&["--vcpus", "2"]);
        assert_eq!(p.firmware.len(), 1);
        assert_eq!(p.firmware[0].region, p.layout.dtb);
        let fdt = ::fdt::Fdt::new(&p.firmware[0].bytes).unwrap();
        assert!(fdt.find_node("/cpus").is_some());
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,uefi-system-table").is_none());
        assert!(!p.args.cmdline.contains("efi=noruntime"));
    }

    /// Loads what `--boot acpi` prepares into guest RAM and follows it the
    /// way the kernel does: DT at x0 → /chosen → EFI system table →
    /// configuration table → RSDP → XSDT → tables; EFI memory map.
    #[test]
    fn acpi_boot_as_the_kernel_sees_it() {
        let (p, _k, _i) = prepared(&["--boot", "acpi", "--vcpus", "3", "--mem", "256"]);
        assert!(p.args.cmdline.ends_with(" efi=noruntime"));
        let mem = memory::create(&p.layout).unwrap();
        for blob in &p.firmware {
            memory::load_blob(&mem, blob).unwrap();
        }
        let read = |addr: u64, len: usize| {
            let mut v = vec![0u8; len];
            mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        };

        // The device tree at x0 is the stub.
        let dtb = read(p.layout.dtb.base, 4096);
        let fdt = ::fdt::Fdt::new(&dtb).unwrap();
        let names: Vec<_> = fdt
            .find_node("/")
            .unwrap()
            .children()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, vec!["chosen"]);
        assert_eq!(fdt.chosen().bootargs(), Some(p.args.cmdline.as_str()));
        let chosen = fdt.find_node("/chosen").unwrap();
        let prop = |name: &str| be(chosen.property(name).unwrap().value);
        let systab = prop("linux,uefi-system-table");
        let mmap = prop("linux,uefi-mmap-start");
        let mmap_size = prop("linux,uefi-mmap-size") as usize;
        let desc_size = prop("linux,uefi-mmap-desc-size") as usize;
        assert_eq!(prop("linux,uefi-mmap-desc-ver"), 1);
        let initrd = p.layout.initrd.unwrap();
        assert_eq!(prop("linux,initrd-start"), initrd.base);

        // System table → configuration table → RSDP.
        let st = read(systab, 120);
        assert_eq!(&st[..8], b"IBI SYST");
        let n = u64_at(&st, 104) as usize;
        let ct = read(u64_at(&st, 112), 24 * n);
        let acpi20 = r_efi::efi::ACPI_20_TABLE_GUID;
        let rsdp = (0..n)
            .find(|i| &ct[24 * i..24 * i + 16] == acpi20.as_bytes())
            .map(|i| u64_at(&ct, 24 * i + 16))
            .unwrap();
        let r = read(rsdp, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        let xsdt_addr = u64_at(&r, 24);
        let xsdt_len = u32_at(&read(xsdt_addr, 8), 4) as usize;
        let xsdt = read(xsdt_addr, xsdt_len);
        let mut tables = vec![xsdt_addr];
        tables.extend(xsdt[36..].chunks_exact(8).map(|e| u64_at(e, 0)));
        let mut sigs = Vec::new();
        for addr in &tables {
            let len = u32_at(&read(*addr, 8), 4) as usize;
            let t = read(*addr, len);
            assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            sigs.push(String::from_utf8(t[..4].to_vec()).unwrap());
            if &t[..4] == b"APIC" {
                let gicc = t[44..]
                    .iter()
                    .step_by(82)
                    .take_while(|ty| **ty == 0xb)
                    .count();
                assert_eq!(gicc, 3);
            }
        }
        assert_eq!(sigs, ["XSDT", "FACP", "APIC", "GTDT", "SPCR"]);

        // The memory map: RAM once; the tables in ACPI reclaim memory, the
        // system table and the map itself in memory the kernel keeps, and
        // the kernel, initrd and DT in conventional memory.
        let map = read(mmap, mmap_size);
        let entries: Vec<(u32, u64, u64)> = map
            .chunks_exact(desc_size)
            .map(|d| (u32_at(d, 0), u64_at(d, 8), u64_at(d, 24) * 4096))
            .collect();
        let type_of = |addr: u64| {
            let hits: Vec<_> = entries
                .iter()
                .filter(|(_, base, size)| (*base..base + size).contains(&addr))
                .collect();
            assert_eq!(hits.len(), 1, "{addr:#x} in {} entries", hits.len());
            hits[0].0
        };
        for addr in [p.layout.ram.base, p.layout.ram.end() - 1] {
            type_of(addr);
        }
        let total: u64 = entries.iter().map(|e| e.2).sum();
        assert_eq!(total, p.layout.ram.size);
        for addr in tables.iter().copied().chain([rsdp]) {
            assert_eq!(type_of(addr), r_efi::efi::ACPI_RECLAIM_MEMORY);
        }
        for addr in [systab, mmap, mmap + mmap_size as u64 - 1] {
            assert_eq!(type_of(addr), r_efi::efi::RUNTIME_SERVICES_DATA);
        }
        for addr in [p.layout.kernel.base, initrd.base, p.layout.dtb.base] {
            assert_eq!(type_of(addr), r_efi::efi::CONVENTIONAL_MEMORY);
        }
    }
}
