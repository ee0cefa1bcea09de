// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! apf-vmm's command line, parsed with clap: the boot options at the top
//! level (`apf-vmm --kernel IMAGE [options]`, see [`crate::args`]), or one
//! of the commands that move a VM: `snapshot`, `migrate`, `restore` and
//! `receive`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::args::{queue_depth, ApfMode, BootOptions, MAX_UFFD_LATENCY_US};

/// Boots an arm64 Linux Image in a KVM guest with a GICv3, PSCI and a 16550 UART.
#[derive(Debug, Parser)]
#[command(
    name = "apf-vmm",
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "apf-vmm --kernel IMAGE [options]\n       \
                      apf-vmm snapshot|migrate|restore|receive [options]",
    help_template = "{usage-heading} {usage}\n\n{about-with-newline}\n{all-args}{after-help}",
    after_help = "apf-vmm COMMAND --help lists the options of a command.\n\n\
                  Exit status: 0 after a clean guest shutdown, 1 on a runtime error,\n\
                  2 on bad arguments or unusable input files."
)]
pub struct Cli {
    /// The options of a boot, unless there is a command.
    #[command(flatten)]
    pub boot: BootOptions,
    /// The command, if any.
    #[command(subcommand)]
    pub command: Option<MoveCommand>,
}

/// See each variant.
#[derive(Debug, Subcommand)]
pub enum MoveCommand {
    /// save a running VM (by its --api-socket) and stop it
    ///
    /// Ask a running apf-vmm (started with --api-socket) to save its VM
    /// into a directory (files `state` and `memory`) and stop.
    Snapshot(Ask),
    /// migrate a running VM by post-copy to apf-vmm receive
    ///
    /// Ask a running apf-vmm to migrate its VM by post-copy to an
    /// `apf-vmm receive` (its --listen socket, --to) and stop once every
    /// page has arrived.
    Migrate(Ask),
    /// run a snapshot, its RAM served lazily by userfaultfd
    ///
    /// Run a saved VM; its RAM is mapped empty and served on demand from
    /// the snapshot's memory file by userfaultfd (a lazy restore).
    Restore {
        /// The snapshot directory.
        #[arg(long)]
        from: PathBuf,
        /// Also copy every page in the background, demanded ones first.
        #[arg(long)]
        prefetch: bool,
        #[command(flatten)]
        target: Target,
    },
    /// run a VM that arrives by post-copy migration
    ///
    /// Wait for a VM migrating by post-copy (`apf-vmm migrate`) and run it
    /// at once, fetching its pages from the source as it faults.
    Receive {
        /// Unix socket to listen on.
        #[arg(long)]
        listen: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

/// A request to a running VMM.
#[derive(Debug, Args)]
pub struct Ask {
    /// The running VMM's control socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Where to: the snapshot directory (it must exist), or the receiving
    /// VMM's socket.
    #[arg(long)]
    pub to: PathBuf,
    #[command(flatten)]
    pub when: When,
}

/// When the running VM is stopped.
#[derive(Debug, Args)]
pub struct When {
    /// Stop the vCPUs only at a moment when at least N guest tasks are
    /// parked on asynchronous page faults (see the README).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_parked: u32,
    /// Also wait for a moment when a vCPU's control block holds a
    /// PAGE_READY the guest has not ACKed yet.
    #[arg(long)]
    pub unacked: bool,
    /// Give up waiting for the VMM's answer after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

/// APF towards the restored guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApfArg {
    /// As saved.
    On,
    /// Hidden (refused if the saved guest had APF enabled, unless
    /// --allow-apf-loss).
    Hidden,
}

/// Options of the VMM that runs a restored or received VM.
#[derive(Debug, Args)]
pub struct Target {
    /// Delay before each page is served, 0..1000000.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_UFFD_LATENCY_US))]
    pub uffd_latency_us: u64,
    /// Fetches in progress at once, 1..1024 (1: one page at a time).
    #[arg(long, value_name = "N", default_value = "1", value_parser = queue_depth())]
    pub uffd_queue_depth: std::num::NonZeroUsize,
    /// Offer APF as saved (on), or hide it.
    #[arg(long, value_enum, default_value_t = ApfArg::On)]
    pub apf: ApfArg,
    /// With --apf hidden, restore a guest that had APF enabled anyway: the
    /// tasks it had parked on APF will never be woken.
    #[arg(long)]
    pub allow_apf_loss: bool,
    /// Control socket for snapshot and migrate requests, as for a boot.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Do not print statistics and informational messages.
    #[arg(long)]
    pub quiet: bool,
}

impl When {
    /// As the control socket says it.
    pub fn stop_at(&self) -> crate::control::StopAt {
        crate::control::StopAt {
            min_parked: self.min_parked,
            unacked: self.unacked,
        }
    }
}

impl Target {
    /// The APF mode for the VM.
    pub fn apf_mode(&self) -> ApfMode {
        match self.apf {
            ApfArg::On => ApfMode::On,
            ApfArg::Hidden => ApfMode::Hidden,
        }
    }

    /// How the VM's userfaultfd handler fetches pages.
    pub fn fetch(&self) -> crate::uffd::Fetch {
        crate::uffd::Fetch {
            latency: std::time::Duration::from_micros(self.uffd_latency_us),
            depth: self.uffd_queue_depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("apf-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_and_defaults() {
        let c = parse(&[
            "snapshot",
            "--api-socket",
            "/s",
            "--to",
            "/d",
            "--min-parked",
            "2",
        ])
        .unwrap();
        let Some(MoveCommand::Snapshot(a)) = c.command else {
            panic!()
        };
        assert_eq!((a.api_socket, a.to), ("/s".into(), "/d".into()));
        assert_eq!((a.when.min_parked, a.when.timeout), (2, 600));

        let c = parse(&[
            "restore",
            "--from",
            "/d",
            "--uffd-latency-us",
            "1000",
            "--uffd-queue-depth",
            "16",
            "--prefetch",
        ])
        .unwrap();
        let MoveCommand::Restore {
            from,
            prefetch,
            target,
        } = c.command.unwrap()
        else {
            panic!()
        };
        assert_eq!(from, PathBuf::from("/d"));
        assert!(prefetch);
        assert_eq!(target.uffd_latency_us, 1000);
        assert_eq!(target.fetch().latency.as_micros(), 1000);
        assert_eq!(target.fetch().depth.get(), 16);
        assert_eq!(target.apf_mode(), ApfMode::On);
        assert!(!target.allow_apf_loss && !target.quiet && target.api_socket.is_none());

        let c = parse(&[
            "receive",
            "--listen",
            "/l",
            "--apf",
            "hidden",
            "--allow-apf-loss",
        ])
        .unwrap();
        let Some(MoveCommand::Receive { target, .. }) = c.command else {
            panic!()
        };
        assert_eq!(target.apf_mode(), ApfMode::Hidden);
        assert!(target.allow_apf_loss);
        assert_eq!(target.fetch().depth.get(), 1, "one at a time by default");
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [
            &["snapshot", "--to", "/d"][..],
            &["restore"],
            &["restore", "--from", "/d", "--uffd-latency-us", "1000001"],
            &["restore", "--from", "/d", "--uffd-queue-depth", "0"],
            &["receive", "--listen", "/l", "--uffd-queue-depth", "1025"],
            &["restore", "--from", "/d", "--apf", "off"],
            &[
                "migrate",
                "--api-socket",
                "/s",
                "--to",
                "/d",
                "--timeout",
                "0",
            ],
            &["receive", "--listen", "/l", "--kernel", "/k"],
            // Boot options and a command do not mix, in either order.
            &["--kernel", "/k", "restore", "--from", "/d"],
            &["--quiet", "snapshot", "--api-socket", "/s", "--to", "/d"],
            // No `help` command, no --version.
            &["help"],
            &["--version"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
