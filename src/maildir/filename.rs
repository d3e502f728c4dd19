//! The Maildir filename grammar: `<base>[:2,<flags>]`. The base name (everything before the
//! first `:`) is the message's identity for its whole life: flag changes and the `new/` ->
//! `cur/` move rename the file but keep the base (the Maildir spec says to preserve it, and
//! Dovecot's uidlist keys on it).

/// The separator between a message's base name and its info part (`MAILDIR_INFO_SEP`).
pub const INFO_SEP: u8 = b':';

/// The base name of a message file name: the bytes before the first `:`.
pub fn base_name(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == INFO_SEP) {
        Some(i) => &name[..i],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"1700000000.M1P2.host,S=10:2,S",
                b"1700000000.M1P2.host,S=10",
            ),
            (b"1700000000.M1P2.host", b"1700000000.M1P2.host"),
            (b"1700000000.M1P2.host:2,", b"1700000000.M1P2.host"),
            (b":2,S", b""),
            (b"a:b:c", b"a"),
            (b"bad\xff:2,S", b"bad\xff"),
        ];
        for (name, want) in cases {
            assert_eq!(base_name(name), *want, "name {name:?}");
        }
    }
}
