//! `maildirfs umount MOUNTPOINT`: unmount, then wait until the serving process has exited,
//! and print its closing summary. Also clears the mount of a server that crashed (the kernel
//! then answers `ENOTCONN` to everything under the mount point).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::admin::runtime;
use crate::error::{Error, Result};
use crate::sys;

/// How long to wait for the server to exit after the unmount.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// What the server said as it ended.
#[derive(Debug, Default)]
pub struct Closing {
    /// Its closing summary, if it left one.
    pub line: Option<String>,
    /// Accounts of the view that could not be read (their capture failed: locks refused
    /// under --strict-lock, a capture that hung): `umount` then exits 1.
    pub failed_accounts: u64,
}

/// Unmounts the maildirfs view at `mountpoint`; returns what the server said as it ended.
pub fn umount(mountpoint: &Path) -> Result<Closing> {
    let abs =
        std::path::absolute(mountpoint).map_err(|e| Error::io("cannot unmount", mountpoint, e))?;
    let abs = normalize(&abs);
    let Some(entry) = runtime::find_mount(&abs) else {
        return Err(Error::msg("cannot unmount", mountpoint, "not mounted"));
    };
    if entry.fstype != "fuse.maildirfs" {
        return Err(Error::msg(
            "cannot unmount",
            mountpoint,
            format!("not a maildirfs mount (type {})", entry.fstype),
        ));
    }
    let (state, stale) = runtime::find_state(&entry.devno, &abs);
    // State files nobody holds were left by crashed servers.
    for path in stale {
        let _ = std::fs::remove_file(path);
    }
    unmount_busy_patiently(&abs).map_err(|e| Error::io("cannot unmount", mountpoint, e))?;
    let Some((mut file, _)) = state else {
        return Ok(Closing::default());
    };
    // The server removes its state file itself when it exits; it only has to be read.
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        match sys::try_flock_shared(file.as_fd()) {
            Ok(true) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                return Err(Error::msg(
                    "unmounted, but the server did not exit",
                    mountpoint,
                    format!("still running after {} s", EXIT_WAIT.as_secs()),
                ));
            }
        }
    }
    let report = crate::admin::report::MountReport::from_state(&runtime::read_state(&mut file));
    Ok(Closing {
        line: report.as_ref().and_then(|r| r.final_line.clone()),
        failed_accounts: report.map_or(0, |r| r.live.view.failed),
    })
}

/// How long a busy mount is tried again: a reader that has just finished (or a process forked
/// while it had a file open, not yet exec'd) lets go within milliseconds; one that is really
/// using the view is reported after this.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// [`unmount_now`], tried again for [`BUSY_WAIT`] while the mount is busy (`EBUSY`).
fn unmount_busy_patiently(path: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match unmount_now(path) {
            Err(e) if sys::errno(&e) == Some(sys::Errno::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn unmount_now(path: &Path) -> std::io::Result<()> {
    if sys::geteuid() == 0 {
        return sys::umount(path);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(path)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Removes `.` and `..` lexically; the mount point of a crashed server cannot be `stat`ed, so
/// it is never canonicalized through the kernel.
fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
