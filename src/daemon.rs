//! Detaching: `maildirfs mount` forks before it does anything else (so before any thread
//! exists); the child captures, mounts and serves, and the parent waits on a pipe until the
//! child says the view is ready (or why it failed), prints that, and exits with its status.
//!
//! Invariant: the child redirects its stdin, stdout and stderr to /dev/null *before* it tells
//! the parent it is ready, so once the parent exits nothing holds the caller's terminal or
//! pipes (`out=$(maildirfs mount ...)` returns at once).

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::sys;

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Notifier {
    pipe: Option<std::io::PipeWriter>,
}

impl Notifier {
    /// Tells the parent the view is ready, after detaching from the caller's stdio.
    pub fn ready(&mut self, summary: &str) {
        crate::logging::detach_stderr();
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

    /// A notifier that reports to stderr (foreground mode).
    pub fn foreground() -> Notifier {
        Notifier { pipe: None }
    }

    pub fn is_foreground(&self) -> bool {
        self.pipe.is_none()
    }
}

/// What the parent learned.
pub enum Outcome {
    /// The child runs on and serves; this is its summary line.
    Ready(String),
    /// The child failed; this is its error line.
    Failed(String),
}

/// Forks. In the child, runs `serve` and exits with its status; in the parent, returns what
/// the child reported.
pub fn detach(serve: impl FnOnce(&mut Notifier) -> Result<()>) -> Result<Outcome> {
    let (mut reader, writer) =
        std::io::pipe().map_err(|e| Error::io("cannot create pipe", "maildirfs", e))?;
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
                    crate::logging::detach_stderr();
                    log::error!("{e}");
                    n.fail(&e);
                    1
                }
            };
            std::process::exit(code);
        }
        sys::Fork::Parent(pid) => {
            drop(writer);
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            let line = text.lines().next().unwrap_or("");
            if let Some(summary) = line.strip_prefix("OK ") {
                return Ok(Outcome::Ready(summary.to_owned()));
            }
            if let Some(err) = line.strip_prefix("ERR ") {
                let _ = sys::waitpid(pid);
                return Ok(Outcome::Failed(err.to_owned()));
            }
            let status = sys::waitpid(pid).unwrap_or(-1);
            Ok(Outcome::Failed(format!(
                "mount failed: the serving process exited before the view was ready (wait status {status})"
            )))
        }
    }
}
