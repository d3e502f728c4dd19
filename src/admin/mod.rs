//! What the admin runs: the command line, the mount command that drives the flow and
//! detaches, the state files `status` and `umount` read, the report and summary line,
//! `verify`, and where the log goes.
//!
//! Stands on every stage above it; nothing above imports from here.

pub mod cli;
pub(crate) mod daemon;
pub(crate) mod logging;
pub mod mount;
pub mod options;
pub mod report;
pub(crate) mod runtime;
pub mod status;
pub(crate) mod summary;
pub mod umount;
pub mod verify;
