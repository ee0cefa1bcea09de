// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Runs the built binary and checks exit codes and messages for bad input.
//! None of these cases reaches KVM.

use apf_vmm::testutil::{list_cases, list_words};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf-vmm"))
        .args(args)
        .output()
        .expect("run apf-vmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("apf-vmm-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal arm64 Image: valid header, `image_size` as given, 4 KiB file.
fn image(image_size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[24..32].copy_from_slice(&0b010u64.to_le_bytes());
    h[56..60].copy_from_slice(b"ARM\x64");
    h
}

#[test]
fn help_exits_zero() {
    let o = vmm(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("Usage: apf-vmm --kernel IMAGE"));
    for opt in [
        "--initrd",
        "--cmdline",
        "--boot",
        "--vcpus",
        "--mem ",
        "--mem-mode",
        "--uffd-latency-us",
        "--uffd-evict-ms",
        "--cgroup-limit",
        "--cgroup-max",
        "--apf ",
        "--apf-irq",
        "--api-socket",
        "--quiet",
        "snapshot",
        "migrate",
        "restore",
        "receive",
    ] {
        assert!(out.contains(opt), "usage lacks {opt}");
    }
}

#[test]
fn bad_arguments_exit_two() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[],
            "the following required arguments were not provided:\n  --kernel <PATH>",
        ),
        (
            &["--kernel", "k", "--vcpus", "9"],
            "invalid value '9' for '--vcpus <N>': 9 is not in 1..=8",
        ),
        (
            &["--kernel", "k", "--vcpus", "+2"],
            "invalid value '+2' for '--vcpus <N>'",
        ),
        (
            &["--kernel", "k", "--mem", "32"],
            "invalid value '32' for '--mem <MIB>'",
        ),
        (
            &["--kernel", "k", "--mem-mode", "zram"],
            "for '--mem-mode <MODE>'",
        ),
        (
            &["--kernel", "k", "--apf", "off"],
            "for '--apf <on|hidden>'",
        ),
        (
            &["--kernel", "k", "--boot", "uefi"],
            "invalid value 'uefi' for '--boot <dt|acpi>'\n  [possible values: dt, acpi]",
        ),
        (
            &["--kernel", "k", "--apf-irq", "27"],
            "invalid value '27' for '--apf-irq <INTID>': used by the PMU",
        ),
        (
            &[
                "--kernel",
                "k",
                "--mem-mode",
                "uffd",
                "--uffd-evict-ms",
                "5",
            ],
            "for '--uffd-evict-ms <N>': must be 0 (off) or 10..600000",
        ),
        (
            &["--kernel", "k", "--frobnicate"],
            "unexpected argument '--frobnicate' found",
        ),
        (
            &["--kernel", "k", "--mem-mode", "cgroup"],
            "the following required arguments were not provided:\n  --cgroup-limit <MIB>",
        ),
        (
            &[
                "--kernel=k",
                "--mem-mode=cgroup",
                "--cgroup-limit=64",
                "--cgroup-max=32",
            ],
            "invalid value '32' for --cgroup-max: below --cgroup-limit (64)",
        ),
        (
            &["--kernel", "k", "--uffd-latency-us", "5"],
            "--uffd-latency-us only applies to --mem-mode uffd",
        ),
        (
            &["--kernel"],
            "a value is required for '--kernel <PATH>' but none was supplied",
        ),
        (
            &["--kernel", "a", "--kernel", "b"],
            "the argument '--kernel <PATH>' cannot be used multiple times",
        ),
        (
            &["--kernel", "k", "--uffd-source", "ram.img"],
            "unexpected argument '--uffd-source' found",
        ),
        (
            &["--kernel", "k", "restore", "--from", "/snap"],
            "the subcommand 'restore' cannot be used with '--kernel <PATH>'",
        ),
        (&["--version"], "unexpected argument '--version' found"),
    ];
    for (args, msg) in cases {
        let o = vmm(args);
        assert_eq!(o.status.code(), Some(2), "args {args:?}");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "args {args:?}: stderr {err:?}");
        assert!(err.contains(msg), "args {args:?}: stderr {err:?}");
        assert!(err.contains("try '--help'"), "args {args:?}: no hint");
        assert!(o.stdout.is_empty(), "args {args:?}");
    }
}

#[test]
fn unusable_files_exit_two() {
    let s = Scratch::new("files");
    let good = s.file("Image", &image(16 << 20));
    let elf = s.file("vmlinux", &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0].repeat(32));
    let empty = s.file("empty", b"");
    let dir = s.path().to_str().unwrap().to_string();
    let missing = s.path().join("missing").to_str().unwrap().to_string();
    let big_initrd = s.file("big.cpio", &vec![1u8; 50 << 20]);
    let huge = s.file("huge", &image(100 << 20));

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--kernel", &missing], "kernel"),
        (vec!["--kernel", &dir], "not a regular file"),
        (vec!["--kernel", &elf], "no arm64 Image magic"),
        (vec!["--kernel", &good, "--initrd", &missing], "initrd"),
        (vec!["--kernel", &good, "--initrd", &empty], "initrd"),
        // 16 MiB kernel + 50 MiB initrd + 2 MiB DTB block > 64 MiB.
        (
            vec!["--kernel", &good, "--initrd", &big_initrd, "--mem", "64"],
            "does not fit",
        ),
        // image_size beyond RAM.
        (vec!["--kernel", &huge, "--mem", "64"], "--mem gives 64 MiB"),
    ];
    for (args, msg) in &cases {
        let o = vmm(args);
        assert_eq!(o.status.code(), Some(2), "args {args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(msg), "args {args:?}: stderr {err:?}");
    }
}

/// On a non-arm64 build, valid input gets as far as the VM and stops there
/// with status 1: proof that all checks before KVM passed.
#[cfg(not(target_arch = "aarch64"))]
#[test]
fn valid_input_reaches_the_vm_stage() {
    let s = Scratch::new("valid");
    let kernel = s.file("Image", &image(16 << 20));
    let initrd = s.file("initrd.cpio", &[7u8; 1000]);
    for boot in ["dt", "acpi"] {
        let o = vmm(&[
            "--kernel", &kernel, "--initrd", &initrd, "--vcpus", "2", "--mem", "128", "--boot",
            boot,
        ]);
        assert_eq!(o.status.code(), Some(1), "--boot {boot}");
        assert!(
            stderr(&o).contains("only on an arm64 KVM host"),
            "{}",
            stderr(&o)
        );
    }
    // Errors are logged as "apf-vmm: error: ...", --quiet or not.
    for quiet in [&[][..], &["--quiet"]] {
        let mut args = vec!["--kernel", kernel.as_str()];
        args.extend(quiet);
        let o = vmm(&args);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).starts_with("apf-vmm: error: apf-vmm runs guests only"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn move_commands_refuse_bad_input_before_any_vm() {
    let s = Scratch::new("moves");
    // No snapshot there: exit 2, and nothing else happens.
    let o = vmm(&["restore", "--from", s.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("state"), "{}", stderr(&o));
    // A state file that is not one.
    s.file("state", b"not a snapshot");
    s.file("memory", b"");
    let o = vmm(&["restore", "--from", s.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad magic"), "{}", stderr(&o));
    // Options are checked by clap: a latency out of range.
    let o = vmm(&["restore", "--from", "/x", "--uffd-latency-us", "2000000"]);
    assert_eq!(o.status.code(), Some(2));
    // No VMM behind the socket: a runtime failure, exit 1.
    let sock = s.path().join("none.sock");
    let o = vmm(&[
        "snapshot",
        "--api-socket",
        sock.to_str().unwrap(),
        "--to",
        "/tmp",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("control socket"), "{}", stderr(&o));
    let o = vmm(&["restore", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--allow-apf-loss"));
}

/// The arguments after the apf-vmm program word, if the line runs apf-vmm.
fn vmm_args(words: &[String]) -> Option<Vec<String>> {
    let at = words.iter().position(|w| w.ends_with("/apf-vmm"))?;
    Some(words[at + 1..].to_vec())
}

/// Every apf-vmm command line the harness runs, with where it comes from:
/// each case of `tests/*.list` (and, for an `apf-e2e --move` case, the same
/// with the `--api-socket` apf-e2e adds), the cases `scripts/bench.sh`
/// writes (its shell variables given each value it uses), and the commands
/// apf-e2e runs to restore or receive a moved VM.
fn harness_command_lines() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (list, words) in list_cases() {
        let Some(args) = vmm_args(&words) else {
            continue;
        };
        let name = format!("{}: {}", list.display(), words[0]);
        if words.iter().any(|w| w == "--move") {
            let mut moved = args.clone();
            moved.extend(["--api-socket".into(), "/tmp/apf-e2e-ctl-0".into()]);
            out.push((format!("{name} (with --move)"), moved));
        }
        out.push((name, args));
    }

    // scripts/bench.sh: "$vmm --vcpus $vcpus ${vmm_opt[$regime]} $hide
    // --cmdline ..." for the storm and free cases, "$vmm --vcpus $vcpus
    // --mem-mode plain $hide --cmdline ..." (plus apf-e2e's --api-socket)
    // for the move cases.
    let vmm = "/bin/apf-vmm --kernel /guest/Image --initrd /guest/initrd.cpio --mem 256";
    let mut regimes: Vec<String> = [200, 1000, 5000]
        .iter()
        .flat_map(|lat| {
            [1, 16].map(|depth| {
                format!(
                    "--mem-mode uffd --uffd-latency-us {lat} --uffd-queue-depth {depth} \
                     --uffd-evict-ms 600000"
                )
            })
        })
        .collect();
    regimes.push("--mem-mode cgroup --cgroup-limit 48".into());
    regimes.push("--mem-mode plain".into());
    regimes.push("--mem-mode plain --api-socket /tmp/apf-e2e-ctl-0".into());
    for regime in &regimes {
        for vcpus in [1, 2] {
            for hide in ["", "--apf hidden"] {
                let line = format!(
                    "bench 900 {vmm} --vcpus {vcpus} {regime} {hide} --cmdline \
                     \"console=ttyS0 panic=-1 kunit.enable=0 APF_BENCH_ROUNDS=5 APF_BENCH=storm\""
                );
                let args = vmm_args(&list_words(&line)).unwrap();
                out.push((format!("scripts/bench.sh: {line}"), args));
            }
        }
    }

    // src/bin/apf-e2e.rs, and the examples of vmm/README.md.
    for line in [
        "restore --apf hidden --quiet --from /tmp/snap-0",
        "restore --from /tmp/snap-0 --uffd-latency-us 500 --uffd-queue-depth 1 \
         --api-socket /tmp/ctl-1 --prefetch",
        "receive --listen /tmp/rx-0 --uffd-latency-us 500 --uffd-queue-depth 16 \
         --api-socket /tmp/ctl-1",
        "restore --from /snap --uffd-latency-us 1000 --uffd-queue-depth 16",
        "snapshot --api-socket /run/vm.sock --to /snap --min-parked 1 --unacked",
        "migrate --api-socket /run/vm.sock --to /run/dst.sock",
    ] {
        out.push((format!("move: {line}"), list_words(line)));
    }
    out
}

/// Checks that each option of `argv` took effect in `a` as written.
fn check_meaning(what: &str, argv: &[String], a: &apf_vmm::args::Args) {
    use apf_vmm::args::BootMode;
    let lower = |d: &dyn std::fmt::Debug| format!("{d:?}").to_lowercase();
    let mut i = 0;
    while i < argv.len() {
        let (opt, value) = (argv[i].as_str(), argv.get(i + 1).map(String::as_str));
        i += 2;
        let v = value.unwrap_or_default();
        let ok = match opt {
            "--kernel" => a.kernel == Path::new(v),
            "--initrd" => a.initrd.as_deref() == Some(Path::new(v)),
            "--cmdline" => match a.boot {
                BootMode::Dt => a.cmdline == v,
                BootMode::Acpi => a.cmdline == format!("{v} efi=noruntime"),
            },
            "--boot" => lower(&a.boot) == v,
            "--vcpus" => a.vcpus.to_string() == v,
            "--mem" => a.mem_mib.to_string() == v,
            "--mem-mode" => lower(&a.mem_mode) == v,
            "--uffd-latency-us" => a.uffd.latency_us.to_string() == v,
            "--uffd-evict-ms" => a.uffd.evict_ms.to_string() == v,
            "--uffd-queue-depth" => a.uffd.depth.to_string() == v,
            "--cgroup-limit" => a.cgroup_limit_mib.map(|n| n.to_string()).as_deref() == Some(v),
            "--cgroup-max" => a.cgroup_max_mib.map(|n| n.to_string()).as_deref() == Some(v),
            "--apf" => lower(&a.apf) == v,
            "--apf-irq" => a.apf_irq.map(|n| n.to_string()).as_deref() == Some(v),
            "--api-socket" => a.api_socket.as_deref() == Some(Path::new(v)),
            "--quiet" => {
                i -= 1;
                a.quiet
            }
            other => panic!("{what}: no check for {other}"),
        };
        assert!(ok, "{what}: {opt} {v:?} gave {a:?}");
    }
}

/// Every command line the harness gives apf-vmm still parses, to what it
/// says.
#[test]
fn harness_command_lines_parse() {
    use apf_vmm::args::{parse, Command};
    let lines = harness_command_lines();
    let boots = lines.iter().filter(|(_, a)| a[0] == "--kernel").count();
    assert!(boots >= 20, "only {boots} boot command lines found");
    let mut seen = std::collections::HashSet::new();
    for (what, argv) in &lines {
        if !seen.insert(argv.clone()) {
            continue;
        }
        match parse(argv) {
            Ok(Command::Run(a)) => check_meaning(what, argv, &a),
            Ok(Command::Move(_)) => assert!(what.starts_with("move: "), "{what}"),
            Err(e) => panic!("{what}: {argv:?}:\n{e}"),
        }
    }
    assert!(seen.len() >= 20, "{} distinct command lines", seen.len());
}
