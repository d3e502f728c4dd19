//! The image: what was captured, frozen. `freeze` turns an account's captured listings (and
//! the tree around the accounts) into an immutable [`snapshot::Snapshot`] after the locks are
//! released; `view` holds the skeleton and a bounded working set of account snapshots,
//! capturing an account when it is first needed; `build` makes the view a mount serves from
//! a capture plan.
//!
//! Stands on `capture` and `maildir`; knows nothing of FUSE.

pub mod build;
pub mod freeze;
pub mod snapshot;
pub mod view;
