//! The Debian 13 root in which the Dovecot tests run Dovecot 2.4, built once by
//! `scripts/debian13-root` (which `scripts/test` runs) under `target/debian13-root`.
//!
//! A program runs there as root, chrooted, in a private mount namespace of its own: `/proc`,
//! `/dev` and `/tmp` (and the temporary directory, when it is elsewhere) are bound into the
//! root at their own paths, the root is pivoted to and the host's tree detached, so no bind
//! mount is ever seen by the host or outlives the processes that use it, and no FUSE mount of
//! the host is held by them. The PID namespace and the host name are the host's, so a lock's
//! `pid:host` means the same inside and outside: Dovecot 2.4 in the root and maildirfs on the
//! host keep each other out as on one server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The file `scripts/debian13-root` writes into the root once it is complete.
pub const STAMP: &str = ".maildirfs-root-complete";

/// Run by `sh -c` in the new mount namespace, with the root, the directories to bind, `--`,
/// then the program and its arguments. The bound directories keep their paths inside.
const ENTER: &str = r#"set -e
r=$1
shift
mount --bind "$r" "$r"
mount --bind /proc "$r/proc"
mount --rbind /dev "$r/dev"
while [ "$1" != -- ]; do
    mkdir -p "$r$1"
    mount --bind "$1" "$r$1"
    shift
done
shift
mkdir -p "$r/.host"
cd "$r"
pivot_root . .host
umount -l /.host
exec chroot . "$@"
"#;

/// A complete Debian 13 root.
#[derive(Debug, Clone)]
pub struct Debian13 {
    root: PathBuf,
}

/// The Debian 13 root: `MAILDIRFS_DEBIAN13_ROOT`, else `target/debian13-root`, if it is
/// complete. Without one, a test skips, or with `MAILDIRFS_REQUIRE_FUSE=1` (CI) fails.
pub fn debian13() -> Option<Debian13> {
    let root = std::env::var_os("MAILDIRFS_DEBIAN13_ROOT")
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debian13-root"));
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    if root.join(STAMP).exists() {
        return Some(Debian13 { root });
    }
    if std::env::var("MAILDIRFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!(
            "no Debian 13 root at {} (scripts/test builds it with scripts/debian13-root)",
            root.display()
        );
    }
    eprintln!(
        "skipping: no Debian 13 root at {} (scripts/debian13-root builds it)",
        root.display()
    );
    None
}

/// The repository's root, where `scripts/debian13-root` builds: this crate is its `testkit/`.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
}

impl Debian13 {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A command that runs `program`, with the arguments the caller adds, as root in the root,
    /// in a private mount namespace (see the module's doc). A daemon it starts keeps that
    /// namespace until it exits.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            ENTER,
            "sh",
        ])
        .arg(&self.root)
        .arg("/tmp");
        let tmp = std::env::temp_dir();
        if !tmp.starts_with("/tmp") && !tmp.starts_with(&self.root) {
            c.arg(tmp);
        }
        c.arg("--").arg(program);
        // The root's own programs, whatever PATH the test has.
        c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }
}
