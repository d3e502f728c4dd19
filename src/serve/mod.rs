//! Serving the image: what each request is answered, without FUSE (`served`), the thin
//! `fuser::Filesystem` adapter over it (`fs`), the bytes read from
//! SOURCE through pins or names found again (`source`), read-ahead of the files a backup
//! reads next (`readahead`), the live counters (`counters`) and the FUSE session (`session`).
//!
//! Stands on `image` (what to show) and `sys`.

pub mod counters;
pub mod fs;
pub mod readahead;
pub mod served;
pub mod session;
pub mod source;
