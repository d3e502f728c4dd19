//! Maildir knowledge: the filename grammar, which names the image hides, which files are
//! control files, and where the mailboxes and accounts of a tree are.
//!
//! `filename` and `names` are pure functions over bytes and never touch the disk; `discover`
//! reads directories (and nothing else) to find the accounts.

pub(crate) mod control;
pub mod discover;
pub mod filename;
pub(crate) mod names;
pub(crate) mod select;
pub mod uidlist;

pub use discover::{Account, Discovery, discover, discover_account};
