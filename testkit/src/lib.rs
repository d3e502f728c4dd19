//! Shared helpers for the integration tests and the examples: fixture trees in temporary
//! directories, the real binary, and a mount guard that always unmounts; in modules, a private
//! Dovecot, the churn workload, a faulty FUSE source, the tree generator, the lock watcher and
//! the man pages.

pub mod churn;
pub mod debian13;
pub mod dovecot;
pub mod faulty;
pub mod gen_maildir;
pub mod lock_watch;
pub mod man;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The maildirfs binary built beside the running test or example. Not
/// `CARGO_BIN_EXE_maildirfs`: cargo sets that only for the package's own tests, not for this
/// crate; and it builds the binary before those tests run.
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> or target/<profile>/examples/<name>
    // -> target/<profile>/maildirfs
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("maildirfs"))
        .expect("target directory")
}

/// Whether this test can mount. With `MAILDIRFS_REQUIRE_FUSE=1` (CI) a test that cannot
/// mount fails instead of skipping.
pub fn fuse_available() -> bool {
    let root = unsafe_free_euid() == 0;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if root && dev {
        return true;
    }
    if std::env::var("MAILDIRFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!(
            "MAILDIRFS_REQUIRE_FUSE=1 but this test cannot mount (root: {root}, /dev/fuse: {dev})"
        );
    }
    eprintln!("skipping: needs root and /dev/fuse");
    false
}

fn unsafe_free_euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// A temporary directory holding `src/` (the Maildir tree) and `mnt/` (the mount point).
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "maildirfs-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        Fixture { dir }
    }

    pub fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// Creates a mailbox (cur, new, tmp) at `rel` under src.
    pub fn mailbox(&self, rel: &str) -> PathBuf {
        let p = self.src().join(rel);
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        p
    }

    pub fn write(&self, rel: impl AsRef<Path>, bytes: &[u8]) -> PathBuf {
        let p = self.src().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Never remove a tree while something is still mounted inside it.
        let mnt = self.mnt();
        if is_mounted(&mnt) {
            force_unmount(&mnt);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `/proc/self/mountinfo` lists a mount at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Lazily unmounts and kills whatever serves `path`, for cleanup after a failed test.
pub fn force_unmount(path: &Path) {
    let pid = server_pid(path);
    let _ = Command::new("umount").arg("-l").arg(path).output();
    if let Some(pid) = pid {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
    }
}

/// The pid of the server of the mount at `path`, from its state file.
pub fn server_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().replace(' ', "\\040");
    let line = text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))?;
    let prefix = format!("{}.", line.split(' ').nth(2)?.replace(':', "_"));
    // The live server's file is the one it holds locked.
    let state = std::fs::read_dir("/run/maildirfs")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| std::fs::File::open(e.path()).ok().map(|f| (f, e.path())))
        .find(|(f, _)| !matches!(maildirfs::sys::try_flock_shared(f.as_fd()), Ok(true)))
        .and_then(|(_, p)| std::fs::read_to_string(p).ok())?;
    maildirfs::admin::report::MountReport::from_state(&state).map(|r| r.pid as i32)
}

/// Runs the binary with `args` and optional extra environment; returns its output.
pub fn run(args: &[&OsStr], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run maildirfs")
}

/// `maildirfs mount EXTRA SRC MNT` started in the background (stderr piped, for
/// `wait_with_output`), with extra environment such as `MAILDIRFS_TEST_HOLD_MS`.
pub fn spawn_mount(fx: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(bin());
    c.arg("mount").args(extra).arg(fx.src()).arg(fx.mnt());
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start maildirfs mount")
}

/// Waits (10 s at most) until the lock file `lock` exists and names a pid (a lock is created,
/// then written), and returns that pid.
pub fn wait_for_lock(lock: &Path) -> i32 {
    let pid = || -> Option<i32> {
        let content = std::fs::read_to_string(lock).ok()?;
        content.split(':').next()?.parse().ok()
    };
    assert!(
        wait_for(Duration::from_secs(10), || pid().is_some()),
        "no lock naming a pid at {}",
        lock.display()
    );
    pid().unwrap_or_else(|| panic!("lock {} went away", lock.display()))
}

/// Sends `sig` ("-TERM", "-KILL", ...) to `pid`.
pub fn signal(pid: i32, sig: &str) {
    Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill");
}

/// `rsync -a FROM/ TO` (the contents of FROM into TO), as a backup would run it.
pub fn rsync_a(from: &Path, to: &Path) -> Output {
    Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", from.display()))
        .arg(to)
        .output()
        .expect("run rsync (installed by scripts/test)")
}

/// A mounted view; unmounts (and if need be kills the server) on drop.
pub struct Mounted {
    pub mnt: PathBuf,
    pub stderr: String,
}

impl Mounted {
    pub fn new(fx: &Fixture, extra: &[&str]) -> Mounted {
        Self::with_env(fx, extra, &[])
    }

    pub fn with_env(fx: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> Mounted {
        Self::mount(fx, extra, env, &[])
    }

    /// Mounts with `RLIMIT_NOFILE` set to `limit` (soft and hard), so the pin budget is what
    /// is left of `limit` after the server's reserve: 0 pins for a limit below about 260.
    pub fn with_nofile(fx: &Fixture, extra: &[&str], limit: u64) -> Mounted {
        let nofile = format!("--nofile={limit}:{limit}");
        Self::mount(fx, extra, &[], &["prlimit", &nofile])
    }

    /// [`Mounted::with_nofile`], with extra environment for the server.
    pub fn with_nofile_env(
        fx: &Fixture,
        extra: &[&str],
        limit: u64,
        env: &[(&str, &str)],
    ) -> Mounted {
        let nofile = format!("--nofile={limit}:{limit}");
        Self::mount(fx, extra, env, &["prlimit", &nofile])
    }

    /// Mounts with the command run under `wrapper` (`setpriv ...`, `prlimit ...`).
    pub fn wrapped(fx: &Fixture, wrapper: &[&str], extra: &[&str]) -> Mounted {
        Self::mount(fx, extra, &[], wrapper)
    }

    fn mount(fx: &Fixture, extra: &[&str], env: &[(&str, &str)], wrapper: &[&str]) -> Mounted {
        let mut args: Vec<&OsStr> = vec![OsStr::new("mount")];
        args.extend(extra.iter().map(OsStr::new));
        let src = fx.src();
        let mnt = fx.mnt();
        args.push(src.as_os_str());
        args.push(mnt.as_os_str());
        let out = match wrapper.split_first() {
            None => run(&args, env),
            Some((cmd, rest)) => Command::new(cmd)
                .args(rest)
                .arg(bin())
                .args(&args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("run {cmd} maildirfs: {e}")),
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "mount failed: {stderr}");
        assert!(is_mounted(&mnt), "mount returned 0 but nothing is mounted");
        Mounted { mnt, stderr }
    }

    /// Takes charge of a view mounted some other way (a terminal, fstab, a child process), so
    /// that it is unmounted on drop like any other.
    pub fn adopt(mnt: PathBuf) -> Mounted {
        Mounted {
            mnt,
            stderr: String::new(),
        }
    }

    /// Unmounts with `maildirfs umount`, asserting that it says `N accounts UNREADABLE` and
    /// exits 1 (an account of the view could not be captured); returns its stderr.
    pub fn umount_incomplete(self) -> String {
        let out = run(&[OsStr::new("umount"), self.mnt.as_os_str()], &[]);
        let s = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "umount: {s}");
        assert!(s.contains("accounts UNREADABLE"), "umount said: {s}");
        assert!(!is_mounted(&self.mnt));
        s
    }

    /// Unmounts with `maildirfs umount`, asserting success; returns its stderr.
    pub fn umount(self) -> String {
        let out = run(&[OsStr::new("umount"), self.mnt.as_os_str()], &[]);
        let s = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "umount failed: {s}");
        assert!(!is_mounted(&self.mnt));
        s
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let pid = server_pid(&self.mnt);
            let _ = run(&[OsStr::new("umount"), self.mnt.as_os_str()], &[]);
            if is_mounted(&self.mnt) {
                force_unmount(&self.mnt);
            }
            if let Some(pid) = pid {
                wait_gone(pid, Duration::from_secs(10));
            }
        }
    }
}

/// Waits until process `pid` no longer exists (or is a zombie).
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

/// One file's identity and attributes, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub nlink: u64,
    pub bytes: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
}

/// Every path under `root` (relative, as bytes) with what `lstat` and a read show.
pub fn tree(root: &Path, read: bool) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    walk(root, root, read, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, read: bool, out: &mut BTreeMap<Vec<u8>, Seen>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        out.insert(
            rel,
            Seen {
                kind,
                ino: m.ino(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                nlink: m.nlink(),
                bytes: (read && ft.is_file()).then(|| std::fs::read(&p).unwrap()),
                link: ft.is_symlink().then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
            },
        );
        if ft.is_dir() {
            walk(root, &p, read, out);
        }
    }
}

/// Every lock file maildirfs could have left under `root`.
pub fn lock_files(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for (rel, _) in tree(root, false) {
        if rel.ends_with(b"dovecot-uidlist.lock") {
            v.push(root.join(OsStr::from_bytes(&rel)));
        }
    }
    v
}

/// Polls `cond` every 5 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A tree listing without the times of mailbox directories: creating and removing
/// `dovecot-uidlist.lock` in them changes those, exactly as every Dovecot lock does.
pub fn without_lock_dir_times(t: &BTreeMap<Vec<u8>, Seen>) -> BTreeMap<Vec<u8>, Seen> {
    t.iter()
        .map(|(rel, s)| {
            let mut s = s.clone();
            let mut cur = rel.clone();
            cur.extend_from_slice(b"/cur");
            if s.kind == "dir" && t.contains_key(&cur) {
                s.mtime = (0, 0);
                s.ctime = (0, 0);
            }
            (rel.clone(), s)
        })
        .collect()
}

/// A generated account: INBOX and two folders with `n` messages in all, a uidlist, an index
/// log. Returns the message paths relative to src.
pub fn store(fx: &Fixture, n: usize) -> Vec<PathBuf> {
    let boxes = ["Maildir", "Maildir/.Sent", "Maildir/.Archive"];
    for b in boxes {
        fx.mailbox(b);
    }
    let mut out = Vec::new();
    for i in 0..n {
        let b = boxes[i % boxes.len()];
        let sub = if i % 4 == 0 { "new" } else { "cur" };
        let flags = if sub == "cur" { ":2,S" } else { "" };
        let rel = PathBuf::from(format!(
            "{b}/{sub}/{}.M{i}P7.host,S=64{flags}",
            1_700_000_000 + i
        ));
        let body = format!("Message-ID: <{i}@test>\n\n{}\n", "x".repeat(40 + i % 20));
        fx.write(&rel, body.as_bytes());
        out.push(rel);
    }
    for b in boxes {
        fx.write(format!("{b}/dovecot-uidlist"), b"3 V1 N1\n");
        fx.write(format!("{b}/dovecot.index.log"), b"index log v1\n");
    }
    out
}
