//! `maildirfs mount`: the checks that give a clear error before anything is locked, the
//! capture plan the options make, and the flow that drives the stages: capture and freeze
//! (`image::build`), mount and serve (`serve::session`), with the signal, progress and status
//! threads, the state file and the summary around them.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::admin::daemon::{self, Notifier, Outcome};
use crate::admin::options::{CaptureMode, ControlDir, MountOptions};
use crate::admin::report::{Live, MountReport};
use crate::admin::runtime::{self, StateFile};
use crate::admin::summary;
use crate::capture::account::{LockPolicy, Progress};
use crate::capture::control_tree::ControlPlaces;
use crate::capture::lock;
use crate::error::{Error, Result, escape_path};
use crate::image::build::{self, Captured, Plan};
use crate::maildir::control;
use crate::serve::session::{self, MountConfig, Session};
use crate::serve::source::Source;
use crate::sys;

/// SOURCE and MOUNTPOINT after the checks: SOURCE open once (every later access is relative
/// to this fd), MOUNTPOINT absolute.
#[derive(Debug)]
pub struct Checked {
    /// SOURCE, opened (the admin's own symlinks followed) and checked to be a readable directory.
    pub source_fd: OwnedFd,
    /// SOURCE as an absolute path, symlinks not resolved: for messages and the report.
    pub source: PathBuf,
    /// MOUNTPOINT canonicalized: an existing directory with nothing mounted on it, not below
    /// `source`.
    pub mountpoint: PathBuf,
}

/// The checks that give an admin a clear error before anything is forked or locked.
pub fn check(opts: &MountOptions) -> Result<Checked> {
    let source = std::path::absolute(&opts.source)
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    // The admin's own path may be a symlink (e.g. /var/vmail -> /srv/vmail); everything below
    // it is opened without following symlinks.
    let file = std::fs::File::open(&source)
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    if !meta.is_dir() {
        return Err(Error::msg(
            "cannot use source",
            &opts.source,
            "not a directory",
        ));
    }
    let source_fd = OwnedFd::from(file);
    sys::read_dir(source_fd.as_fd())
        .map_err(|e| Error::io("cannot read source", &opts.source, e))?;

    let mountpoint = std::fs::canonicalize(&opts.mountpoint)
        .map_err(|e| Error::io("cannot use mount point", &opts.mountpoint, e))?;
    let mmeta = std::fs::metadata(&mountpoint)
        .map_err(|e| Error::io("cannot use mount point", &opts.mountpoint, e))?;
    if !mmeta.is_dir() {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            "not a directory",
        ));
    }
    if let Some(m) = runtime::find_mount(&mountpoint) {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            format!("already mounted ({} from {})", m.fstype, m.source),
        ));
    }
    // SOURCE as given and as opened: a mount point below the directory a symlinked SOURCE
    // names is inside it too (the opened directory's path, not a second resolution of SOURCE).
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", source_fd.as_raw_fd()));
    if mountpoint.starts_with(&source) || opened.is_ok_and(|real| mountpoint.starts_with(real)) {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            "inside the source tree",
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| Error::io("cannot mount: FUSE unavailable", "/dev/fuse", e))?;
    Ok(Checked {
        source_fd,
        source,
        mountpoint,
    })
}

/// Runs `maildirfs mount`: returns the summary line to print (detached mode), or serves until
/// unmounted (foreground).
pub fn run(opts: &MountOptions) -> Result<Option<String>> {
    let checked = check(opts)?;
    if opts.foreground {
        crate::admin::logging::init(opts.verbosity, opts.log_file.as_deref(), false)?;
        serve(opts, checked, &mut Notifier::foreground())?;
        return Ok(None);
    }
    // Open the log file before forking, so a bad path is an error the caller sees.
    crate::admin::logging::init(opts.verbosity, opts.log_file.as_deref(), true)?;
    match daemon::detach(opts.progress, |n| serve(opts, checked, n))? {
        Outcome::Ready(summary) => Ok(Some(summary)),
        Outcome::Failed(err) => Err(Error::relayed(err)),
    }
}

/// Where the capture finds the locks and control files, from `--control-dir` or, by default,
/// from Dovecot's own settings when `doveconf` is installed and they describe SOURCE; with
/// how the summary names the control tree in use.
fn control_places(opts: &MountOptions, source: &Path) -> Result<(ControlPlaces, Option<String>)> {
    match &opts.control_dir {
        ControlDir::InMaildir => Ok((ControlPlaces::in_maildir(), None)),
        ControlDir::Tree(t) => Ok((ControlPlaces::tree(t.clone())?, Some(t.as_str().to_owned()))),
        ControlDir::Learn => {
            let learned = control::from_doveconf();
            let Some((learned, text)) = learned
                .as_ref()
                .and_then(|l| Some((l, l.control.as_deref()?)))
            else {
                return Ok((ControlPlaces::in_maildir(), None));
            };
            if !learned.describes(source) {
                log::warn!(
                    "doveconf says Dovecot keeps control files in {text}, but its mail path {} does not \
                     show that {} is its store: not used (give --control-dir {text} if it is, \
                     or --control-dir maildir)",
                    learned.mail_path,
                    escape_path(source)
                );
                return Ok((ControlPlaces::in_maildir(), None));
            }
            let template: control::Template = text.parse().map_err(|why: String| {
                Error::msg(
                    "cannot use doveconf's control directory",
                    source,
                    format!("{why}; give --control-dir TEMPLATE, or --control-dir maildir"),
                )
            })?;
            log::info!("control files in {text}, as doveconf says");
            Ok((
                ControlPlaces::tree(template)?,
                Some(format!("{text} (from doveconf)")),
            ))
        }
    }
}

/// The capture plan `opts` make for SOURCE.
pub fn plan(opts: &MountOptions, source: &Path) -> Result<Plan> {
    let (places, control_dir) = control_places(opts, source)?;
    if opts.lock_host.is_none() && !opts.no_lock && lock::in_other_pid_namespace() {
        log::warn!(
            "this process is in another PID namespace than the host's init: a Dovecot outside \
             it cannot check our pid and may override our locks; use --lock-host NAME"
        );
    }
    Ok(Plan {
        policy: LockPolicy {
            no_lock: opts.no_lock,
            strict: opts.strict_lock,
            timeout: opts.lock_timeout,
            test_hold: test_hold(),
            one_mailbox_at_a_time: false,
            lock_host: opts.lock_host.clone(),
            places: Arc::new(places),
        },
        on_demand: opts.capture == CaptureMode::OnDemand,
        working_set: opts.working_set,
        exclude_indexes: opts.exclude_indexes,
        selection: opts.selection.clone(),
        stall_timeout: opts.stall_timeout,
        control_dir,
    })
}

/// Discovers, locks, captures and freezes SOURCE as `opts` say, without FUSE.
pub fn capture_tree(root: &OwnedFd, source: &Path, opts: &MountOptions) -> Result<Captured> {
    build::build(root, source, &plan(opts, source)?, &Arc::default())
}

/// Test-only: keep each account's locks this long after listing (`MAILDIRFS_TEST_HOLD_MS`).
fn test_hold() -> Duration {
    std::env::var("MAILDIRFS_TEST_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

/// Captures, mounts, reports readiness through `notifier`, and serves until unmounted or
/// stopped by SIGTERM/SIGINT/SIGHUP.
fn serve(opts: &MountOptions, checked: Checked, notifier: &mut Notifier) -> Result<()> {
    // Before any thread exists: every thread inherits the mask, and only the signal thread
    // below receives the stop signals.
    sys::block_stop_signals().map_err(|e| Error::io("cannot set up signals", "maildirfs", e))?;
    sys::fix_mmap_threshold();
    let unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>> = Arc::new(Mutex::new(None));
    let u = Arc::clone(&unmounter);
    let mut stop_report = notifier.clone_pipe();
    let source = checked.source.clone();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            loop {
                let sig = sys::wait_stop_signal();
                log::info!("signal {sig}: stopping");
                // First, whatever the other threads are doing or stuck in: no lock of ours
                // outlives the signal (and none is taken after it).
                let released = lock::release_all();
                if released > 0 {
                    log::info!("released {released} locks");
                }
                if unmount_if_serving(&u) {
                    continue;
                }
                // Discovering, capturing or freezing: the main flow stops by itself at its
                // next check; if it is stuck in a syscall, end the process.
                std::thread::sleep(STOP_GRACE);
                if unmount_if_serving(&u) {
                    continue;
                }
                let err = Error::msg("mount interrupted", &source, format!("signal {sig}"));
                log::error!("{err}; ending the capture");
                match stop_report.as_mut() {
                    Some(p) => {
                        let _ = std::io::Write::write_all(p, format!("ERR {err}\n").as_bytes());
                    }
                    None => eprintln!("maildirfs: {err}"),
                }
                log::logger().flush();
                // A thread stuck in an uninterruptible read keeps this process's fds open
                // after it ends; the caller's stdio must not be among them, or a caller
                // reading our output to its end would wait as long.
                crate::admin::logging::detach_stderr();
                let _ = sys::detach_stdio();
                sys::exit_now(1);
            }
        })
        .map_err(|e| Error::io("cannot start signal thread", "maildirfs", e))?;

    let progress = Arc::new(Progress::default());
    let mut sink = notifier.progress_sink(opts.progress);
    let started = Instant::now();
    let plan = plan(opts, &checked.source)?;
    let captured = std::thread::scope(|s| {
        // Dropping `done` wakes the progress thread at once: the capture never waits for it.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        if let Some(sink) = sink.as_mut() {
            let progress = &progress;
            s.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(PROGRESS_INTERVAL)
                {
                    sink.send(&progress.line(started.elapsed()));
                }
                sink.finish();
            });
        }
        let c = build::build(&checked.source_fd, &checked.source, &plan, &progress);
        drop(done);
        c
    })?;
    drop(sink);
    let summary = summary::summary_line(&checked.source, &checked.mountpoint, &captured);
    let mut report = summary::report_of(&checked.source, &checked.mountpoint, &captured);
    let view = Arc::clone(&captured.view);
    let later = Arc::clone(&captured.later);
    drop(captured);
    let source = Arc::new(Source::new(checked.source_fd, checked.source.clone()));
    let config = MountConfig {
        allow_other: opts.allow_other,
        passthrough: opts.passthrough,
        no_read_ahead: opts.no_read_ahead,
    };
    // Held while mounting: a stop signal now waits for the mount and then unmounts it, rather
    // than end the process under a half-made mount.
    let mut stopper = unmounter.lock();
    if lock::stopping() {
        return Err(Error::msg(
            "mount interrupted",
            &checked.mountpoint,
            "stop signal",
        ));
    }
    let mut session = Session::mount(&view, &source, &checked.mountpoint, config)?;
    *stopper = Some(session.unmounter());
    drop(stopper);
    // The kernel has connected (init ran): say how reads are served.
    let (reads, words) = session.reads();
    let summary = format!("{summary}; reads: {words}");
    report.reads = reads.to_owned();
    report.summary = summary.clone();
    let mounted = runtime::find_mount(&checked.mountpoint);
    if let Some(m) = &mounted {
        session::raise_readahead(&m.devno);
    }
    let state = match mounted {
        Some(m) => Some(StateFile::create(&m.devno)?),
        None => None,
    };
    let state = Arc::new(Mutex::new(state));
    if let Some(s) = state.lock().as_mut() {
        s.write(&report.to_state())?;
    }
    if let Some(path) = &opts.summary_json {
        write_atomically(path, report.to_json() + "\n")
            .map_err(|e| Error::io("cannot write summary", path, e))?;
    }
    crate::admin::logging::notice(&summary);
    if notifier.is_foreground() {
        eprintln!("maildirfs: {summary}");
    } else {
        notifier.ready(&summary);
    }
    if lock::stopping() {
        session.unmount();
    }
    // The state file follows the live counters for `maildirfs status`; dropping `stop` ends
    // the thread at once.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let updater = {
        let (state, source, mut report) = (Arc::clone(&state), Arc::clone(&source), report.clone());
        let view = Arc::clone(&view);
        std::thread::Builder::new()
            .name("status".to_owned())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(STATUS_INTERVAL)
                {
                    let live = Live {
                        view: view.counts(),
                        ..source.live()
                    };
                    if live != report.live {
                        report.live = live;
                        if let Some(s) = state.lock().as_mut() {
                            let _ = s.write(&report.to_state());
                        }
                    }
                }
            })
            .map_err(|e| Error::io("cannot start status thread", "maildirfs", e))?
    };
    let result = session.run();
    // The mount is gone and its device number free for the next mount: out of the lookup.
    if let Some(s) = state.lock().as_mut() {
        s.retire();
    }
    drop(stop);
    let _ = updater.join();
    report.live = Live {
        view: view.counts(),
        ..source.live()
    };
    let final_line = summary::unmount_line(&checked.mountpoint, &report.live);
    if let Some(path) = &opts.summary_json {
        // Again, now with the captures made while serving.
        report.account_holds = later.merged(&report.account_holds);
        if let Some(h) = report.account_holds.iter().max_by_key(|h| h.lock_hold_us) {
            report.longest_lock_hold_ms = h.lock_hold_us / 1000;
            report.longest_lock_hold_account = h.account.clone();
        }
        if let Err(e) = write_atomically(path, report.to_json() + "\n") {
            log::warn!("cannot write summary {}: {e}", escape_path(path));
        }
    }
    crate::admin::logging::notice(&final_line);
    if let Some(mut s) = state.lock().take() {
        let closing = MountReport {
            final_line: Some(final_line),
            ..report.clone()
        };
        let _ = s.write(&closing.to_state());
        s.remove();
    }
    result.map_err(|e| Error::io("serving failed", &checked.mountpoint, e))
}

/// How long a stop signal waits for the capture to stop by itself before it ends the process
/// (the locks are released before this wait).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Unmounts the view if it is mounted; false while there is none yet.
fn unmount_if_serving(u: &Mutex<Option<fuser::SessionUnmounter>>) -> bool {
    let mut guard = u.lock();
    let Some(um) = guard.as_mut() else {
        return false;
    };
    if let Err(e) = um.unmount() {
        log::warn!("cannot unmount: {e}");
    }
    true
}

/// How often the capture progress line is brought up to date.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often the server brings its state file's counters up to date.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_atomically(path: &Path, text: String) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", sys::getpid()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_inside_a_symlinked_source_is_refused() {
        let t = crate::testutil::TempDir::new("check-inside");
        let real = t.path().join("srv-vmail");
        std::fs::create_dir_all(real.join("frozen")).unwrap();
        let link = t.path().join("vmail");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let opts = MountOptions::new(link.clone(), real.join("frozen"));
        let err = check(&opts).unwrap_err().to_string();
        assert!(err.contains("inside the source tree"), "{err}");
        // Beside it is fine.
        std::fs::create_dir(t.path().join("mnt")).unwrap();
        let opts = MountOptions::new(link, t.path().join("mnt"));
        assert!(check(&opts).is_ok());
    }
}
