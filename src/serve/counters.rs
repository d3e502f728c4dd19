//! The counters that move while the view is served, as the state file and `status` show them.

use serde::{Deserialize, Serialize};

/// Counters that move while the view is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Live {
    /// Files gone from the source since capture (each counted once).
    #[serde(rename = "vanished_files")]
    pub vanished: u64,
    /// Files that failed to open or read for another reason (each counted once).
    pub read_errors: u64,
    /// Messages renamed in the source and served from their new names.
    #[serde(rename = "renamed_files_refound")]
    pub refound: u64,
    /// Bytes maildirfs read from the source for the kernel; pages the kernel already holds are
    /// served again without maildirfs, so this is at most what readers read.
    pub bytes_served: u64,
    /// READ requests answered.
    #[serde(rename = "read_requests")]
    pub reads: u64,
    /// Files and bytes read ahead into the kernel's cache, and READs that still reached
    /// maildirfs for files of a read-ahead window (too late, or wasted).
    #[serde(rename = "files_read_ahead")]
    pub ahead_files: u64,
    /// Bytes of the files counted in `files_read_ahead` (JSON `bytes_read_ahead`).
    #[serde(rename = "bytes_read_ahead")]
    pub ahead_bytes: u64,
    /// READs that reached maildirfs for a file inside a read-ahead window other than its
    /// marker (JSON `reads_late_for_read_ahead`).
    #[serde(rename = "reads_late_for_read_ahead")]
    pub ahead_late: u64,
    /// The working set: accounts captured, again, never, evicted, failed.
    #[serde(flatten)]
    pub view: crate::image::view::Counts,
}
