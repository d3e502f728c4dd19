//! The FUSE session: the view mounted read-only, its eviction notices and read-ahead
//! started, served until unmounted.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::view::View;
use crate::serve::fs::{self, MaildirFs, ReadPath, SharedReadPath};
use crate::serve::source::Source;
use crate::sys;

/// How the view is mounted: the options of `maildirfs mount` that reach the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountConfig {
    /// `--allow-other`: other users may read, as the captured owners and modes allow.
    pub allow_other: bool,
    /// `--passthrough`: ask the kernel to read the source files itself.
    pub passthrough: bool,
    /// `--no-read-ahead`: no read-ahead into the kernel's cache.
    pub no_read_ahead: bool,
}

/// A mounted view.
pub struct Session {
    session: fuser::Session<MaildirFs>,
    read_path: SharedReadPath,
    passthrough_asked: bool,
}

impl Session {
    /// Mounts `view` (its bytes read through `source`) on `mountpoint`, named after SOURCE
    /// in `/proc/mounts`, and starts the threads that serve it besides FUSE's: the eviction
    /// notices and the read-ahead.
    pub fn mount(
        view: &Arc<View>,
        source: &Arc<Source>,
        mountpoint: &Path,
        config: MountConfig,
    ) -> Result<Session> {
        let fs = MaildirFs::new(Arc::clone(view), Arc::clone(source), config.passthrough);
        let read_path = fs.read_path();
        let ahead = fs.ahead_slot();
        let mut fuse = fuser::Config::default();
        fuse.mount_options = vec![
            fuser::MountOption::RO,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::FSName(fsname(source.path())),
            fuser::MountOption::CUSTOM("subtype=maildirfs".to_owned()),
        ];
        if config.allow_other {
            // Never one without the other: the kernel then checks the captured owner and mode.
            fuse.mount_options
                .push(fuser::MountOption::DefaultPermissions);
            fuse.acl = fuser::SessionACL::All;
        }
        fuse.n_threads = Some(sys::cpus().clamp(1, 8));
        fuse.clone_fd = true;
        let session = fuser::Session::new(fs, mountpoint, &fuse)
            .map_err(|e| Error::io("cannot mount", mountpoint, e))?;
        let s = Session {
            session,
            read_path,
            passthrough_asked: config.passthrough,
        };
        fs::notify_evictions(view, s.session.notifier());
        fs::start_read_ahead(
            &ahead,
            source,
            s.session.notifier(),
            s.read_path(),
            config.no_read_ahead,
        );
        Ok(s)
    }

    /// How reads are served, known once the kernel has connected.
    pub fn read_path(&self) -> ReadPath {
        self.read_path.get()
    }

    /// How reads are served, as the report's `reads` key and in the summary's words.
    pub fn reads(&self) -> (&'static str, &'static str) {
        match self.read_path() {
            ReadPath::Passthrough => ("passthrough", "kernel passthrough to the source files"),
            ReadPath::NoOpen if self.passthrough_asked => (
                "no-passthrough",
                "through maildirfs (passthrough not available)",
            ),
            ReadPath::NoOpen => ("kernel-cache", "through maildirfs, cached by the kernel"),
        }
    }

    /// What unmounts the view from another thread (a stop signal).
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Unmounts the view now.
    pub fn unmount(&mut self) {
        let _ = self.session.unmount();
    }

    /// Serves until the view is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        self.session.run()
    }
}

/// Gives the mount (device `devno`, "major:minor") the readahead asked for at init: the
/// kernel keeps a FUSE mount's at its default, 128 KiB, whatever the filesystem asks, and a
/// large file read from a cold cache then waits for a READ every 128 KiB. Root may raise it
/// in sysfs; elsewhere the default stays, which only makes large files slower.
pub fn raise_readahead(devno: &str) {
    let path = format!("/sys/class/bdi/{devno}/read_ahead_kb");
    let kib = fs::MAX_READAHEAD >> 10;
    if let Err(e) = std::fs::write(&path, format!("{kib}\n")) {
        log::debug!("cannot raise the readahead of the mount ({path}: {e})");
    }
}

/// The mount source shown in `/proc/mounts` and `df`; mount options are comma-separated, so a
/// path with a comma or blank is not used there.
fn fsname(source: &Path) -> String {
    let s = source.display().to_string();
    if s.contains([',', ' ', '\t', '\n', '\\']) {
        "maildirfs".to_owned()
    } else {
        s
    }
}
