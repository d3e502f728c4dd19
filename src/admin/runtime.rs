//! The server's state file, one per mount, named `<major>_<minor>.<pid>.state` after the
//! mount's device number and the server's pid: it tells `maildirfs umount` which process
//! serves a mount point and what it captured, and its `flock` tells when that process has
//! exited. The pid in the name keeps a new server from ever opening the file of an old one
//! that reused the device number and has not removed its file yet.
//!
//! Invariant: while a server runs, it holds an exclusive `flock` on its state file; the file
//! is removed when it exits cleanly. A file that can be locked belongs to a dead server.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// Root's state directory.
const ROOT_DIR: &str = "/run/maildirfs";

/// Where state files live: `/run/maildirfs` for root, else the user's runtime directory.
pub fn dir() -> PathBuf {
    if sys::geteuid() == 0 {
        return PathBuf::from(ROOT_DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("maildirfs"),
        _ => std::env::temp_dir().join(format!("maildirfs-{}", sys::geteuid())),
    }
}

/// The file-name prefix of the state files of device number `devno` ("major:minor").
fn prefix(devno: &str) -> String {
    format!("{}.", devno.replace(':', "_"))
}

/// A running server's state file, locked for the server's lifetime.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    path: PathBuf,
}

impl StateFile {
    /// Creates (or takes over a dead server's) state file and locks it.
    pub fn create(devno: &str) -> Result<StateFile> {
        let d = dir();
        std::fs::create_dir_all(&d).map_err(|e| Error::io("cannot create runtime dir", &d, e))?;
        let path = d.join(format!("{}{}.state", prefix(devno), sys::getpid()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io("cannot create state file", &path, e))?;
        if !matches!(sys::try_flock_exclusive(file.as_fd()), Ok(true)) {
            return Err(Error::msg(
                "state file is held by a running server",
                &path,
                "busy",
            ));
        }
        Ok(StateFile { file, path })
    }

    /// Replaces the content with `text` (the report, one line of JSON).
    pub fn write(&mut self, text: &str) -> Result<()> {
        // Written over the old content, then cut to length: a reader never finds the file
        // empty, and `read_state` reads until two reads agree.
        let res = self
            .file
            .rewind()
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .and_then(|()| self.file.set_len(text.len() as u64));
        res.map_err(|e| Error::io("cannot write state file", &self.path, e))
    }

    /// Takes the file out of the lookup by device number (renamed to `.exiting`) as soon as
    /// the mount is gone: the kernel may give the device number to a new mount at once, and a
    /// `umount` or `status` of that mount must not find this server. A caller that already has
    /// the file open keeps it, lock and all.
    pub fn retire(&mut self) {
        let retired = self.path.with_extension("exiting");
        if std::fs::rename(&self.path, &retired).is_ok() {
            self.path = retired;
        }
    }

    /// Removes the file; the lock goes with the fd when `self` drops.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads a state file's content. The server rewrites the file in place while it serves, so it
/// is read until two reads in a row agree.
pub fn read_state(file: &mut File) -> String {
    let mut read = || {
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        text
    };
    let mut text = read();
    for _ in 0..20 {
        let again = read();
        if again == text {
            break;
        }
        text = again;
    }
    text
}

/// The state files of device number `devno`: the live server's (locked by it), if any, and
/// the paths of stale ones left by servers that crashed. Should two live servers name the
/// device number (an old one still exiting after its unmount, and a new mount given the same
/// number), the one serving `mountpoint` and started last is taken.
pub fn find_state(devno: &str, mountpoint: &Path) -> (Option<(File, PathBuf)>, Vec<PathBuf>) {
    let want = prefix(devno);
    let mut live: Vec<(File, PathBuf)> = Vec::new();
    let mut stale = Vec::new();
    // A user looks at root's servers too (state files are world-readable, and `flock` needs
    // no write access).
    let mut dirs = vec![dir()];
    if dirs[0] != Path::new(ROOT_DIR) {
        dirs.push(PathBuf::from(ROOT_DIR));
    }
    let entries = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let exiting = name.ends_with(".exiting");
        if !name.starts_with(&want) || !(name.ends_with(".state") || exiting) {
            continue;
        }
        let path = e.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        match sys::try_flock_shared(file.as_fd()) {
            // Left by a server that died (perhaps while exiting).
            Ok(true) => stale.push(path),
            // A server on its way out serves no mount any more.
            _ if exiting => {}
            _ => live.push((file, path)),
        }
    }
    if live.len() > 1 {
        let shown = crate::error::escape_path(mountpoint);
        let mut ranked: Vec<(bool, u64, (File, PathBuf))> = live
            .into_iter()
            .map(|(mut f, p)| {
                let report = crate::admin::report::MountReport::from_state(&read_state(&mut f));
                let serves = report.as_ref().is_some_and(|r| r.mountpoint == shown);
                let started = report.and_then(|r| process_start(r.pid)).unwrap_or(0);
                (serves, started, (f, p))
            })
            .collect();
        ranked.sort_by_key(|(serves, started, _)| (*serves, *started));
        live = ranked.into_iter().map(|(_, _, fp)| fp).collect();
    }
    (live.pop(), stale)
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// One mount as `/proc/self/mountinfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mounted filesystem's device number, `major:minor`: it names the state files.
    pub devno: String,
    /// Where it is mounted, mountinfo's octal escapes undone.
    pub mountpoint: PathBuf,
    /// The filesystem type: `fuse.maildirfs` for a view.
    pub fstype: String,
    /// The mount source, escapes undone, as lossy UTF-8: for a view, SOURCE's path (or
    /// `maildirfs` when that path cannot be a mount option).
    pub source: String,
}

/// The last (topmost) mount at `mountpoint`, if any.
pub fn find_mount(mountpoint: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mountpoint == mountpoint)
}

/// Every mount of a `mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 3 || sep < 5 {
            continue;
        }
        out.push(MountEntry {
            devno: fields[2].to_owned(),
            mountpoint: PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(unescape(
                    fields[4],
                )),
            ),
            fstype: fields[sep + 1].to_owned(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
        });
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_read_and_ordered() {
        let me = process_start(std::process::id()).unwrap();
        assert!(me > 0);
        // pid 1 started before this test.
        assert!(process_start(1).is_some_and(|init| init <= me));
        assert_eq!(process_start(u32::MAX), None);
    }

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 0:52 / /mnt/fro\\040zen ro,nosuid,nodev,relatime shared:2 - fuse.maildirfs /var/vmail ro,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].devno, "0:52");
        assert_eq!(m[1].mountpoint, PathBuf::from("/mnt/fro zen"));
        assert_eq!(m[1].fstype, "fuse.maildirfs");
        assert_eq!(m[1].source, "/var/vmail");
    }
}
