//! Helpers for the unit tests: a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "maildirfs-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A temporary directory that is a mailbox: `cur/`, `new/` and `tmp/` in it, and `files`
    /// (path in the mailbox, content).
    pub fn maildir(tag: &str, files: &[(&str, &str)]) -> TempDir {
        let t = TempDir::new(tag);
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir(t.path().join(d)).expect("create mailbox dir");
        }
        for (path, content) in files {
            std::fs::write(t.path().join(path), content).expect("write mailbox file");
        }
        t
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
