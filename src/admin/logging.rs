//! Where log lines go: stderr while attached to the caller, and always to `--log-file` if
//! given, else to syslog, so that warnings of a detached server still reach the admin.
//! Only maildirfs's own records are shown below debug level.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::sys;

struct Logger {
    level: LevelFilter,
    /// Cleared when the server detaches from the caller's stderr.
    stderr: AtomicBool,
    /// The `--log-file`, appended to. Protected by this mutex.
    file: Mutex<Option<std::fs::File>>,
    /// Whether lines also go to syslog (no log file given and running detached).
    syslog: AtomicBool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger. `verbosity`: -1 errors only, 0 warnings and notices, 1 info, 2 debug.
pub fn init(verbosity: i8, log_file: Option<&Path>, syslog: bool) -> Result<()> {
    let file = match log_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io("cannot open log file", p, e))?,
        ),
        None => None,
    };
    let level = match verbosity {
        i8::MIN..=-1 => LevelFilter::Error,
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    };
    let syslog = syslog && file.is_none();
    if syslog {
        sys::openlog();
    }
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        stderr: AtomicBool::new(true),
        file: Mutex::new(file),
        syslog: AtomicBool::new(syslog),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level.max(LevelFilter::Info));
    }
    Ok(())
}

/// Stops writing to stderr (the server is about to detach from it).
pub fn detach_stderr() {
    if let Some(l) = LOGGER.get() {
        l.stderr.store(false, Ordering::Relaxed);
    }
}

/// Writes a notice (the mount and unmount summaries) to the log file or syslog, whatever the
/// verbosity, but not to stderr.
pub fn notice(line: &str) {
    if let Some(l) = LOGGER.get() {
        l.write_sinks("notice", line);
    }
}

impl Logger {
    fn write_sinks(&self, label: &str, msg: &str) {
        if let Some(f) = self.file.lock().as_mut() {
            let _ = writeln!(
                f,
                "{} maildirfs[{}]: {label}: {msg}",
                utc_now(),
                sys::getpid()
            );
        }
        if self.syslog.load(Ordering::Relaxed) {
            let prio = match label {
                "error" => sys::Priority::Err,
                "warning" => sys::Priority::Warning,
                "notice" => sys::Priority::Notice,
                "info" => sys::Priority::Info,
                _ => sys::Priority::Debug,
            };
            sys::syslog(prio, msg);
        }
    }
}

impl Log for Logger {
    /// Our own records at the chosen level; the FUSE library's only when they are errors, or
    /// at debug level (it warns, for one, when it finds the view already unmounted at exit).
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        let ours = m.target().starts_with("maildirfs");
        m.level() <= self.level
            && (ours || m.level() == Level::Error || self.level >= LevelFilter::Debug)
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let label = match r.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            _ => "debug",
        };
        let msg = r.args().to_string();
        if self.stderr.load(Ordering::Relaxed) {
            eprintln!("maildirfs: {label}: {msg}");
        }
        self.write_sinks(label, &msg);
    }

    fn flush(&self) {
        if let Some(f) = self.file.lock().as_mut() {
            let _ = f.flush();
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`, without a date crate.
pub fn utc_now() -> String {
    utc(std::time::SystemTime::now())
}

/// `t` in UTC, as [`utc_now`] writes it.
pub fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the epoch as UTC (Howard Hinnant's civil-from-days).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_utc(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
