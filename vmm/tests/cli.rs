// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Runs the built binary and checks exit codes and messages for bad input.
//! None of these cases reaches KVM.

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
        "--cgroup-limit",
        "--apf ",
        "--apf-irq",
        "--quiet",
    ] {
        assert!(out.contains(opt), "usage lacks {opt}");
    }
}

#[test]
fn bad_arguments_exit_two() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "missing required option --kernel"),
        (
            &["--kernel", "k", "--vcpus", "9"],
            "invalid value '9' for --vcpus",
        ),
        (
            &["--kernel", "k", "--mem", "32"],
            "invalid value '32' for --mem",
        ),
        (&["--kernel", "k", "--mem-mode", "zram"], "for --mem-mode"),
        (&["--kernel", "k", "--apf", "off"], "for --apf"),
        (
            &["--kernel", "k", "--boot", "uefi"],
            "invalid value 'uefi' for --boot: expected dt or acpi",
        ),
        (&["--kernel", "k", "--apf-irq", "27"], "for --apf-irq"),
        (
            &["--kernel", "k", "--frobnicate"],
            "unknown option '--frobnicate'",
        ),
        (
            &["--kernel", "k", "--mem-mode", "cgroup"],
            "needs --cgroup-limit",
        ),
        (
            &["--kernel", "k", "--uffd-latency-us", "5"],
            "only applies to --mem-mode uffd",
        ),
        (&["--kernel"], "option --kernel needs a value"),
        (
            &["--kernel", "k", "--uffd-source", "ram.img"],
            "unknown option '--uffd-source'",
        ),
    ];
    for (args, msg) in cases {
        let o = vmm(args);
        assert_eq!(o.status.code(), Some(2), "args {args:?}");
        let err = stderr(&o);
        assert!(err.contains(msg), "args {args:?}: stderr {err:?}");
        assert!(err.contains("--help"), "args {args:?}: no hint");
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
