//! The `maildirfs` command: parse the arguments, call the library, turn the result into an
//! exit status (0 success, 1 failure with one line on stderr, 2 usage error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use maildirfs::MountOptions;

#[derive(Parser)]
#[command(
    name = "maildirfs",
    version,
    about = "Capture a live Maildir tree under Dovecot's locks and serve it as a frozen, read-only FUSE view",
    long_about = "Capture a live Maildir tree under Dovecot's locks and serve it as a frozen, \
read-only FUSE view, so that rsync, restic, borg or tar copy one consistent instant of every \
account while Dovecot keeps running.\n\n  maildirfs mount /var/vmail /mnt/frozen\n  restic backup /mnt/frozen\n  maildirfs umount /mnt/frozen"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture SOURCE and mount the frozen view on MOUNTPOINT; returns once it is mounted.
    Mount(MountArgs),
    /// Unmount a view and wait until its serving process has exited.
    Umount {
        /// The mount point of a maildirfs view.
        mountpoint: PathBuf,
    },
}

#[derive(Args)]
struct MountArgs {
    /// One Maildir, a home directory holding Maildir/, or a whole tree such as /var/vmail.
    source: PathBuf,
    /// An existing directory outside SOURCE; the view hides what it holds while mounted.
    mountpoint: PathBuf,
    /// Seconds to keep retrying an account's locks before capturing it without them.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lock_timeout: u64,
    /// Take no lock at all (the listing check still runs); reported in the summary.
    #[arg(long, conflicts_with = "strict_lock")]
    no_lock: bool,
    /// Fail instead of capturing an account whose locks cannot be had.
    #[arg(long)]
    strict_lock: bool,
    /// Also hide Dovecot's rebuildable index files (dovecot.index*, dovecot.list.index*, ...).
    #[arg(long)]
    exclude_indexes: bool,
    /// Let other users use the view; the kernel then checks the captured owner and mode
    /// (always with default_permissions).
    #[arg(long)]
    allow_other: bool,
    /// Mount options, comma-separated, fstab style: ro, allow_other, exclude_indexes,
    /// no_lock, strict_lock, lock_timeout=SECS, log_file=PATH, passthrough (noauto, nofail,
    /// ... ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Stay in the foreground and serve until unmounted or stopped (for systemd or debugging).
    #[arg(short, long)]
    foreground: bool,
    /// More log detail (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Append log lines here (default: syslog once detached, stderr before).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Write NAME instead of this host's name into the locks, so that a Dovecot in another PID
    /// namespace (maildirfs in a container) judges them by age, not by a pid it cannot see.
    #[arg(long, value_name = "NAME", value_parser = maildirfs::options::valid_lock_host)]
    lock_host: Option<String>,
    /// Let the kernel read file contents straight from the source files (FUSE passthrough,
    /// Linux >= 6.9, root); without it, or where the kernel refuses, maildirfs serves reads and
    /// the kernel caches them.
    #[arg(long)]
    passthrough: bool,
}

impl MountArgs {
    fn into_options(self) -> Result<MountOptions, String> {
        let mut o = MountOptions::new(self.source, self.mountpoint);
        o.lock_timeout = std::time::Duration::from_secs(self.lock_timeout);
        o.no_lock = self.no_lock;
        o.strict_lock = self.strict_lock;
        o.exclude_indexes = self.exclude_indexes;
        o.allow_other = self.allow_other;
        o.foreground = self.foreground;
        o.verbosity = if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        };
        o.log_file = self.log_file;
        o.passthrough = self.passthrough;
        o.lock_host = self.lock_host;
        for list in &self.options {
            o.apply_o(list)?;
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mount(args) => {
            let opts = match args.into_options() {
                Ok(o) => o,
                Err(usage) => {
                    eprintln!("maildirfs: {usage}");
                    return ExitCode::from(2);
                }
            };
            maildirfs::mount::run(&opts).map(|summary| {
                if let Some(s) = summary {
                    eprintln!("maildirfs: {s}");
                }
            })
        }
        Cmd::Umount { mountpoint } => maildirfs::umount::umount(&mountpoint).map(|fin| {
            if let Some(f) = fin {
                eprintln!("maildirfs: {f}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maildirfs: {e}");
            ExitCode::FAILURE
        }
    }
}
