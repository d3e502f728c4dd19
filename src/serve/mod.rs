//! Serving the image: the thin `fuser::Filesystem` adapter (`fs`), the bytes read from
//! SOURCE through pins or names found again (`source`), read-ahead of the files a backup
//! reads next (`readahead`), the live counters (`counters`) and the FUSE session (`session`).
//!
//! Stands on `image` (what to show) and `sys`.

pub mod counters;
pub mod fs;
pub mod readahead;
pub mod session;
pub mod source;
