//! Any bytes as a message file name (users choose them): parsing never panics, the base is a
//! prefix without a colon, and a size is only found after a `,S=`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maildirfs::maildir::filename::{base_name, parse};

fuzz_target!(|name: &[u8]| {
    let f = parse(name);
    assert_eq!(f.base, base_name(name));
    assert!(name.starts_with(f.base));
    assert!(!f.base.contains(&b':'));
    if f.size.is_some() {
        assert!(f.base.windows(3).any(|w| w == b",S="));
    }
});
