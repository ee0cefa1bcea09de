// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM's diagnostics: a `log` backend that writes each record as one
//! line on stderr, `apf-vmm: error: ...`, `apf-vmm: warning: ...`, or just
//! `apf-vmm: ...` for information (the forms the VMM has always printed).
//! `--quiet` keeps warnings and errors only.
//!
//! The lines that other programs read (the statistics, `snapshot: ...`,
//! `restore: ...`) are not diagnostics: they are printed on stdout as they
//! are, not through here.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

static LOGGER: Stderr = Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug | Level::Trace => "debug: ",
        };
        // One write of the whole line, so that threads do not interleave.
        let line = format!("apf-vmm: {tag}{}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The level `--quiet` (or its absence) stands for.
pub fn level(quiet: bool) -> LevelFilter {
    if quiet {
        LevelFilter::Warn
    } else {
        LevelFilter::Info
    }
}

/// Sends the `log` records to stderr, up to `level(quiet)`. Only the first
/// call installs the logger; any call sets the level.
pub fn init(quiet: bool) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level(quiet));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keeps_warnings() {
        assert_eq!(level(false), LevelFilter::Info);
        assert_eq!(level(true), LevelFilter::Warn);
        assert!(Level::Warn <= level(true) && Level::Info > level(true));
        assert!(Level::Info <= level(false) && Level::Debug > level(false));
    }
}
