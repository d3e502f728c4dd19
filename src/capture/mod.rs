//! Capture: an account's mailboxes locked at once with Dovecot's `dovecot-uidlist.lock`,
//! their control files read and their `new/` and `cur/` listed under the locks with the
//! listing check, every captured file pinned by an fd, and the accounts of a tree captured in
//! parallel under a stall watchdog.
//!
//! Stands on `maildir` (what a mailbox is, which names are control files) and `sys`; knows
//! nothing of the image or of FUSE.

pub mod account;
pub(crate) mod control_tree;
pub(crate) mod lock;
pub mod pin;
pub mod watch;
pub(crate) mod workers;

pub use account::*;
