//! What a mount captured and what serving has met since: written by the server into its state
//! file (at mount, then every few seconds while counters change), read back by `maildirfs
//! status`, and written as JSON by `--summary-json`. Paths are kept escaped (`error::escape_path`),
//! so every value is one line of text.

use crate::json::Value;

/// The report of one mount.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountReport {
    pub pid: u32,
    pub source: String,
    pub mountpoint: String,
    /// UTC, ISO 8601.
    pub captured_at: String,
    pub capture_seconds: f64,
    pub accounts: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Accounts captured without their locks: (account, why).
    pub unlocked: Vec<(String, String)>,
    pub longest_lock_hold_ms: u64,
    pub longest_lock_hold_account: String,
    pub pinned: u64,
    pub unpinned: u64,
    pub fd_limit: u64,
    /// Messages listed under the lock but expunged before they could be frozen.
    pub expunged_during_capture: u64,
    pub unreadable: u64,
    pub special_files: u64,
    /// Control files left out for their size.
    pub control_files_too_large: u64,
    /// Accounts whose capture hung (locks released, `EIO` in the view).
    pub stalled_accounts: u64,
    /// Directories deeper than the depth limit, shown empty.
    pub too_deep: u64,
    pub mount_points_skipped: u64,
    pub mailboxes_without_lock: u64,
    /// "kernel-cache", "passthrough" or "no-passthrough" (asked, refused).
    pub reads: String,
    /// The one-line summary as printed.
    pub summary: String,
    pub live: Live,
    /// Every account's lock hold, in discovery order: in `--summary-json` only (the state
    /// file, rewritten every second while serving, stays one line per counter).
    pub account_holds: Vec<AccountHold>,
}

/// One account's lock hold, for `--summary-json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountHold {
    pub account: String,
    /// From the first lock taken to the last released (the longest of its captures); 0 when
    /// captured without locks.
    pub lock_hold_us: u64,
    /// The part of it spent pinning files that were not pinned before the locks.
    pub pinning_us: u64,
    pub messages: u64,
    pub locked: bool,
    /// Its capture hung and was given up (locks released, `EIO` in the view).
    pub stalled: bool,
    /// How many times it was captured (on demand, again after it left the working set).
    pub captures: u64,
}

impl AccountHold {
    /// Folds in another capture of the same account: the longest hold (with its messages and
    /// pinning), the captures counted, and the bad news kept (one capture without its locks,
    /// or one that hung, is not hidden by a later one that went well).
    pub fn combine(&mut self, o: AccountHold) {
        let captures = self.captures + o.captures;
        let locked = self.locked && o.locked;
        let stalled = self.stalled || o.stalled;
        if o.lock_hold_us > self.lock_hold_us {
            *self = o;
        }
        self.captures = captures;
        self.locked = locked;
        self.stalled = stalled;
    }
}

/// Counters that move while the view is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// Files gone from the source since capture (each counted once).
    pub vanished: u64,
    /// Files that failed to open or read for another reason (each counted once).
    pub read_errors: u64,
    /// Messages renamed in the source and served from their new names.
    pub refound: u64,
    /// Bytes maildirfs read from the source for the kernel; pages the kernel already holds are
    /// served again without maildirfs, so this is at most what readers read.
    pub bytes_served: u64,
    /// READ requests answered.
    pub reads: u64,
    /// Files and bytes read ahead into the kernel's cache, and READs that still reached
    /// maildirfs for files of a read-ahead window (too late, or wasted).
    pub ahead_files: u64,
    pub ahead_bytes: u64,
    pub ahead_late: u64,
    /// The working set: accounts captured, again, never, evicted, failed.
    pub view: crate::view::Counts,
}

impl MountReport {
    /// `key=value` lines for the state file.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("pid", self.pid.to_string()),
            ("source", self.source.clone()),
            ("mountpoint", self.mountpoint.clone()),
            ("captured_at", self.captured_at.clone()),
            ("capture_seconds", format!("{:.3}", self.capture_seconds)),
            ("accounts", self.accounts.to_string()),
            ("mailboxes", self.mailboxes.to_string()),
            ("messages", self.messages.to_string()),
            ("bytes", self.bytes.to_string()),
            (
                "longest_lock_hold_ms",
                self.longest_lock_hold_ms.to_string(),
            ),
            (
                "longest_lock_hold_account",
                self.longest_lock_hold_account.clone(),
            ),
            ("pinned", self.pinned.to_string()),
            ("unpinned", self.unpinned.to_string()),
            ("fd_limit", self.fd_limit.to_string()),
            (
                "expunged_during_capture",
                self.expunged_during_capture.to_string(),
            ),
            ("unreadable", self.unreadable.to_string()),
            ("special_files", self.special_files.to_string()),
            (
                "control_files_too_large",
                self.control_files_too_large.to_string(),
            ),
            ("stalled_accounts", self.stalled_accounts.to_string()),
            ("too_deep", self.too_deep.to_string()),
            (
                "mount_points_skipped",
                self.mount_points_skipped.to_string(),
            ),
            (
                "mailboxes_without_lock",
                self.mailboxes_without_lock.to_string(),
            ),
            ("reads", self.reads.clone()),
            ("summary", self.summary.clone()),
            ("vanished", self.live.vanished.to_string()),
            ("read_errors", self.live.read_errors.to_string()),
            ("refound", self.live.refound.to_string()),
            ("bytes_served", self.live.bytes_served.to_string()),
            ("read_requests", self.live.reads.to_string()),
            ("ahead_files", self.live.ahead_files.to_string()),
            ("ahead_bytes", self.live.ahead_bytes.to_string()),
            ("ahead_late", self.live.ahead_late.to_string()),
            ("accounts_captured", self.live.view.captured.to_string()),
            (
                "accounts_captured_again",
                self.live.view.recaptured.to_string(),
            ),
            ("accounts_never_captured", self.live.view.never.to_string()),
            ("accounts_in_working_set", self.live.view.held.to_string()),
            ("evictions", self.live.view.evictions.to_string()),
            ("accounts_failed", self.live.view.failed.to_string()),
            ("captures_without_lock", self.live.view.unlocked.to_string()),
            ("view_accounts", self.live.view.accounts.to_string()),
        ];
        for (account, why) in &self.unlocked {
            f.push(("unlocked", format!("{account}\t{why}")));
        }
        f
    }

    /// Reads the fields back; unknown keys are ignored and missing ones stay zero.
    pub fn from_fields(fields: &[(String, String)]) -> MountReport {
        let mut r = MountReport::default();
        for (k, v) in fields {
            let n = || v.parse::<u64>().unwrap_or(0);
            match k.as_str() {
                "pid" => r.pid = v.parse().unwrap_or(0),
                "source" => r.source = v.clone(),
                "mountpoint" => r.mountpoint = v.clone(),
                "captured_at" => r.captured_at = v.clone(),
                "capture_seconds" => r.capture_seconds = v.parse().unwrap_or(0.0),
                "accounts" => r.accounts = n(),
                "mailboxes" => r.mailboxes = n(),
                "messages" => r.messages = n(),
                "bytes" => r.bytes = n(),
                "longest_lock_hold_ms" => r.longest_lock_hold_ms = n(),
                "longest_lock_hold_account" => r.longest_lock_hold_account = v.clone(),
                "pinned" => r.pinned = n(),
                "unpinned" => r.unpinned = n(),
                "fd_limit" => r.fd_limit = n(),
                "expunged_during_capture" => r.expunged_during_capture = n(),
                "unreadable" => r.unreadable = n(),
                "special_files" => r.special_files = n(),
                "control_files_too_large" => r.control_files_too_large = n(),
                "stalled_accounts" => r.stalled_accounts = n(),
                "too_deep" => r.too_deep = n(),
                "mount_points_skipped" => r.mount_points_skipped = n(),
                "mailboxes_without_lock" => r.mailboxes_without_lock = n(),
                "reads" => r.reads = v.clone(),
                "summary" => r.summary = v.clone(),
                "vanished" => r.live.vanished = n(),
                "read_errors" => r.live.read_errors = n(),
                "refound" => r.live.refound = n(),
                "bytes_served" => r.live.bytes_served = n(),
                "read_requests" => r.live.reads = n(),
                "ahead_files" => r.live.ahead_files = n(),
                "ahead_bytes" => r.live.ahead_bytes = n(),
                "ahead_late" => r.live.ahead_late = n(),
                "accounts_captured" => r.live.view.captured = n(),
                "accounts_captured_again" => r.live.view.recaptured = n(),
                "accounts_never_captured" => r.live.view.never = n(),
                "accounts_in_working_set" => r.live.view.held = n(),
                "evictions" => r.live.view.evictions = n(),
                "accounts_failed" => r.live.view.failed = n(),
                "captures_without_lock" => r.live.view.unlocked = n(),
                "view_accounts" => r.live.view.accounts = n(),
                "unlocked" => {
                    let (a, w) = v.split_once('\t').unwrap_or((v.as_str(), ""));
                    r.unlocked.push((a.to_owned(), w.to_owned()));
                }
                _ => {}
            }
        }
        r
    }

    /// The report as a JSON object (stable keys: monitoring scripts read them).
    pub fn to_value(&self) -> Value {
        let unlocked = self
            .unlocked
            .iter()
            .map(|(a, w)| {
                Value::object([
                    ("account", Value::from(a.as_str())),
                    ("why", w.as_str().into()),
                ])
            })
            .collect();
        Value::object([
            ("mountpoint", Value::from(self.mountpoint.as_str())),
            ("source", self.source.as_str().into()),
            ("pid", u64::from(self.pid).into()),
            ("captured_at", self.captured_at.as_str().into()),
            ("capture_seconds", self.capture_seconds.into()),
            ("accounts", self.accounts.into()),
            ("mailboxes", self.mailboxes.into()),
            ("messages", self.messages.into()),
            ("bytes", self.bytes.into()),
            ("accounts_without_lock", Value::Array(unlocked)),
            (
                "account_lock_holds",
                Value::Array(
                    self.account_holds
                        .iter()
                        .map(|h| {
                            Value::object([
                                ("account", Value::from(h.account.as_str())),
                                ("lock_hold_us", h.lock_hold_us.into()),
                                ("pinning_us", h.pinning_us.into()),
                                ("messages", h.messages.into()),
                                ("locked", h.locked.into()),
                                ("stalled", h.stalled.into()),
                                ("captures", h.captures.into()),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("longest_lock_hold_ms", self.longest_lock_hold_ms.into()),
            (
                "longest_lock_hold_account",
                self.longest_lock_hold_account.as_str().into(),
            ),
            ("pinned_files", self.pinned.into()),
            ("unpinned_files", self.unpinned.into()),
            ("fd_limit", self.fd_limit.into()),
            (
                "expunged_during_capture",
                self.expunged_during_capture.into(),
            ),
            ("unreadable", self.unreadable.into()),
            ("special_files_left_out", self.special_files.into()),
            (
                "control_files_too_large",
                self.control_files_too_large.into(),
            ),
            ("stalled_accounts", self.stalled_accounts.into()),
            ("directories_too_deep", self.too_deep.into()),
            ("mount_points_not_entered", self.mount_points_skipped.into()),
            (
                "mailboxes_created_during_capture",
                self.mailboxes_without_lock.into(),
            ),
            ("reads", self.reads.as_str().into()),
            ("vanished_files", self.live.vanished.into()),
            ("read_errors", self.live.read_errors.into()),
            ("renamed_files_refound", self.live.refound.into()),
            ("bytes_served", self.live.bytes_served.into()),
            ("read_requests", self.live.reads.into()),
            ("files_read_ahead", self.live.ahead_files.into()),
            ("bytes_read_ahead", self.live.ahead_bytes.into()),
            ("reads_late_for_read_ahead", self.live.ahead_late.into()),
            ("accounts_captured", self.live.view.captured.into()),
            ("accounts_captured_again", self.live.view.recaptured.into()),
            ("accounts_never_captured", self.live.view.never.into()),
            ("accounts_in_working_set", self.live.view.held.into()),
            ("evictions", self.live.view.evictions.into()),
            ("accounts_failed", self.live.view.failed.into()),
            ("captures_without_lock", self.live.view.unlocked.into()),
            ("summary", self.summary.as_str().into()),
        ])
    }

    /// A few lines for a person, as `maildirfs status` prints them.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} (from {}, pid {})\n  captured {} in {:.2} s: {} accounts, {} mailboxes, {} messages, {}\n",
            self.mountpoint,
            self.source,
            self.pid,
            self.captured_at,
            self.capture_seconds,
            self.accounts,
            self.mailboxes,
            self.messages,
            crate::mount::human_bytes(self.bytes),
        );
        if self.unlocked.is_empty() {
            s.push_str(&format!(
                "  all accounts locked; longest lock hold {} ms ({})\n",
                self.longest_lock_hold_ms, self.longest_lock_hold_account
            ));
        } else {
            s.push_str(&format!(
                "  {} accounts captured WITHOUT lock:\n",
                self.unlocked.len()
            ));
            for (a, w) in &self.unlocked {
                s.push_str(&format!("    {a}: {w}\n"));
            }
        }
        s.push_str(&format!(
            "  {} files pinned, {} unpinned (fd limit {})\n",
            self.pinned, self.unpinned, self.fd_limit
        ));
        let problems = [
            (self.unreadable, "unreadable (shown empty or left out)"),
            (self.expunged_during_capture, "expunged during capture"),
            (
                self.mailboxes_without_lock,
                "mailboxes created during capture, not locked",
            ),
            (self.mount_points_skipped, "mount points not entered"),
            (self.special_files, "special files left out"),
            (
                self.control_files_too_large,
                "control files left out as too large",
            ),
            (
                self.stalled_accounts,
                "accounts whose capture hung (locks released, EIO in the view)",
            ),
            (self.too_deep, "directories too deep, shown empty"),
        ];
        for (n, what) in problems.iter().filter(|(n, _)| *n > 0) {
            s.push_str(&format!("  {n} {what}\n"));
        }
        let v = &self.live.view;
        if v.accounts > 0 {
            s.push_str(&format!(
                "  working set: {} of {} accounts captured ({} more than once), {} held now, {} evictions, {} never captured{}{}\n",
                v.captured,
                v.accounts,
                v.recaptured,
                v.held,
                v.evictions,
                v.never,
                if v.unlocked > 0 { format!(", {} captures WITHOUT locks", v.unlocked) } else { String::new() },
                if v.failed > 0 { format!(", {} accounts UNREADABLE", v.failed) } else { String::new() },
            ));
        }
        s.push_str(&format!(
            "  served so far: {} read from the source in {} reads, {} files ({}) read ahead ({} reads late); {} vanished, {} read errors, {} renamed files refound\n",
            crate::mount::human_bytes(self.live.bytes_served),
            self.live.reads,
            self.live.ahead_files,
            crate::mount::human_bytes(self.live.ahead_bytes),
            self.live.ahead_late,
            self.live.vanished,
            self.live.read_errors,
            self.live.refound,
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let r = MountReport {
            pid: 42,
            source: "/var/vmail".into(),
            mountpoint: "/mnt/frozen".into(),
            captured_at: "2026-01-02T03:04:05Z".into(),
            capture_seconds: 1.25,
            accounts: 3,
            messages: 10,
            unlocked: vec![("a/Maildir".into(), "lock busy for 30 s: x".into())],
            reads: "kernel-cache".into(),
            live: Live {
                vanished: 1,
                bytes_served: 99,
                ..Live::default()
            },
            ..MountReport::default()
        };
        let fields: Vec<(String, String)> = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(MountReport::from_fields(&fields), r);
        let json = r.to_value().to_json();
        assert!(json.contains(
            r#""accounts_without_lock":[{"account":"a/Maildir","why":"lock busy for 30 s: x"}]"#
        ));
        assert!(json.contains(r#""vanished_files":1"#));
    }
}
