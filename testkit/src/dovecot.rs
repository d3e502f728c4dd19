//! A private Dovecot for tests: its own config in a temporary directory, no network listener,
//! a passwd-file userdb whose homes are under the fixture's `src/`, an unprivileged mail uid.
//! Started with `dovecot -c`, driven with `doveadm -c` and `dovecot-lda -c`, stopped on drop.
//!
//! Two flavors: Dovecot 2.3 installed on the host (Debian 12), and Dovecot 2.4 in the Debian 13
//! root (`debian13.rs`), each with its own config syntax. A user is `alice` (home
//! `<homes>/alice`) or `alice@example.org` (home `<homes>/example.org/alice`), with the Maildir
//! in `Maildir/` of the home; the control files are there too, or in a separate control tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::debian13::{Debian13, debian13};

/// The mail uid and gid (Dovecot refuses root: `first_valid_uid`).
pub const MAIL_UID: u32 = 5000;

pub const LDA: &str = "/usr/lib/dovecot/dovecot-lda";

/// Which Dovecot runs.
#[derive(Debug, Clone)]
pub enum Flavor {
    /// Dovecot 2.3, installed on the host.
    Host23,
    /// Dovecot 2.4.1, in the Debian 13 root.
    Debian13_24(Debian13),
}

impl Flavor {
    /// Dovecot 2.3 on the host, if it is installed (see [`dovecot_available`]).
    pub fn host23() -> Option<Flavor> {
        dovecot_available().then_some(Flavor::Host23)
    }

    /// Dovecot 2.4 in the Debian 13 root, if the root is built (see [`debian13`]).
    pub fn debian13_24() -> Option<Flavor> {
        debian13().map(Flavor::Debian13_24)
    }

    /// `"2.3"` or `"2.4"`.
    pub fn version(&self) -> &'static str {
        match self {
            Flavor::Host23 => "2.3",
            Flavor::Debian13_24(_) => "2.4",
        }
    }

    /// A command that runs this flavor's `program` (`dovecot`, `doveadm`, [`LDA`]).
    pub fn command(&self, program: &str) -> Command {
        match self {
            Flavor::Host23 => Command::new(program),
            Flavor::Debian13_24(root) => root.command(program),
        }
    }

    /// The config for a Dovecot in `dir` whose users are in `dir/passwd`, with the control
    /// files in the Maildir or under `control` (a template in Dovecot 2.3's `%d`/`%n`).
    fn config(&self, dir: &Path, control: Option<&str>, inbox_folder: bool) -> String {
        let d = dir.display();
        let common = format!(
            "protocols =\n\
             base_dir = {d}/run\n\
             state_dir = {d}/state\n\
             log_path = {d}/dovecot.log\n\
             info_log_path = {d}/dovecot.log\n\
             ssl = no\n\
             first_valid_uid = {MAIL_UID}\n\
             mail_uid = {MAIL_UID}\n\
             mail_gid = {MAIL_UID}\n"
        );
        let inbox = "namespace inbox {\n  inbox = yes\n  separator = /\n}\n";
        match self {
            Flavor::Host23 => {
                let control = control.map_or(String::new(), |c| format!(":CONTROL={c}"));
                let inbox_location = if inbox_folder {
                    ":INBOX=~/Maildir/.INBOX"
                } else {
                    ""
                };
                format!(
                    "{common}\
                     mail_location = maildir:~/Maildir{inbox_location}{control}\n\
                     passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
                     userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
                     {inbox}"
                )
            }
            Flavor::Debian13_24(_) => {
                let inbox_path = if inbox_folder {
                    "mail_inbox_path = ~/Maildir/.INBOX\n"
                } else {
                    ""
                };
                let control = control.map_or(String::new(), |c| {
                    format!(
                        "mail_control_path = {}\n",
                        c.replace("%d", "%{user | domain}")
                            .replace("%n", "%{user | username}")
                    )
                });
                format!(
                    "dovecot_config_version = 2.4.1\n\
                     dovecot_storage_version = 2.4.1\n\
                     {common}\
                     mail_driver = maildir\n\
                     mail_path = ~/Maildir\n\
                     {inbox_path}\
                     {control}\
                     passdb passwd-file {{\n  passwd_file_path = {d}/passwd\n}}\n\
                     userdb passwd-file {{\n  passwd_file_path = {d}/passwd\n}}\n\
                     {inbox}"
                )
            }
        }
    }
}

/// How a test's Dovecot is set up.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    pub flavor: Flavor,
    /// A separate control tree, as a template with `%d` (the domain) and `%n` (the user name
    /// without it), e.g. `/tmp/x/control/%d/%n`; `None`: the control files are in the Maildir.
    pub control: Option<&'a str>,
    /// INBOX in a Maildir++ folder of its own, `Maildir/.INBOX` (2.3 `INBOX=`, 2.4
    /// `mail_inbox_path`, Debian 13's example), instead of the Maildir's root.
    pub inbox_folder: bool,
}

pub struct Dovecot {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// Where the users' homes are: `<homes>/<user>` or `<homes>/<domain>/<user>`.
    pub homes: PathBuf,
    pub flavor: Flavor,
    control: Option<String>,
}

/// Whether Dovecot 2.3 is installed on the host; with `MAILDIRFS_REQUIRE_FUSE=1` (CI) its
/// absence fails.
pub fn dovecot_available() -> bool {
    let ok = Path::new(LDA).exists() && Command::new("dovecot").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("MAILDIRFS_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("dovecot-core is not installed (scripts/test installs it)");
        }
        eprintln!("skipping: dovecot not installed");
    }
    ok
}

/// The Dovecot to run a test against, if the test can run: FUSE first when it mounts, then
/// that Dovecot (each skips, or with `MAILDIRFS_REQUIRE_FUSE=1` fails, when missing).
pub fn can_run(mounts: bool, flavor: fn() -> Option<Flavor>) -> Option<Flavor> {
    if mounts && !super::fuse_available() {
        return None;
    }
    flavor()
}

/// For each `name => mounts`, a module `name` with the tests `dovecot23` and `dovecot24`
/// that run `name(&Flavor)` against Dovecot 2.3 on the host and 2.4 in the Debian 13 root.
#[macro_export]
macro_rules! against_both_dovecots {
    ($($name:ident => $mounts:expr),* $(,)?) => {$(
        mod $name {
            use $crate::dovecot::{Flavor, can_run};
            #[test]
            fn dovecot23() {
                if let Some(f) = can_run($mounts, Flavor::host23) {
                    super::$name(&f);
                }
            }
            #[test]
            fn dovecot24() {
                if let Some(f) = can_run($mounts, Flavor::debian13_24) {
                    super::$name(&f);
                }
            }
        }
    )*};
}

/// A user's name and domain: `alice@example.org` is `("alice", "example.org")`, `alice` is
/// `("alice", "")`.
fn name_and_domain(user: &str) -> (&str, &str) {
    user.split_once('@').unwrap_or((user, ""))
}

impl Dovecot {
    /// Starts a private Dovecot 2.3 on the host in `dir` for `users`, with homes under `homes`.
    pub fn start(dir: &Path, homes: &Path, users: &[&str]) -> Dovecot {
        let setup = Setup {
            flavor: Flavor::Host23,
            control: None,
            inbox_folder: false,
        };
        Self::start_with(&setup, dir, homes, users)
    }

    /// Starts a private Dovecot of `setup`'s flavor in `dir` for `users`, with homes under
    /// `homes`.
    pub fn start_with(setup: &Setup, dir: &Path, homes: &Path, users: &[&str]) -> Dovecot {
        for d in ["run", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::create_dir_all(homes).unwrap();
        let dc = Dovecot {
            dir: dir.to_path_buf(),
            conf: dir.join("dovecot.conf"),
            homes: homes.to_path_buf(),
            flavor: setup.flavor.clone(),
            control: setup.control.map(str::to_owned),
        };
        let mut passwd = String::new();
        for u in users {
            let home = dc.home(u);
            std::fs::create_dir_all(&home).unwrap();
            chown_tree(&home);
            reachable(&home);
            if let Some(ctl) = dc.control_dir(u) {
                std::fs::create_dir_all(&ctl).unwrap();
                chown_tree(&ctl);
                reachable(&ctl);
            }
            passwd.push_str(&format!(
                "{u}:{{PLAIN}}x:{MAIL_UID}:{MAIL_UID}::{}::\n",
                home.display()
            ));
        }
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        std::fs::write(
            &dc.conf,
            dc.flavor.config(dir, setup.control, setup.inbox_folder),
        )
        .unwrap();
        // The master daemonizes and keeps its stdio: give it none of ours, or a reader of our
        // pipes would wait for it forever.
        let status = dc
            .flavor
            .command("dovecot")
            .arg("-c")
            .arg(&dc.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "dovecot {} failed to start: {}",
            dc.flavor.version(),
            dir.join("dovecot.log").display()
        );
        dc
    }

    /// A user's home: `<homes>/<user>`, or `<homes>/<domain>/<user>` for `user@domain`.
    pub fn home(&self, user: &str) -> PathBuf {
        let (name, domain) = name_and_domain(user);
        if domain.is_empty() {
            self.homes.join(name)
        } else {
            self.homes.join(domain).join(name)
        }
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.home(user).join("Maildir")
    }

    /// Where Dovecot keeps `user`'s control files (INBOX's in `.INBOX/`, a folder's in
    /// `.Folder/`), when they are in a separate control tree.
    pub fn control_dir(&self, user: &str) -> Option<PathBuf> {
        let (name, domain) = name_and_domain(user);
        self.control
            .as_ref()
            .map(|t| PathBuf::from(t.replace("%d", domain).replace("%n", name)))
    }

    /// `doveadm -c CONF`, for the caller to add arguments to.
    pub fn doveadm_command(&self) -> Command {
        let mut c = self.flavor.command("doveadm");
        c.arg("-c").arg(&self.conf).stdin(Stdio::null());
        c
    }

    /// Runs `doveadm -c CONF ARGS`.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        self.doveadm_command().args(args).output().unwrap()
    }

    /// `doveadm` that must succeed; returns its stdout.
    pub fn doveadm_ok(&self, args: &[&str]) -> String {
        let out = self.doveadm(args);
        assert!(
            out.status.success(),
            "doveadm {} {args:?}: {}",
            self.flavor.version(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `doveadm` command started in the background.
    pub fn doveadm_spawn(&self, args: &[&str]) -> std::process::Child {
        self.doveadm_command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Delivers `msg` to `user` (into `mailbox` if given) with `dovecot-lda`.
    pub fn deliver(&self, user: &str, mailbox: Option<&str>, msg: &[u8]) -> Output {
        let mut c = self.flavor.command(LDA);
        c.arg("-c").arg(&self.conf).arg("-d").arg(user);
        if let Some(m) = mailbox {
            c.arg("-m").arg(m);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), msg).unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// What Dovecot reports of `user`'s mail, to compare a restore with its original: every
    /// mailbox's UIDVALIDITY, UIDNEXT, count and GUID, and every message's mailbox, UID, GUID,
    /// flags and keywords, size and body (`\Recent` left out: it is per session), sorted.
    pub fn state(&self, user: &str) -> (String, String) {
        let sorted = |s: &str| {
            let mut v: Vec<&str> = s.lines().collect();
            v.sort_unstable();
            v.join("\n")
        };
        let status = self.doveadm_ok(&[
            "-f",
            "flow",
            "mailbox",
            "status",
            "-u",
            user,
            "uidvalidity uidnext messages guid",
            "*",
        ]);
        let fetch = self.doveadm_ok(&[
            "-f",
            "flow",
            "fetch",
            "-u",
            user,
            "mailbox uid guid flags size.physical body",
            "mailbox",
            "*",
            "all",
        ]);
        (
            sorted(&status),
            sorted(&fetch.replace(" \\Recent", "").replace("\\Recent", "")),
        )
    }

    /// Dovecot's log must show no override of our locks and no lock timeout.
    pub fn assert_clean_log(&self) {
        let log = self.log();
        for bad in [
            "overrid",
            "Timeout while waiting for lock",
            "Panic",
            "Fatal",
        ] {
            assert!(!log.contains(bad), "dovecot log has {bad:?}:\n{log}");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// The master's pid, while it runs.
    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("run/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = self
            .doveadm_command()
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = pid {
            let end = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
        }
    }
}

/// Lets the unprivileged mail uid reach `p` (search permission on the directories above it).
fn reachable(p: &Path) {
    let mut p = p.to_path_buf();
    while p.pop() && p != Path::new("/") && p != Path::new("/tmp") {
        let _ = Command::new("chmod").arg("o+x").arg(&p).status();
    }
}

/// Gives a tree to the mail uid.
pub fn chown_tree(p: &Path) {
    let _ = Command::new("chown")
        .arg("-R")
        .arg(format!("{MAIL_UID}:{MAIL_UID}"))
        .arg(p)
        .status();
}

/// A test message with a Message-ID and a body that identifies it.
pub fn message(id: &str, filler: usize) -> Vec<u8> {
    format!(
        "From: sender@example.net\nTo: alice@example.org\nSubject: {id}\nMessage-ID: <{id}>\n\n{id} {}\n",
        "x".repeat(filler)
    )
    .into_bytes()
}

/// The Message-ID of a message file's bytes, if it has one.
pub fn message_id(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Message-ID: <") {
            return v.strip_suffix('>').map(str::to_owned);
        }
    }
    None
}

/// FNV-1a of the body (after the first blank line), to check a copy is complete.
pub fn body_hash(bytes: &[u8]) -> u64 {
    let body = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(bytes, |i| &bytes[i + 2..]);
    body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
