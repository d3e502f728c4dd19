//! Mount options: the command-line flags and the fstab-style `-o a,b,c` list, merged into one
//! `MountOptions`. An unknown `-o` option is a usage error, never silently ignored.

use std::path::PathBuf;
use std::time::Duration;

/// Dovecot's own waiters give up after 122 s; 30 s leaves IMAP sessions a wide margin while
/// still riding out a busy mailbox.
pub use crate::capture::account::DEFAULT_LOCK_TIMEOUT;

/// Everything `maildirfs mount` was asked to do.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// SOURCE as given: one Maildir, a home holding `Maildir/`, or a tree such as /var/vmail.
    pub source: PathBuf,
    /// MOUNTPOINT as given: an existing directory outside SOURCE (see `mount::check`).
    pub mountpoint: PathBuf,
    /// `--lock-timeout`: how long an account's lock set is retried before it is captured
    /// without its locks (or fails, with `strict_lock`).
    pub lock_timeout: Duration,
    /// `--stall-timeout`: how long one operation under an account's locks may take (see
    /// `capture/watch.rs`).
    pub stall_timeout: Duration,
    /// `--no-lock`: take no lock at all (the listing check still runs).
    pub no_lock: bool,
    /// `--strict-lock`: fail rather than capture an account without its locks; excludes
    /// `no_lock`.
    pub strict_lock: bool,
    /// `--exclude-indexes`: also hide Dovecot's rebuildable index files.
    pub exclude_indexes: bool,
    /// Let other users in; always with `default_permissions`.
    pub allow_other: bool,
    /// `--foreground`: serve from this process until unmounted, instead of detaching.
    pub foreground: bool,
    /// -1 quiet, 0 normal, 1.. verbose.
    pub verbosity: i8,
    /// `--log-file`: where log lines are appended (default: syslog once detached, stderr in
    /// the foreground).
    pub log_file: Option<PathBuf>,
    /// `-o passthrough`: let the kernel read file contents straight from the source files.
    pub passthrough: bool,
    /// `--no-read-ahead`: serve each file only when read, without reading the next ones of
    /// its directory ahead into the kernel's cache.
    pub no_read_ahead: bool,
    /// `--lock-host NAME`: the host written into our locks (containers; see `capture/lock.rs`).
    pub lock_host: Option<String>,
    /// `--include`/`--exclude`: which accounts (paths relative to SOURCE) the view holds.
    pub selection: crate::maildir::select::Selection,
    /// `--summary-json FILE`: where to write the mount's report as JSON once mounted, and
    /// again at unmount with the captures made while serving.
    pub summary_json: Option<PathBuf>,
    /// Show a live capture line on a terminal (off with `-q`).
    pub progress: bool,
    /// `--capture`: when accounts are captured.
    pub capture: CaptureMode,
    /// `--working-set FILES`: how many files the captured accounts may hold pinned together
    /// (default: from the fd limit and the machine's memory; see `capture/pin.rs`).
    pub working_set: Option<usize>,
    /// `--control-dir`: where Dovecot keeps the control files.
    pub control_dir: ControlDir,
}

/// Where Dovecot keeps each mailbox's control files (`--control-dir`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ControlDir {
    /// From `doveconf`'s mail settings when they describe SOURCE, else in the Maildir.
    #[default]
    Learn,
    /// `--control-dir maildir`: in each mailbox's own directory, whatever doveconf says.
    InMaildir,
    /// A separate control tree.
    Tree(crate::maildir::control::Template),
}

impl std::str::FromStr for ControlDir {
    type Err = String;
    fn from_str(s: &str) -> Result<ControlDir, String> {
        if s == "maildir" {
            return Ok(ControlDir::InMaildir);
        }
        s.parse().map(ControlDir::Tree)
    }
}

/// When accounts are captured (`--capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// At mount while the working set has room, the others when first read; an account
    /// leaves the working set (least recently used first) to make room.
    #[default]
    OnDemand,
    /// Every account at mount, one instant for the whole store, never let go: pins as far as
    /// the fd limit allows, re-resolution for the rest.
    AtMount,
}

impl std::str::FromStr for CaptureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<CaptureMode, String> {
        match s {
            "on-demand" => Ok(CaptureMode::OnDemand),
            "at-mount" => Ok(CaptureMode::AtMount),
            _ => Err(format!("{s}: not on-demand or at-mount")),
        }
    }
}

impl MountOptions {
    /// The defaults of `maildirfs mount SOURCE MOUNTPOINT`: locks taken, accounts captured on
    /// demand, control files where doveconf says (else in the Maildir).
    pub fn new(source: PathBuf, mountpoint: PathBuf) -> MountOptions {
        MountOptions {
            source,
            mountpoint,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            stall_timeout: crate::capture::watch::STALL_TIMEOUT,
            no_lock: false,
            strict_lock: false,
            exclude_indexes: false,
            allow_other: false,
            foreground: false,
            verbosity: 0,
            log_file: None,
            passthrough: false,
            no_read_ahead: false,
            lock_host: None,
            selection: crate::maildir::select::Selection::default(),
            summary_json: None,
            progress: true,
            capture: CaptureMode::OnDemand,
            working_set: None,
            control_dir: ControlDir::Learn,
        }
    }

    /// Applies one `-o` list. Returns the offending option as a usage error.
    pub fn apply_o(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                // Always true of this filesystem (it is mounted ro,nodev,nosuid whatever is
                // asked), or meant for mount(8), mount.fuse3 or systemd: mount.fuse3 adds
                // `dev,suid` to every helper's options.
                (
                    "ro" | "nodev" | "nosuid" | "noexec" | "dev" | "suid" | "exec" | "async"
                    | "sync" | "atime" | "noatime" | "relatime" | "strictatime" | "nodiratime"
                    | "lazytime" | "defaults",
                    None,
                ) => {}
                (
                    "auto" | "noauto" | "user" | "nouser" | "users" | "owner" | "group" | "nofail"
                    | "_netdev",
                    None,
                ) => {}
                _ if key.starts_with("x-") || key == "comment" => {}
                ("rw", None) => return Err("option rw: the view is read-only".to_owned()),
                ("allow_other" | "default_permissions", None) => {
                    self.allow_other |= key == "allow_other"
                }
                ("exclude_indexes", None) => self.exclude_indexes = true,
                ("no_lock", None) => self.no_lock = true,
                ("strict_lock", None) => self.strict_lock = true,
                ("foreground", None) => self.foreground = true,
                ("passthrough", None) => self.passthrough = true,
                ("no_read_ahead", None) => self.no_read_ahead = true,
                ("lock_timeout", Some(v)) => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| format!("option lock_timeout={v}: not a number of seconds"))?;
                    self.lock_timeout = Duration::from_secs(secs);
                }
                ("stall_timeout", Some(v)) => {
                    let secs: u64 = v.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                        format!("option stall_timeout={v}: not a whole number of seconds above 0")
                    })?;
                    self.stall_timeout = Duration::from_secs(secs);
                }
                ("capture", Some(v)) => {
                    self.capture = v.parse().map_err(|e| format!("option capture={e}"))?
                }
                ("working_set", Some(v)) => {
                    let n: usize = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("option working_set={v}: not a whole number of files above 0")
                    })?;
                    self.working_set = Some(n);
                }
                ("log_file", Some(v)) if !v.is_empty() => self.log_file = Some(PathBuf::from(v)),
                ("control_dir", Some(v)) => self.control_dir = v.parse()?,
                ("lock_host", Some(v)) => self.lock_host = Some(valid_lock_host(v)?),
                ("include", Some(v)) => self.selection.include(v)?,
                ("exclude", Some(v)) => self.selection.exclude(v)?,
                ("summary_json", Some(v)) if !v.is_empty() => {
                    self.summary_json = Some(PathBuf::from(v))
                }
                _ => return Err(format!("unknown mount option: {opt}")),
            }
        }
        if self.no_lock && self.strict_lock {
            return Err("no_lock and strict_lock exclude each other".to_owned());
        }
        Ok(())
    }
}

/// A host name for `--lock-host`: Dovecot refuses (fatally) host names with `/`, CR, LF or
/// TAB, and `:` would end the pid field; empty means nothing.
pub fn valid_lock_host(v: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(['/', '\r', '\n', '\t', ':']) || v.chars().any(char::is_control) {
        return Err(format!(
            "lock host {v:?}: must be a non-empty name without / : or control characters"
        ));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o_options() {
        let mut o = MountOptions::new("/s".into(), "/m".into());
        o.apply_o(
            "ro,noauto,allow_other,exclude_indexes,lock_timeout=5,dev,suid,x-systemd.automount",
        )
        .unwrap();
        assert!(o.allow_other && o.exclude_indexes && !o.no_read_ahead);
        assert_eq!(o.lock_timeout, Duration::from_secs(5));
        o.apply_o("no_read_ahead").unwrap();
        assert!(o.no_read_ahead);
        assert!(o.apply_o("rw").is_err());
        assert!(o.apply_o("bogus").unwrap_err().contains("bogus"));
        assert!(o.apply_o("lock_timeout=x").is_err());
        let mut o = MountOptions::new("/s".into(), "/m".into());
        assert!(o.apply_o("no_lock,strict_lock").is_err());
        let mut o = MountOptions::new("/s".into(), "/m".into());
        o.apply_o("lock_host=backup.example").unwrap();
        assert_eq!(o.lock_host.as_deref(), Some("backup.example"));
        assert!(o.apply_o("lock_host=a/b").is_err());
        assert!(o.apply_o("lock_host=a:b").is_err());
        let mut o = MountOptions::new("/s".into(), "/m".into());
        o.apply_o("include=example.org/*,exclude=*/spam,summary_json=/tmp/s.json")
            .unwrap();
        assert!(!o.selection.is_all());
        assert!(o.apply_o("include=/abs").is_err());
    }
}
