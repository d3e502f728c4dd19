//! `maildirfs status [MOUNTPOINT]`: every maildirfs view mounted (from `/proc/self/mountinfo`)
//! with what its server wrote into its state file. A view whose server is gone (killed,
//! crashed) is reported as dead: its mount point answers `ENOTCONN` until `maildirfs umount`.

use std::path::Path;

use crate::admin::report::MountReport;
use crate::admin::runtime;
use crate::error::{Error, Result, escape_path};

/// One mounted view; in JSON, its report with `"state": "serving"` first, or its mount point
/// and source with `"state": "dead"`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum View {
    /// Its server runs; this is its report.
    Serving(Box<MountReport>),
    /// Mounted, but no server holds its state file.
    Dead {
        /// Its mount point, escaped.
        mountpoint: String,
        /// Its mount source as mountinfo gives it.
        source: String,
    },
}

impl View {
    /// A few lines for a person, as `maildirfs status` prints them; a dead view's says how to
    /// clear it.
    pub fn to_text(&self) -> String {
        match self {
            View::Serving(r) => r.to_text(),
            View::Dead { mountpoint, source } => format!(
                "{mountpoint} (from {source}): DEAD, its server is gone; run: maildirfs umount {mountpoint}\n"
            ),
        }
    }

    /// Whether its server is gone (then `status` exits 1, for monitoring).
    pub fn is_dead(&self) -> bool {
        matches!(self, View::Dead { .. })
    }
}

/// The views mounted, or the one at `mountpoint`.
pub fn status(mountpoint: Option<&Path>) -> Result<Vec<View>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read", "/proc/self/mountinfo", e))?;
    let mounts = runtime::parse_mountinfo(&text);
    let wanted = match mountpoint {
        None => None,
        Some(m) => {
            let abs = std::fs::canonicalize(m)
                .or_else(|_| std::path::absolute(m))
                .map_err(|e| Error::io("cannot use", m, e))?;
            match mounts.iter().rfind(|e| e.mountpoint == abs) {
                Some(e) if e.fstype == "fuse.maildirfs" => Some(abs),
                Some(e) => {
                    return Err(Error::msg(
                        "not a maildirfs view",
                        m,
                        format!("a {} mount", e.fstype),
                    ));
                }
                None => return Err(Error::msg("not a maildirfs view", m, "not mounted")),
            }
        }
    };
    let mut out = Vec::new();
    for m in mounts.iter().filter(|e| e.fstype == "fuse.maildirfs") {
        if wanted.as_ref().is_some_and(|w| *w != m.mountpoint) {
            continue;
        }
        let (live, _stale) = runtime::find_state(&m.devno, &m.mountpoint);
        out.push(match live {
            Some((mut file, _)) => {
                let text = runtime::read_state(&mut file);
                View::Serving(Box::new(MountReport::from_state(&text).unwrap_or_else(
                    || {
                        // A server of another maildirfs version: what can be said without it.
                        MountReport {
                            mountpoint: escape_path(&m.mountpoint),
                            source: m.source.clone(),
                            summary:
                                "state file of another maildirfs version: restart the view to \
                                  see its counters"
                                    .to_owned(),
                            ..MountReport::default()
                        }
                    },
                )))
            }
            None => View::Dead {
                mountpoint: escape_path(&m.mountpoint),
                source: m.source.clone(),
            },
        });
    }
    Ok(out)
}

/// The JSON document `status --json` prints: `{"mounts": [...]}`.
pub fn to_json(views: &[View]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "mounts": views })).unwrap_or_default()
}
