//! The Debian package that `scripts/package` builds: its control fields and its contents as
//! `dpkg-deb` shows them, then an install with apt on Debian 13 and a mount, a read and an
//! unmount with the installed binary there.
//!
//! The package is built once for all the tests of this file, from the release build. The
//! Debian 13 system is the shared cached root (`scripts/debian13-root`) under an overlay whose
//! writable layer is a tmpfs, in a mount and network namespace of the test's own: the install
//! never reaches the cached root nor the network, and all of it vanishes with the namespace.

use maildirfs_testkit as common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::debian13::debian13;
use common::fuse_available;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The package's version: Cargo's, with a SemVer pre-release as Debian sorts it (`~`).
fn deb_version() -> String {
    env!("CARGO_PKG_VERSION").replacen('-', "~", 1)
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The .deb, built by `scripts/package` once for this test binary (the script rebuilds the
/// release binary only when cargo finds it stale, and stages everything again).
fn package() -> &'static Path {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = DEB.get_or_init(|| {
        let out = Command::new("bash")
            .arg(manifest_dir().join("scripts/package"))
            .current_dir(manifest_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/package: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/package failed: {}", said(&out)));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        Ok(manifest_dir().join(last))
    });
    match built {
        Ok(deb) => deb,
        Err(e) => panic!("{e}"),
    }
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb (dpkg-dev)");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", said(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A version as numbers, for comparing "2.34" with "2.36".
fn numbers(v: &str) -> Vec<u32> {
    v.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

#[test]
fn package_is_named_and_versioned_from_cargo_and_depends_on_fuse3_and_an_old_enough_libc() {
    let deb = package();
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    let arch = String::from_utf8(arch.stdout).unwrap().trim().to_owned();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("maildirfs_{}_{arch}.deb", deb_version())
    );
    let fields: BTreeMap<String, String> = dpkg_deb(&["-f"], deb)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(field("Package"), "maildirfs");
    assert_eq!(field("Version"), deb_version());
    assert_eq!(field("Architecture"), arch);
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert!(field("Maintainer").contains('@'), "{fields:?}");
    assert!(field("Description").contains("Maildir"), "{fields:?}");
    let kib: u64 = field("Installed-Size").parse().unwrap_or(0);
    assert!((1000..100_000).contains(&kib), "{fields:?}");

    let depends: Vec<&str> = field("Depends").split(", ").collect();
    assert!(depends.contains(&"fuse3"), "{depends:?}");
    // Built on Debian 12 (glibc 2.36), the binary asks for no newer libc than that, so the
    // package installs on Debian 12 and 13 alike.
    let libc = depends
        .iter()
        .find_map(|d| d.strip_prefix("libc6 (>= "))
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no libc6 (>= ...) in {depends:?}"));
    assert!(numbers(libc) <= numbers("2.36"), "libc6 >= {libc}");
    // FUSE is spoken by the binary itself: no libfuse, whose soname differs from 12 to 13.
    assert!(
        !depends.iter().any(|d| d.starts_with("libfuse")),
        "{depends:?}"
    );
}

#[test]
fn package_holds_the_binary_man_pages_units_recipes_and_docs() {
    let deb = package();
    // Path -> mode and owner as `dpkg-deb -c` lists them ("-rwxr-xr-x root/root").
    let listed: BTreeMap<String, String> = dpkg_deb(&["-c"], deb)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.strip_prefix("./")?.trim_end_matches('/');
            if path.is_empty() {
                return None;
            }
            Some((path.to_owned(), format!("{} {}", f[0], f[1])))
        })
        .collect();
    let mode = |p: &str| {
        listed
            .get(p)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{p} is not in the package: {listed:#?}"))
    };
    assert_eq!(mode("usr/bin/maildirfs"), "-rwxr-xr-x root/root");
    // A man page for maildirfs and one for each subcommand: every page of docs/man.
    let mut pages: Vec<String> = std::fs::read_dir(manifest_dir().join("docs/man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for must in ["maildirfs.1", "maildirfs-mount.1", "maildirfs-umount.1"] {
        assert!(pages.iter().any(|p| p == must), "{pages:?}");
    }
    for page in &pages {
        assert_eq!(
            mode(&format!("usr/share/man/man1/{page}.gz")),
            "-rw-r--r-- root/root"
        );
    }
    for unit in [
        "maildirfs-backup.service",
        "maildirfs-backup.timer",
        "mnt-frozen.mount",
    ] {
        assert_eq!(
            mode(&format!("usr/lib/systemd/system/{unit}")),
            "-rw-r--r-- root/root"
        );
    }
    for e in std::fs::read_dir(manifest_dir().join("examples/recipes")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let want = if name == "lib.sh" {
            "-rw-r--r-- root/root"
        } else {
            "-rwxr-xr-x root/root"
        };
        assert_eq!(mode(&format!("usr/share/maildirfs/{name}")), want, "{name}");
    }
    let doc = "usr/share/doc/maildirfs";
    mode(&format!("{doc}/copyright"));
    mode(&format!("{doc}/changelog.gz"));
    mode(&format!("{doc}/examples/backup.env"));
    for e in std::fs::read_dir(manifest_dir().join("docs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            let plain = format!("{doc}/{name}");
            assert!(
                listed.contains_key(&plain) || listed.contains_key(&format!("{plain}.gz")),
                "{name} is not in the package"
            );
        }
    }
    assert!(
        listed.contains_key(&format!("{doc}/README.md"))
            || listed.contains_key(&format!("{doc}/README.md.gz"))
    );
    // Nothing outside /usr: no /etc file that apt would have to treat as a conffile.
    assert!(
        listed
            .keys()
            .all(|p| p == "usr" || p.starts_with("usr/") && !p.starts_with("usr/local")),
        "{listed:#?}"
    );
    assert!(listed.values().all(|m| m.ends_with(" root/root")));
}

#[test]
fn packaged_binary_is_stripped_and_packaged_units_name_the_packaged_paths() {
    let deb = package();
    let dir = TempDir::new("contents");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", said(&x));
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(dir.0.join("usr/bin/maildirfs"))
        .output()
        .expect("readelf (binutils, with dpkg-dev)");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(".text"), "{sections}");
    // No symbol table, no DWARF (`.debug_gdb_scripts` is loaded data, not debug info).
    for gone in [" .symtab ", " .debug_info ", " .debug_line "] {
        assert!(!sections.contains(gone), "{gone}: {sections}");
    }

    let units = dir.0.join("usr/lib/systemd/system");
    let service = std::fs::read_to_string(units.join("maildirfs-backup.service")).unwrap();
    assert!(
        service.contains("\nExecStart=/usr/share/maildirfs/restic-backup.sh "),
        "{service}"
    );
    assert!(
        service.contains("\nExecStopPost=-/usr/bin/maildirfs umount "),
        "{service}"
    );
    for e in std::fs::read_dir(&units).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("/usr/local"), "{}: {text}", p.display());
        assert!(!text.contains("target/release"), "{}: {text}", p.display());
    }
    let copyright =
        std::fs::read_to_string(dir.0.join("usr/share/doc/maildirfs/copyright")).unwrap();
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        ),
        "{copyright}"
    );
    assert!(
        copyright.contains("\nLicense: MIT or Apache-2.0\n"),
        "{copyright}"
    );
}

#[test]
fn package_installs_with_apt_on_debian_13_and_the_installed_binary_mounts_reads_unmounts_and_learns_a_control_tree()
 {
    let Some(d13) = debian13() else { return };
    if !fuse_available() {
        return;
    }
    let deb = package();
    let sys = Scratch::new(d13.root());
    let local_deb = sys.dir.join(deb.file_name().unwrap());
    std::fs::copy(deb, &local_deb).unwrap();

    // Offline (the namespace has no network): apt finds fuse3 and libc6 already installed.
    let install = sys
        .chroot("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .arg(&local_deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", said(&install));
    assert!(
        said(&install).contains("Setting up maildirfs ("),
        "{}",
        said(&install)
    );
    // The cached root is untouched: the install went into the overlay.
    let status = std::fs::read_to_string(d13.root().join("var/lib/dpkg/status")).unwrap();
    assert!(!status.contains("\nPackage: maildirfs\n"));
    assert!(!d13.root().join("usr/bin/maildirfs").exists());

    let version = sys.chroot("maildirfs").arg("--version").output().unwrap();
    assert!(version.status.success(), "{}", said(&version));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("maildirfs {}", env!("CARGO_PKG_VERSION"))
    );
    // Where man finds the page; the root has no man-db, so then the file where it looks.
    let man = sys.shell(
        "if command -v man >/dev/null; then man -w maildirfs-mount; \
         else ls /usr/share/man/man1/maildirfs-mount.1.gz; fi",
    );
    assert!(
        said(&man)
            .trim()
            .ends_with("/usr/share/man/man1/maildirfs-mount.1.gz"),
        "{}",
        said(&man)
    );
    verify_installed_units(&sys);

    // A round trip through a view, with the installed binary and the root's own tools.
    let src = sys.dir.join("src");
    let mnt = sys.dir.join("mnt");
    let mailbox = src.join("alice/Maildir");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mailbox.join(d)).unwrap();
    }
    std::fs::create_dir_all(&mnt).unwrap();
    let mut uidlist = String::from("3 V1700000000 N3 G0123456789abcdef0123456789abcdef\n");
    let mut bodies = BTreeMap::new();
    for i in 1..=2 {
        let body = format!("Message-ID: <{i}@example.org>\nSubject: {i}\n\nbody {i}\n");
        let base = format!("170000000{i}.M{i}P1.mx,S={}", body.len());
        let rel = format!("alice/Maildir/cur/{base}:2,S");
        std::fs::write(src.join(&rel), &body).unwrap();
        uidlist.push_str(&format!("{i} :{base}\n"));
        bodies.insert(rel, body);
    }
    std::fs::write(mailbox.join("dovecot-uidlist"), &uidlist).unwrap();

    // A program of the installed system, run there.
    let run = |argv: &[&std::ffi::OsStr]| {
        sys.chroot(&argv[0].to_string_lossy())
            .args(&argv[1..])
            .output()
            .unwrap()
    };
    let mount = run(&[
        "maildirfs".as_ref(),
        "mount".as_ref(),
        src.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(mount.status.success(), "{}", said(&mount));
    assert!(sys.mounted(&mnt), "{}", said(&mount));
    let find = sys
        .chroot("find")
        .arg(&mnt)
        .args(["-type", "f", "-printf", "%P\\n"])
        .output()
        .unwrap();
    assert!(find.status.success(), "{}", said(&find));
    let mut files: Vec<String> = String::from_utf8_lossy(&find.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    files.sort();
    let mut want: Vec<String> = bodies.keys().cloned().collect();
    want.push("alice/Maildir/dovecot-uidlist".to_owned());
    want.sort();
    assert_eq!(files, want);
    for (rel, body) in &bodies {
        let cat = run(&["cat".as_ref(), mnt.join(rel).as_os_str()]);
        assert!(cat.status.success(), "{}", said(&cat));
        assert_eq!(String::from_utf8_lossy(&cat.stdout), *body);
    }
    let cat = run(&[
        "cat".as_ref(),
        mnt.join("alice/Maildir/dovecot-uidlist").as_os_str(),
    ]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), uidlist);

    let umount = run(&["maildirfs".as_ref(), "umount".as_ref(), mnt.as_os_str()]);
    assert!(umount.status.success(), "{}", said(&umount));
    assert!(!sys.mounted(&mnt));

    // Dovecot 2.4 set up as Debian 13's example has it (homes from mail_home, INBOX in
    // Maildir/.INBOX), with a separate control tree: the installed binary learns the tree from
    // Debian 13's own doveconf, locks there and serves the tree's uidlist in the mailbox.
    let store = sys.dir.join("vmail");
    let ctl = sys.dir.join("control");
    let bob = store.join("example.org/bob/Maildir/.INBOX");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(bob.join(d)).unwrap();
    }
    std::fs::create_dir_all(ctl.join("example.org/bob/.INBOX")).unwrap();
    let in_tree = "3 V1700000001 N1 G00112233445566778899aabbccddeeff\n";
    std::fs::write(ctl.join("example.org/bob/.INBOX/dovecot-uidlist"), in_tree).unwrap();
    std::fs::write(bob.join("dovecot-uidlist"), "3 V1 N1\n").unwrap();
    let local = format!(
        "mail_driver = maildir\n\
         mail_home = {}/%{{user | domain}}/%{{user | username}}\n\
         mail_path = ~/Maildir\n\
         mail_inbox_path = ~/Maildir/.INBOX\n\
         mail_control_path = {}/%{{user | domain}}/%{{user | username}}\n",
        store.display(),
        ctl.display()
    );
    let write = sys.shell(&format!(
        "printf '%s' '{local}' > /etc/dovecot/local.conf && doveconf mail_control_path"
    ));
    assert!(write.status.success(), "{}", said(&write));
    let mount = run(&[
        "maildirfs".as_ref(),
        "mount".as_ref(),
        store.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(mount.status.success(), "{}", said(&mount));
    assert!(
        said(&mount).contains("/control/%{user | domain}/%{user | username} (from doveconf)"),
        "{}",
        said(&mount)
    );
    let cat = run(&[
        "cat".as_ref(),
        mnt.join("example.org/bob/Maildir/.INBOX/dovecot-uidlist")
            .as_os_str(),
    ]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), in_tree);
    let umount = run(&["maildirfs".as_ref(), "umount".as_ref(), mnt.as_os_str()]);
    assert!(umount.status.success(), "{}", said(&umount));
    assert!(!sys.mounted(&mnt));
}

/// `systemd-analyze verify` of the units as installed. The Debian 13 root has no systemd, so
/// this machine's runs in the namespace, on copies whose commands and environment file point
/// into the installed root: each command must exist there and be executable.
fn verify_installed_units(sys: &Scratch) {
    let installed = sys.root.join("usr/lib/systemd/system");
    let copies = sys.dir.join("units");
    std::fs::create_dir_all(&copies).unwrap();
    let units = [
        "maildirfs-backup.service",
        "maildirfs-backup.timer",
        "mnt-frozen.mount",
    ];
    for unit in units {
        let cat = sys.host("cat").arg(installed.join(unit)).output().unwrap();
        assert!(cat.status.success(), "{unit}: {}", said(&cat));
        let text = String::from_utf8(cat.stdout).unwrap();
        // Every command is there and executable, also one whose failure the unit ignores
        // ("-"), which verify does not look at.
        for line in text.lines().filter(|l| l.starts_with("Exec")) {
            let Some((_, command)) = line.split_once('=') else {
                continue;
            };
            let program = command
                .trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace()
                .next()
                .unwrap_or_default();
            let test = sys.chroot("test").args(["-x", program]).output().unwrap();
            assert!(test.status.success(), "{unit}: no {program}: {line}");
        }
        let root = sys.root.to_str().unwrap();
        let text = text
            .replace("=/usr/", &format!("={root}/usr/"))
            .replace("=-/usr/", &format!("=-{root}/usr/"))
            .replace(
                "EnvironmentFile=/etc/maildirfs/backup.env",
                &format!("EnvironmentFile={root}/usr/share/doc/maildirfs/examples/backup.env"),
            );
        std::fs::write(copies.join(unit), text).unwrap();
    }
    let out = sys
        .host("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.map(|u| copies.join(u)))
        .output()
        .expect("systemd-analyze (installed by scripts/test)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// A temporary directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        // /tmp itself, not $TMPDIR: the Debian 13 system sees the host's /tmp at /tmp.
        let dir = Path::new("/tmp").join(format!(
            "maildirfs-it-package-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway Debian 13 system: the cached root as the lower layer of an overlay whose upper
/// layer is a tmpfs, with /proc, /dev and /tmp bound in, all in a mount and network namespace
/// that one holder process keeps alive. Commands enter it with nsenter (and chroot). Dropping
/// it kills every process of the namespace, a view's server included, so the namespace goes
/// with its mounts (the view, the overlay, the tmpfs), and removes the temporary directory.
/// The holder also leaves when this test process dies: its stdin is a pipe from us.
struct Scratch {
    /// On the host, seen at the same path inside: the package copy, the fixture, the mount
    /// point, the unit copies.
    dir: PathBuf,
    /// The root of the Debian 13 system, as a path in the namespace.
    root: PathBuf,
    holder: Child,
    _holder_stdin: Option<ChildStdin>,
    /// Last, so that the directory goes after the namespace.
    _tmp: TempDir,
}

impl Scratch {
    fn new(lower: &Path) -> Scratch {
        let tmp = TempDir::new("debian13");
        let ns = tmp.0.join("ns");
        std::fs::create_dir(&ns).unwrap();
        let script = r#"set -e
lower=$1 ns=$2
mount -t tmpfs -o mode=755 maildirfs-scratch "$ns"
mkdir "$ns/upper" "$ns/work" "$ns/root"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$ns/upper,workdir=$ns/work" "$ns/root"
mount --rbind /proc "$ns/root/proc"
mount --rbind /dev "$ns/root/dev"
mount --bind /tmp "$ns/root/tmp"
echo ready
exec cat >/dev/null"#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "--"])
            .args(["bash", "-c", script, "scratch"])
            .arg(lower)
            .arg(&ns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let stdin = holder.stdin.take();
        let stdout = holder.stdout.take().unwrap();
        let mut stderr = holder.stderr.take().unwrap();
        let sys = Scratch {
            dir: tmp.0.clone(),
            root: ns.join("root"),
            holder,
            _holder_stdin: stdin,
            _tmp: tmp,
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let mut why = String::new();
            let _ = stderr.read_to_string(&mut why);
            panic!("cannot set up the overlay of {}: {why}", lower.display());
        }
        sys
    }

    /// `program` in the namespace, outside the chroot (this machine's tools).
    fn host(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.holder.id()))
            .args(["--mount", "--net", "--", program])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .stdin(Stdio::null());
        c
    }

    /// `program` as root in the Debian 13 system.
    fn chroot(&self, program: &str) -> Command {
        let mut c = self.host("chroot");
        c.arg(&self.root).arg(program);
        c
    }

    /// A shell line in the Debian 13 system.
    fn shell(&self, line: &str) -> Output {
        self.chroot("sh").args(["-c", line]).output().unwrap()
    }

    /// Whether the Debian 13 system has a maildirfs view mounted at `path` (a path there).
    fn mounted(&self, path: &Path) -> bool {
        let out = self
            .chroot("cat")
            .arg("/proc/self/mountinfo")
            .output()
            .unwrap();
        let want = path.to_string_lossy().replace(' ', "\\040");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()) && l.contains(" - fuse.maildirfs "))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if let Some(ours) = ns(&self.holder.id().to_string()) {
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if pid.bytes().all(|b| b.is_ascii_digit()) && ns(&pid).as_ref() == Some(&ours) {
                    let _ = Command::new("kill").args(["-KILL", &pid]).output();
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
