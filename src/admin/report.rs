//! What a mount captured and what serving has met since: one serde type, written by the
//! server into its state file (at mount, then every few seconds while counters change), read
//! back by `maildirfs status` and `umount`, printed by `status --json` and written by
//! `--summary-json`, all with the same keys (and a `version`). Paths are kept escaped
//! (`error::escape_path`), so every value is one line of text.

use serde::{Deserialize, Serialize};

/// The version of the report's keys, in every JSON form of it. 1: the first one set, where the
/// state file took the keys of `--summary-json`.
pub const REPORT_VERSION: u32 = 1;

/// The report of one mount. The JSON keys are the serde names below, in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountReport {
    /// The version of the keys: [`REPORT_VERSION`].
    pub version: u32,
    /// The view's mount point, canonicalized and escaped.
    pub mountpoint: String,
    /// SOURCE as an absolute path, escaped.
    pub source: String,
    /// The serving process's pid.
    pub pid: u32,
    /// UTC, ISO 8601.
    pub captured_at: String,
    /// Seconds the capture at mount took, from discovery to the view being ready.
    pub capture_seconds: f64,
    /// Accounts in the view, including those left to capture when first read.
    pub accounts: u64,
    /// Mailboxes captured at mount.
    pub mailboxes: u64,
    /// Messages (files in `cur/` and `new/`) captured at mount.
    pub messages: u64,
    /// Bytes of all regular files captured at mount: messages, control and other files.
    pub bytes: u64,
    /// Accounts captured without their locks, and why.
    #[serde(rename = "accounts_without_lock")]
    pub unlocked: Vec<Unlocked>,
    /// Every account's lock hold, in discovery order: in `--summary-json` only (the state
    /// file, rewritten every second while serving, leaves them out).
    #[serde(rename = "account_lock_holds", skip_serializing_if = "Vec::is_empty")]
    pub account_holds: Vec<AccountHold>,
    /// The longest lock hold, in ms: of the captures at mount, and in `--summary-json`'s last
    /// write of every capture.
    pub longest_lock_hold_ms: u64,
    /// The account (relative to SOURCE, escaped) of that longest hold; empty when none was
    /// captured.
    pub longest_lock_hold_account: String,
    /// Files captured at mount held by a pin (JSON `pinned_files`).
    #[serde(rename = "pinned_files")]
    pub pinned: u64,
    /// Files captured at mount without a pin, over the budget: found again by name when read
    /// (JSON `unpinned_files`).
    #[serde(rename = "unpinned_files")]
    pub unpinned: u64,
    /// The soft `RLIMIT_NOFILE` the pins had to fit in.
    pub fd_limit: u64,
    /// Messages listed under the lock but expunged before they could be frozen.
    pub expunged_during_capture: u64,
    /// Directories and files that could not be read at mount, shown empty or left out.
    pub unreadable: u64,
    /// FIFOs, sockets and devices left out of the image (JSON `special_files_left_out`).
    #[serde(rename = "special_files_left_out")]
    pub special_files: u64,
    /// Control files left out for their size.
    pub control_files_too_large: u64,
    /// Accounts whose capture hung (locks released, `EIO` in the view).
    pub stalled_accounts: u64,
    /// Directories deeper than the depth limit, shown empty.
    #[serde(rename = "directories_too_deep")]
    pub too_deep: u64,
    /// Mount points inside SOURCE not entered (JSON `mount_points_not_entered`).
    #[serde(rename = "mount_points_not_entered")]
    pub mount_points_skipped: u64,
    /// Mailboxes created during the capture, so captured without a lock (JSON
    /// `mailboxes_created_during_capture`).
    #[serde(rename = "mailboxes_created_during_capture")]
    pub mailboxes_without_lock: u64,
    /// "kernel-cache", "passthrough" or "no-passthrough" (asked, refused).
    pub reads: String,
    /// The serving counters, at the report's top level (their keys are [`Live`]'s).
    #[serde(flatten)]
    pub live: Live,
    /// The one-line summary as printed.
    pub summary: String,
    /// The server's closing line, once it is unmounted (the state file's last content).
    #[serde(rename = "final_line", skip_serializing_if = "Option::is_none")]
    pub final_line: Option<String>,
}

impl Default for MountReport {
    fn default() -> MountReport {
        MountReport {
            version: REPORT_VERSION,
            mountpoint: String::new(),
            source: String::new(),
            pid: 0,
            captured_at: String::new(),
            capture_seconds: 0.0,
            accounts: 0,
            mailboxes: 0,
            messages: 0,
            bytes: 0,
            unlocked: Vec::new(),
            account_holds: Vec::new(),
            longest_lock_hold_ms: 0,
            longest_lock_hold_account: String::new(),
            pinned: 0,
            unpinned: 0,
            fd_limit: 0,
            expunged_during_capture: 0,
            unreadable: 0,
            special_files: 0,
            control_files_too_large: 0,
            stalled_accounts: 0,
            too_deep: 0,
            mount_points_skipped: 0,
            mailboxes_without_lock: 0,
            reads: String::new(),
            live: Live::default(),
            summary: String::new(),
            final_line: None,
        }
    }
}

/// An account captured without its locks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlocked {
    /// The account's root relative to SOURCE, escaped (`.` for SOURCE itself).
    pub account: String,
    /// Why its locks were not taken, e.g. `--no-lock given` or `lock busy for 30 s: ...`.
    pub why: String,
}

pub use crate::image::build::AccountHold;
pub use crate::serve::counters::Live;

impl MountReport {
    /// The report for `--summary-json` and `status --json`: every key, pretty.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The state file's content: the same keys on one line, without the per-account holds
    /// (rewritten every second while serving; a store may have a million accounts).
    pub fn to_state(&self) -> String {
        let mut r = self.clone();
        r.account_holds = Vec::new();
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// A state file's content read back; `None` when it is not a report (a server of an
    /// older maildirfs, which wrote `key=value` lines).
    pub fn from_state(text: &str) -> Option<MountReport> {
        serde_json::from_str(text).ok()
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
            crate::admin::summary::human_bytes(self.bytes),
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
            for u in &self.unlocked {
                s.push_str(&format!("    {}: {}\n", u.account, u.why));
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
            crate::admin::summary::human_bytes(self.live.bytes_served),
            self.live.reads,
            self.live.ahead_files,
            crate::admin::summary::human_bytes(self.live.ahead_bytes),
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
    fn one_set_of_keys_round_trips_through_the_state_file() {
        let r = MountReport {
            pid: 42,
            source: "/var/vmail".into(),
            mountpoint: "/mnt/frozen".into(),
            captured_at: "2026-01-02T03:04:05Z".into(),
            capture_seconds: 1.25,
            accounts: 3,
            messages: 10,
            unlocked: vec![Unlocked {
                account: "a/Maildir".into(),
                why: "lock busy for 30 s: x".into(),
            }],
            account_holds: vec![AccountHold {
                account: "a/Maildir".into(),
                captures: 1,
                ..AccountHold::default()
            }],
            reads: "kernel-cache".into(),
            live: Live {
                vanished: 1,
                bytes_served: 99,
                view: crate::image::view::Counts {
                    captured: 2,
                    ..Default::default()
                },
                ..Live::default()
            },
            ..MountReport::default()
        };
        let state = r.to_state();
        assert!(!state.contains('\n'), "{state}");
        let back = MountReport::from_state(&state).unwrap();
        assert_eq!(
            back,
            MountReport {
                account_holds: Vec::new(),
                ..r.clone()
            }
        );
        for json in [state, r.to_json().replace(": ", ":").replace(",\n", ",")] {
            assert!(json.contains(r#""version":1"#), "{json}");
            assert!(json.contains(r#""vanished_files":1"#), "{json}");
            assert!(json.contains(r#""accounts_captured":2"#), "{json}");
            assert!(json.contains(r#""account":"a/Maildir""#), "{json}");
        }
        assert!(r.to_json().contains(r#""account_lock_holds": ["#));
        // What an older server wrote is no report.
        assert_eq!(MountReport::from_state("pid=1\nsource=/x\n"), None);
    }
}
