//! The command line, as clap sees it: used by `main.rs`, and by the man page generator
//! (`examples/gen_man.rs`) so that `maildirfs.1` says what `--help` says.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::MountOptions;

/// The command line of `maildirfs`: one subcommand (the mount helper's form is rewritten
/// first by [`normalize_args`]).
#[derive(Parser, Debug)]
#[command(
    name = "maildirfs",
    version,
    about = "Capture a live Maildir tree under Dovecot's locks and serve it as a frozen, read-only FUSE view",
    long_about = "Capture a live Maildir tree under Dovecot's locks and serve it as a frozen, \
read-only FUSE view, so that rsync, restic, borg or tar copy one consistent instant of every \
account while Dovecot keeps running.\n\n  maildirfs mount /var/vmail /mnt/frozen\n  restic backup /mnt/frozen\n  maildirfs umount /mnt/frozen\n\n\
The form `maildirfs SOURCE MOUNTPOINT -o OPTIONS` (as mount.fuse3 runs it for an fstab line of \
type fuse.maildirfs) is `maildirfs mount`.\n\n\
Exit status: 0 success; 1 failure (one line on stderr naming the path), or problems found by \
verify, or a dead view in status; 2 usage error.",
    after_help = "Documentation: README.md and docs/OPERATIONS.md; `man maildirfs`."
)]
pub struct Cli {
    /// The subcommand to run (one is required).
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What a capture holds at most, whatever an account's owner plants (`capture/account.rs`,
/// `maildir/discover.rs`); stated on `mount --help` and in the man page.
const MOUNT_LIMITS: &str = "Limits, whatever an account's owner puts in their Maildir:\n  - Control files (dovecot-uidlist, dovecot-keywords, subscriptions, dovecot-acl, ...) are taken only when they are regular files; a FIFO, socket, device or directory in their place is left out, logged and counted.\n  - At most 16 MiB of control files are held in memory per account, and at most 1 MiB per file other than dovecot-uidlist; a larger one is left out with a warning. A dovecot-uidlist that does not fit is never left out: it is pinned under the lock and served at its captured length.\n  - Directories more than 256 levels below an account (or below SOURCE outside accounts) are shown empty, with a warning.\n  - An operation that hangs under an account's locks for --stall-timeout seconds gets that account's locks released at once; listing that account in the view fails with EIO (so a \
mirroring backup deletes nothing of it), and the others go on.\n  - SIGTERM or SIGINT releases every lock at once, at any moment, and ends the server.";

/// The subcommands; each variant's doc comment is its `--help` text.
// Parsed once per run: the size of the mount variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Capture SOURCE and mount the frozen view on MOUNTPOINT; returns once it is mounted.
    #[command(after_long_help = MOUNT_LIMITS)]
    Mount(MountArgs),
    /// Unmount a view and wait until its serving process has exited (also clears the mount of a
    /// server that crashed).
    Umount {
        /// The mount point of a maildirfs view.
        mountpoint: PathBuf,
    },
    /// Show every mounted view (or one): source, capture time, counts, accounts captured
    /// without a lock, longest lock hold, pinned files, files vanished, bytes served and files
    /// read ahead so far.
    Status {
        /// Only this view.
        mountpoint: Option<PathBuf>,
        /// Print JSON (an object with a "mounts" array) for monitoring scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check a Maildir tree (a backup copy, a restore, or a view) the way Dovecot will read it.
    /// Exit 0 clean, 1 problems found.
    Verify {
        /// A Maildir, a home, or a whole tree.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The arguments of `maildirfs mount`, made into [`MountOptions`] by
/// [`MountArgs::into_options`]; each field's doc comment is its `--help` text.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// One Maildir, a home directory holding Maildir/, or a whole tree such as /var/vmail.
    pub source: PathBuf,
    /// An existing directory outside SOURCE; the view hides what it holds while mounted.
    pub mountpoint: PathBuf,
    /// Seconds to keep retrying an account's locks before capturing it without them (or
    /// failing, with --strict-lock).
    #[arg(long, value_name = "SECS",
          default_value_t = crate::admin::options::DEFAULT_LOCK_TIMEOUT.as_secs())]
    pub lock_timeout: u64,
    /// Seconds one operation may take while an account's locks are held (an open, a read, a
    /// directory listing: milliseconds on a healthy disk) before maildirfs releases that
    /// account's locks, makes it fail with EIO in the view and goes on with the others (with
    /// --strict-lock, fails).
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Take no lock at all (the listing check still runs); reported in the summary. Default:
    /// take Dovecot's dovecot-uidlist.lock on every mailbox of an account at once.
    #[arg(long, conflicts_with = "strict_lock")]
    pub no_lock: bool,
    /// Fail instead of capturing an account whose locks cannot be had. Default: capture it
    /// without them and say so in the summary.
    #[arg(long)]
    pub strict_lock: bool,
    /// Only these accounts: GLOB is matched against paths relative to SOURCE, one component
    /// at a time (`*` does not cross `/`); a match takes everything below it. Repeatable.
    /// Default: everything.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out paths matching GLOB (as for --include), even when included. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Also hide Dovecot's rebuildable index files (dovecot.index*, dovecot.list.index*, ...).
    /// Default: shown (as captured after the locks are released).
    #[arg(long)]
    pub exclude_indexes: bool,
    /// Let other users use the view; the kernel then checks the captured owner and mode
    /// (always with default_permissions). Default: only the mounting user.
    #[arg(long)]
    pub allow_other: bool,
    /// Mount options, comma-separated, fstab style: ro, allow_other, exclude_indexes,
    /// no_lock, strict_lock, lock_timeout=SECS, stall_timeout=SECS, lock_host=NAME,
    /// include=GLOB, exclude=GLOB, capture=MODE, working_set=FILES, control_dir=TEMPLATE,
    /// log_file=PATH, summary_json=PATH, passthrough, no_read_ahead (noauto, nofail, _netdev,
    /// ... ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Stay in the foreground and serve until unmounted or stopped (for systemd or debugging).
    /// Default: return once mounted, serving from a detached process.
    #[arg(short, long)]
    pub foreground: bool,
    /// More log detail (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log, and no progress line; the summary line is still printed.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Append log lines here. Default: syslog once detached (stderr with --foreground).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Write the mount's summary as JSON to PATH once the view is mounted, and again when it
    /// is unmounted, with every account's lock hold (µs) including those captured on demand.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Write NAME instead of this host's name into the locks, so that a Dovecot in another PID
    /// namespace (maildirfs in a container) judges them by age, not by a pid it cannot see.
    /// Default: this host's name.
    #[arg(long, value_name = "NAME", value_parser = crate::admin::options::valid_lock_host)]
    pub lock_host: Option<String>,
    /// When accounts are captured. on-demand: at mount while the working set has room (a store
    /// that fits is captured whole, at one instant), every other account when it is first
    /// read; each account is frozen from its capture until it leaves the working set (least
    /// recently used first, never one used in the last seconds) and is captured again, at a
    /// new instant, if read again. at-mount: every account at mount, kept until umount.
    #[arg(long, value_name = "MODE", default_value = "on-demand",
          value_parser = ["on-demand", "at-mount"])]
    pub capture: String,
    /// How many files the captured accounts may keep pinned together (one fd each). Default:
    /// what the fd limit leaves, and never more than about 1% of the machine's memory in
    /// kernel memory.
    #[arg(long, value_name = "FILES", value_parser = clap::value_parser!(u64).range(1..))]
    pub working_set: Option<u64>,
    /// Let the kernel read file contents straight from the source files (FUSE passthrough,
    /// Linux >= 6.9, root). Default: maildirfs serves reads and the kernel caches them (faster
    /// for many small files).
    #[arg(long)]
    pub passthrough: bool,
    /// Read each file only when a reader asks for it. Default: when a directory's files are
    /// read in order, the next ones are read ahead, several at a time, into the kernel's cache
    /// (a cold backup then runs faster than reading the source directly).
    #[arg(long)]
    pub no_read_ahead: bool,
    /// Where Dovecot keeps each mailbox's dovecot-uidlist, its lock and dovecot-keywords when
    /// they are not in the Maildir (Dovecot 2.3's CONTROL= in mail_location, 2.4's
    /// mail_control_path): maildirfs locks and reads them there and serves them in the
    /// mailbox's directory of the view. %n is the account directory's name, or its parent's
    /// when it is called Maildir; %d the directory above that; %u is %n@%d; a leading ~ is the
    /// directory holding Maildir; 2.4's %{user | username}, %{user | domain}, %{user} are
    /// accepted. `maildir`: in the Maildir, whatever doveconf says. Default: learnt from
    /// doveconf when it is installed and its mail settings describe SOURCE (the summary says
    /// so), else in the Maildir.
    #[arg(long, value_name = "TEMPLATE")]
    pub control_dir: Option<String>,
}

impl MountArgs {
    /// The options of this command line; a usage error as text.
    pub fn into_options(self) -> Result<MountOptions, String> {
        let mut o = MountOptions::new(self.source, self.mountpoint);
        o.lock_timeout = std::time::Duration::from_secs(self.lock_timeout);
        o.stall_timeout = std::time::Duration::from_secs(self.stall_timeout);
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
        o.progress = !self.quiet;
        o.log_file = self.log_file;
        o.summary_json = self.summary_json;
        o.passthrough = self.passthrough;
        o.no_read_ahead = self.no_read_ahead;
        o.capture = self.capture.parse()?;
        o.working_set = self.working_set.map(|n| n as usize);
        o.lock_host = self.lock_host;
        if let Some(c) = &self.control_dir {
            o.control_dir = c.parse()?;
        }
        for g in &self.include {
            o.selection.include(g)?;
        }
        for g in &self.exclude {
            o.selection.exclude(g)?;
        }
        for list in &self.options {
            o.apply_o(list)?;
        }
        // The server may change directory; files it writes are named absolutely.
        for p in [&mut o.log_file, &mut o.summary_json].into_iter().flatten() {
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
        Ok(o)
    }
}

/// The command line with the mount helper's form rewritten: `maildirfs SOURCE MOUNTPOINT -o
/// OPTS`, as `mount.fuse3` runs the program of an fstab line of type `fuse.maildirfs`, is
/// `maildirfs mount SOURCE MOUNTPOINT -o OPTS`.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let known: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .chain(["help".to_owned()])
        .collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(first) if first.starts_with('-') || known.iter().any(|k| k == first) => args,
        None => args,
        Some(_) => {
            let mut out = args;
            out.insert(1, OsString::from("mount"));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stated_limits_are_the_ones_in_force() {
        let mib = |b: usize| format!("{} MiB", b >> 20);
        assert!(MOUNT_LIMITS.contains(&mib(crate::capture::ACCOUNT_CONTROL_BYTES)));
        assert!(MOUNT_LIMITS.contains(&mib(crate::capture::CONTROL_FILE_BYTES)));
        let depth = format!("{} levels", crate::maildir::discover::MAX_DEPTH);
        assert!(MOUNT_LIMITS.contains(&depth));
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_helper_form_is_mount() {
        assert_eq!(
            normalize_args(os(&["maildirfs", "/var/vmail", "/mnt/f", "-o", "ro"])),
            os(&["maildirfs", "mount", "/var/vmail", "/mnt/f", "-o", "ro"])
        );
        for same in [
            &["maildirfs", "status"][..],
            &["maildirfs", "--help"],
            &["maildirfs"],
            &["maildirfs", "help", "mount"],
        ] {
            assert_eq!(normalize_args(os(same)), os(same));
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
