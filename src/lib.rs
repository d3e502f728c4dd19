//! maildirfs captures a live Maildir tree under Dovecot's locks and serves the captured image
//! as a frozen, read-only FUSE filesystem, so that rsync, restic, borg or tar copy one
//! consistent instant of every account while Dovecot, Postfix and mail clients keep working.
//!
//! The data flows one way: **discover** the accounts and mailboxes under SOURCE
//! ([`maildir::discover`]), **lock** every mailbox of an account at once with Dovecot's
//! `dovecot-uidlist.lock` ([`lock`]), **capture** control files and the `new/`/`cur/` listings
//! under those locks with a listing check ([`capture`]), **freeze** the rest of the tree into
//! an immutable [`snapshot::Snapshot`] after the locks are released ([`freeze`]), hold the
//! accounts' snapshots in a bounded working set that captures an account when it is first
//! needed ([`view`]), and **serve** it read-only over FUSE ([`fs`], reading bytes through
//! [`source`]).
//!
//! # Layout
//! - `maildir/`: filename grammar, names to hide, control files, discovery.
//! - `lock.rs`: the Dovecot dotlock as an RAII guard, and the registry a stop signal releases.
//! - `control_tree.rs`: where each mailbox's lock and control files are (the mailbox, or a
//!   separate control tree), opened without following symlinks.
//! - `capture.rs`: account-at-once capture, the listing check, bounded control-file reads.
//! - `watch.rs`: the stall watchdog's view of a running capture (heartbeat, locks held).
//! - `freeze.rs`: builds the snapshot after the locks are gone.
//! - `snapshot.rs`: the immutable image (no I/O).
//! - `pin.rs`: the pin budget: one fd per captured file (readable, or `O_PATH` where that is
//!   refused) keeps its inode alive.
//! - `view.rs`: the served view: the skeleton, and the working set of accounts captured on
//!   demand, evicted least recently used first.
//! - `source.rs`: opening captured files (pinned, or in SOURCE), re-finding renamed messages.
//! - `fs.rs`: the thin `fuser::Filesystem` adapter.
//! - `mount.rs`, `daemon.rs`, `umount.rs`, `runtime.rs`: the commands, detaching, state files.
//! - `options.rs`, `logging.rs`, `error.rs`: options, log sinks, the error type.
//! - `sys.rs`: the only `unsafe`.
#![deny(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod control_tree;
pub mod daemon;
pub mod error;
pub mod freeze;
pub mod fs;
pub mod lock;
pub mod logging;
pub mod maildir;
pub mod mount;
pub mod options;
pub mod pin;
pub mod readahead;
pub mod report;
pub mod runtime;
pub mod select;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod sys;
pub mod umount;
pub mod verify;
pub mod view;
pub mod watch;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
pub use options::MountOptions;
