//! maildirfs captures a live Maildir tree under Dovecot's locks and serves the captured image
//! as a frozen, read-only FUSE filesystem, so that rsync, restic, borg or tar copy one
//! consistent instant of every account while Dovecot, Postfix and mail clients keep working.
//!
//! The data flows one way: **discover** the accounts and mailboxes under SOURCE
//! ([`mod@maildir::discover`]), **lock** every mailbox of an account at once with Dovecot's
//! `dovecot-uidlist.lock` (`capture::lock`), **capture** control files and the
//! `new/`/`cur/` listings under those locks with a listing check ([`capture::account`]),
//! **freeze** the rest of the tree into an immutable `image::snapshot::Snapshot` after the
//! locks are released (`image::freeze`), hold the accounts' snapshots in a bounded working
//! set that captures an account when it is first needed (`image::view`), and **serve** it
//! read-only over FUSE (`serve::fs`, reading bytes through `serve::source`).
//!
//! # Layout
//! One folder a stage, in the order the data flows; a module uses only the stages above it
//! and the two at the bottom (`error`, `sys`):
//! - `maildir/`: what a Maildir tree is: the filename grammar, the names the image hides,
//!   control files and where Dovecot keeps them, `--include`/`--exclude`, discovery.
//! - `capture/`: the Dovecot dotlock as an RAII guard and the registry a stop signal
//!   releases (`lock`), where each mailbox's lock and control files are (`control_tree`),
//!   account-at-once capture with the listing check (`account`), the pin budget (`pin`), the
//!   stall watchdog's view of a capture (`watch`), the parallel workers (`workers`).
//! - `image/`: the immutable snapshot (`snapshot`, no I/O), freezing the captured listings and
//!   the tree around them into one (`freeze`), the served view and its working set of
//!   accounts captured on demand (`view`), and building a mount's view from a plan (`build`).
//! - `serve/`: the thin `fuser::Filesystem` adapter (`fs`) over the view and the bytes read
//!   from SOURCE (`source`), read-ahead (`readahead`), the live counters (`counters`), the
//!   mounted session (`session`).
//! - `admin/`: the command line (`cli`, `options`), the mount command that drives the flow
//!   (`mount`), its summary and report (`summary`, `report`), detaching (`daemon`), state
//!   files (`runtime`), `status`, `umount`, `verify`, log sinks (`logging`).
//! - `error.rs`: the error type, which carries the path; `sys.rs`: the only `unsafe`.
//!
//! Public are what the binary, the integration tests and the benchmarks call: `admin` (the
//! commands), `capture` and `maildir` (the Dovecot tests capture accounts directly), `sys`
//! and `error`; `image` and `serve`, and each stage's internals, are private to the crate.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod capture;
pub mod error;
pub(crate) mod image;
pub mod maildir;
pub(crate) mod serve;
pub mod sys;

#[cfg(test)]
pub(crate) mod testutil;

pub use admin::options::MountOptions;
pub use error::{Error, Result};
