//! One error type for the whole crate. Every error names what was being done and the path it
//! was done to, and `Display` is the one line the admin sees:
//! `<what>: <path>: <why>` (the binary prefixes `maildirfs: `).
//!
//! `Error::errno` is the one place an errno for a FUSE reply is chosen.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why an operation failed.
#[derive(Debug)]
pub enum Cause {
    /// An OS error, kept whole so its errno reaches FUSE replies.
    Io(io::Error),
    /// A condition maildirfs itself detected (e.g. "holds no Maildir").
    Msg(String),
}

/// An error with the operation and the path it concerns.
#[derive(Debug)]
pub struct Error {
    /// What was being done, e.g. "cannot open source".
    pub what: &'static str,
    /// The path concerned, as the user gave it or as found under SOURCE.
    pub path: PathBuf,
    /// Why it failed: an OS error, or maildirfs's own reason.
    pub cause: Cause,
}

/// The crate's `Result`, with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An OS error `err` met while doing `what` to `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, err: io::Error) -> Error {
        Error {
            what,
            path: path.into(),
            cause: Cause::Io(err),
        }
    }

    /// A failure maildirfs found itself while doing `what` to `path`; `why` says what it is.
    pub fn msg(what: &'static str, path: impl Into<PathBuf>, why: impl Into<String>) -> Error {
        Error {
            what,
            path: path.into(),
            cause: Cause::Msg(why.into()),
        }
    }

    /// An error line reported by another process (the detached server), shown as it is.
    pub fn relayed(line: impl Into<String>) -> Error {
        Error {
            what: "",
            path: PathBuf::new(),
            cause: Cause::Msg(line.into()),
        }
    }

    /// The errno a FUSE reply carries for this error: the OS error if there is one, else EIO.
    pub fn errno(&self) -> fuser::Errno {
        match &self.cause {
            Cause::Io(e) => e
                .raw_os_error()
                .map(fuser::Errno::from_i32)
                .unwrap_or(fuser::Errno::EIO),
            Cause::Msg(_) => fuser::Errno::EIO,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.what.is_empty() {
            write!(f, "{}: {}: ", self.what, escape_path(&self.path))?;
        }
        match &self.cause {
            Cause::Io(e) => write!(f, "{}", io_reason(e)),
            Cause::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Io(e) => Some(e),
            Cause::Msg(_) => None,
        }
    }
}

/// The reason text of an OS error without Rust's " (os error N)" suffix.
fn io_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Renders a path for a log line or an error message: printable UTF-8 stays as it is, and
/// control characters, backslashes and bytes that are not UTF-8 are written as `\xNN`, so a
/// hostile file name can neither forge a log line nor hide itself.
pub fn escape_path(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_bytes())
}

/// `escape_path` for raw name bytes.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A path relative to SOURCE as messages show it: escaped, and `.` for SOURCE itself.
pub fn display_rel(p: &std::path::Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        escape_path(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_path_and_reason() {
        let e = Error::io(
            "cannot open source",
            "/var/vmail",
            io::Error::from(crate::sys::Errno::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "cannot open source: /var/vmail: No such file or directory"
        );
        assert_eq!(e.errno(), fuser::Errno::ENOENT);
    }

    #[test]
    fn escapes_control_and_invalid_bytes() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain", "plain"),
            (b"new\nline", "new\\x0aline"),
            (b"bad\xffname", "bad\\xffname"),
            (b"back\\slash", "back\\x5cslash"),
            ("café".as_bytes(), "café"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_bytes(input), *want, "input {input:?}");
        }
    }
}
