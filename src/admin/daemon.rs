//! Detaching: `maildirfs mount` forks before it does anything else (so before any thread
//! exists); the child captures, mounts and serves, and the parent waits on a pipe until the
//! child says the view is ready (or why it failed), prints that, and exits with its status.
//!
//! Invariant: the child redirects its stdin, stdout and stderr to /dev/null *before* it tells
//! the parent it is ready, so once the parent exits nothing holds the caller's terminal or
//! pipes (`out=$(maildirfs mount ...)` returns at once).

use std::io::{BufRead, IsTerminal, Write};

use crate::error::{Error, Result};
use crate::sys;

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Notifier {
    pipe: Option<std::fs::File>,
}

impl Notifier {
    /// Tells the parent the view is ready, after detaching from the caller's stdio.
    pub fn ready(&mut self, summary: &str) {
        crate::admin::logging::detach_stderr();
        if let Err(e) = sys::detach_stdio() {
            log::warn!("cannot detach from the terminal: {e}");
        }
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(format!("OK {summary}\n").as_bytes());
        }
    }

    /// Tells the parent why the mount failed.
    pub fn fail(&mut self, err: &Error) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(format!("ERR {err}\n").as_bytes());
        }
    }

    /// A second writer on the pipe to the waiting parent, for the signal thread to say why the
    /// mount ended when the capture is stuck (`None` in the foreground).
    pub fn clone_pipe(&self) -> Option<std::fs::File> {
        self.pipe.as_ref().and_then(|p| p.try_clone().ok())
    }

    /// Where capture progress goes: through the pipe to the waiting parent (which shows it or
    /// not), or in the foreground straight to stderr when it is a terminal and `wanted`.
    pub fn progress_sink(&self, wanted: bool) -> Option<ProgressSink> {
        match &self.pipe {
            Some(p) => p.try_clone().ok().map(ProgressSink::Pipe),
            None if wanted && std::io::stderr().is_terminal() => Some(ProgressSink::Terminal),
            None => None,
        }
    }

    /// A notifier that reports to stderr (foreground mode).
    pub fn foreground() -> Notifier {
        Notifier { pipe: None }
    }

    /// Whether no parent waits on a pipe (foreground mode): the caller then prints the summary
    /// itself.
    pub fn is_foreground(&self) -> bool {
        self.pipe.is_none()
    }
}

/// Where progress lines go.
#[derive(Debug)]
pub enum ProgressSink {
    /// To the waiting parent, as `PROGRESS <line>` lines on the readiness pipe.
    Pipe(std::fs::File),
    /// Straight to stderr, each line over the last (foreground, stderr a terminal).
    Terminal,
}

impl ProgressSink {
    /// Shows `line` in place of the previous one.
    pub fn send(&mut self, line: &str) {
        match self {
            ProgressSink::Pipe(p) => {
                let _ = p.write_all(format!("PROGRESS {line}\n").as_bytes());
            }
            ProgressSink::Terminal => eprint!("{CLEAR_LINE}maildirfs: {line}"),
        }
    }

    /// Clears the line shown, if any.
    pub fn finish(&mut self) {
        if let ProgressSink::Terminal = self {
            eprint!("{CLEAR_LINE}");
        }
    }
}

/// How long the parent waits for a failed server to finish exiting.
const CHILD_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Back to the start of the line, and clear it.
const CLEAR_LINE: &str = "\r\x1b[K";

/// What the parent learned.
pub enum Outcome {
    /// The child runs on and serves; this is its summary line.
    Ready(String),
    /// The child failed; this is its error line.
    Failed(String),
}

/// Forks. In the child, runs `serve` and exits with its status; in the parent, returns what
/// the child reported.
/// Progress lines from the child are shown on stderr, each over the last, when
/// `show_progress` and stderr is a terminal.
pub fn detach(
    show_progress: bool,
    serve: impl FnOnce(&mut Notifier) -> Result<()>,
) -> Result<Outcome> {
    let (reader, writer) =
        sys::pipe().map_err(|e| Error::io("cannot create pipe", "maildirfs", e))?;
    let (reader, writer) = (std::fs::File::from(reader), std::fs::File::from(writer));
    match sys::fork().map_err(|e| Error::io("cannot fork", "maildirfs", e))? {
        sys::Fork::Child => {
            drop(reader);
            // Leave the caller's session: a Ctrl-C meant for the caller must not stop the server.
            let _ = sys::setsid();
            let mut n = Notifier { pipe: Some(writer) };
            let code = match serve(&mut n) {
                Ok(()) => 0,
                Err(e) => {
                    // The parent prints the error; the log file or syslog keeps a copy.
                    crate::admin::logging::detach_stderr();
                    log::error!("{e}");
                    n.fail(&e);
                    // A capture thread stuck in an uninterruptible read would keep the
                    // caller's stdio open after this process ends: let go of it now.
                    let _ = sys::detach_stdio();
                    1
                }
            };
            std::process::exit(code);
        }
        sys::Fork::Parent(pid) => {
            drop(writer);
            let show = show_progress && std::io::stderr().is_terminal();
            let mut shown = false;
            let mut outcome = None;
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix("PROGRESS ") {
                    if show {
                        eprint!("{CLEAR_LINE}maildirfs: {p}");
                        shown = true;
                    }
                    continue;
                }
                outcome = Some(line);
                break;
            }
            if shown {
                eprint!("{CLEAR_LINE}");
            }
            let line = outcome.unwrap_or_default();
            if let Some(summary) = line.strip_prefix("OK ") {
                return Ok(Outcome::Ready(summary.to_owned()));
            }
            if let Some(err) = line.strip_prefix("ERR ") {
                // A server whose capture thread is stuck in an uninterruptible read (a hung
                // disk) has released its locks but cannot finish exiting; the caller gets its
                // error regardless.
                let _ = sys::waitpid_for(pid, CHILD_EXIT_WAIT);
                return Ok(Outcome::Failed(err.to_owned()));
            }
            let status = sys::waitpid(pid).unwrap_or(-1);
            Ok(Outcome::Failed(format!(
                "mount failed: the serving process exited before the view was ready (wait status {status})"
            )))
        }
    }
}
