// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! cgroup memory mode: the VMM moves itself into a cgroup v2 whose
//! `memory.high` is below the guest's RAM, so the host swaps guest pages out
//! and later faults them back in (the slow path that APF hides).
//!
//! The cgroup is `<root>/apf-vmm-<pid>` with `memory.high` = the limit,
//! `memory.max` = a backstop above it and `memory.swap.max` = max. Above
//! memory.high the kernel reclaims and throttles the VMM's threads; only
//! at memory.max could a charge that reclaim cannot satisfy end in an OOM
//! kill. With memory.max alone, that happened whenever reclaim fell
//! behind the slow swap device for a moment. On drop the process moves
//! back to the cgroup it came from and the directory is removed.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::FileError;

/// Where cgroup v2 is expected.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `CGROUP2_SUPER_MAGIC` from <linux/magic.h>.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// cgroup errors.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// The root is missing or is not a cgroup2 file system.
    #[error("cgroup v2 is not mounted at {0} (mount -t cgroup2 none {0})")]
    NotCgroup2(PathBuf),
    /// The memory controller cannot be used.
    #[error("the cgroup v2 memory controller is not available in {0}/cgroup.controllers")]
    NoMemoryController(PathBuf),
    /// Mounting cgroup2 failed.
    #[error("mounting cgroup2 on {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A cgroup file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
}

/// Checks that `root` is the mount point of a cgroup2 file system.
pub fn check_cgroup2(root: &Path) -> Result<(), CgroupError> {
    let not_v2 = || CgroupError::NotCgroup2(root.to_path_buf());
    let c_path = CString::new(root.as_os_str().as_bytes()).map_err(|_| not_v2())?;
    // SAFETY: statfs is plain data; zero is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is valid for writing.
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    // f_type's integer type differs between libcs; compare as u64.
    if ret != 0 || st.f_type as u64 != CGROUP2_SUPER_MAGIC {
        return Err(not_v2());
    }
    Ok(())
}

/// Mounts cgroup2 on `root` unless it is there already (apf-e2e does, in
/// the emulated host). Returns whether it mounted it.
pub fn ensure_cgroup2(root: &Path) -> Result<bool, CgroupError> {
    if check_cgroup2(root).is_ok() {
        return Ok(false);
    }
    fs::create_dir_all(root).map_err(FileError::at(root))?;
    let mount_err = |source| CgroupError::Mount {
        path: root.to_path_buf(),
        source,
    };
    let target = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| mount_err(io::ErrorKind::InvalidInput.into()))?;
    let fstype = c"cgroup2";
    // SAFETY: all strings are NUL-terminated and live for the call; no
    // data argument.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(mount_err(io::Error::last_os_error()));
    }
    Ok(true)
}

/// Whether a `cgroup.controllers` / `cgroup.subtree_control` line lists `name`.
pub fn lists_controller(content: &str, name: &str) -> bool {
    content.split_whitespace().any(|c| c == name)
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::` line).
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// A cgroup the VMM created and joined.
#[derive(Debug)]
pub struct Cgroup {
    root: PathBuf,
    path: PathBuf,
    /// Cgroup to return to on drop, relative to `root`, once joined.
    origin: Option<String>,
    /// Whether memory.swap.max could be set.
    swap_max_set: bool,
}

impl Cgroup {
    /// Creates `<root>/<name>` with the memory controller enabled and the
    /// given `memory.high` and `memory.max`. Does not move the process yet.
    pub fn create(
        root: &Path,
        name: &str,
        high_bytes: u64,
        max_bytes: u64,
    ) -> Result<Cgroup, CgroupError> {
        let controllers = root.join("cgroup.controllers");
        let available = fs::read_to_string(&controllers).map_err(FileError::at(&controllers))?;
        if !lists_controller(&available, "memory") {
            return Err(CgroupError::NoMemoryController(root.to_path_buf()));
        }
        let subtree = root.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&subtree).map_err(FileError::at(&subtree))?;
        if !lists_controller(&enabled, "memory") {
            fs::write(&subtree, "+memory").map_err(FileError::at(&subtree))?;
        }

        let path = root.join(name);
        fs::create_dir(&path).map_err(FileError::at(&path))?;
        let mut cg = Cgroup {
            root: root.to_path_buf(),
            path,
            origin: None,
            swap_max_set: false,
        };
        // From here on, drop removes the directory again on failure.
        let max = cg.path.join("memory.max");
        fs::write(&max, max_bytes.to_string()).map_err(FileError::at(&max))?;
        let high = cg.path.join("memory.high");
        fs::write(&high, high_bytes.to_string()).map_err(FileError::at(&high))?;
        let swap_max = cg.path.join("memory.swap.max");
        cg.swap_max_set = fs::write(&swap_max, "max").is_ok();
        Ok(cg)
    }

    /// Moves this whole process (all threads) into the cgroup.
    pub fn join(&mut self) -> Result<(), CgroupError> {
        let own = Path::new("/proc/self/cgroup");
        let content = fs::read_to_string(own).map_err(FileError::at(own))?;
        let origin = own_cgroup(&content).unwrap_or("/").to_string();
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string()).map_err(FileError::at(&procs))?;
        self.origin = Some(origin);
        Ok(())
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether memory.swap.max = max was applied (false without swap accounting).
    pub fn swap_max_set(&self) -> bool {
        self.swap_max_set
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(origin) = self.origin.take() {
            let procs = self
                .root
                .join(origin.trim_start_matches('/'))
                .join("cgroup.procs");
            if let Err(e) = fs::write(&procs, std::process::id().to_string()) {
                eprintln!(
                    "apf-vmm: warning: leaving cgroup via {}: {e}",
                    procs.display()
                );
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("apf-vmm: warning: removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("apf-vmm-cg-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn plain_directory_is_not_cgroup2() {
        let root = fake_root("statfs");
        assert!(matches!(
            check_cgroup2(&root),
            Err(CgroupError::NotCgroup2(_))
        ));
        assert!(matches!(
            check_cgroup2(&root.join("missing")),
            Err(CgroupError::NotCgroup2(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn ensure_cgroup2_reports_what_failed() {
        let root = fake_root("ensure");
        let file = root.join("file");
        fs::write(&file, "").unwrap();
        // Below a regular file: the mount point cannot be made.
        let e = ensure_cgroup2(&file.join("cg")).unwrap_err();
        assert!(matches!(e, CgroupError::Io(_)), "{e}");
        assert!(e.to_string().contains("file/cg"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn controller_lists() {
        assert!(lists_controller(
            "cpuset cpu io memory hugetlb pids\n",
            "memory"
        ));
        assert!(!lists_controller("cpu io pids\n", "memory"));
        assert!(!lists_controller("memoryx", "memory"));
        assert!(!lists_controller("", "memory"));
    }

    #[test]
    fn own_cgroup_line() {
        let v1_and_v2 = "4:memory:/docker/abc\n0::/user.slice/session-1.scope\n";
        assert_eq!(own_cgroup(v1_and_v2), Some("/user.slice/session-1.scope"));
        assert_eq!(own_cgroup("0::/\n"), Some("/"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn create_writes_limits_and_enables_memory() {
        let root = fake_root("create");
        fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "cpu\n").unwrap();

        let cg = Cgroup::create(&root, "apf-vmm-test", 128 << 20, 192 << 20).unwrap();
        assert_eq!(cg.path(), root.join("apf-vmm-test"));
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.high")).unwrap(),
            "134217728"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.max")).unwrap(),
            "201326592"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.swap.max")).unwrap(),
            "max"
        );
        assert!(cg.swap_max_set());

        // Drop removes the directory; it must be empty on a real cgroupfs, so
        // clear the regular files the fake one got first.
        for f in ["memory.high", "memory.max", "memory.swap.max"] {
            fs::remove_file(cg.path().join(f)).unwrap();
        }
        let dir = cg.path().to_path_buf();
        drop(cg);
        assert!(!dir.exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn subtree_control_left_alone_when_memory_enabled() {
        let root = fake_root("enabled");
        fs::write(root.join("cgroup.controllers"), "memory\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let cg = Cgroup::create(&root, "x", 64 << 20, 96 << 20).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "memory pids\n"
        );
        for f in ["memory.high", "memory.max", "memory.swap.max"] {
            fs::remove_file(cg.path().join(f)).unwrap();
        }
        drop(cg);
        assert!(!root.join("x").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_memory_controller() {
        let root = fake_root("nomem");
        fs::write(root.join("cgroup.controllers"), "cpu pids\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        assert!(matches!(
            Cgroup::create(&root, "x", 64 << 20, 96 << 20),
            Err(CgroupError::NoMemoryController(_))
        ));
        assert!(!root.join("x").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn existing_directory_is_an_error() {
        let root = fake_root("exists");
        fs::write(root.join("cgroup.controllers"), "memory\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
        fs::create_dir(root.join("taken")).unwrap();
        assert!(matches!(
            Cgroup::create(&root, "taken", 64 << 20, 96 << 20),
            Err(CgroupError::Io(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }
}
