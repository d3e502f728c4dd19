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

/// A message file name taken apart: `<base>[:2,<flags>]`, where the base may carry Dovecot's
/// `,S=<size>` (the file's size) and `,W=<vsize>` (the size with CRLF line ends) fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filename<'a> {
    /// The base name: everything before the first `:` (see [`base_name`]).
    pub base: &'a [u8],
    /// `,S=` from the base: what the file's size must be.
    pub size: Option<u64>,
    /// `,W=` from the base.
    pub vsize: Option<u64>,
    /// The flag letters after `:2,` (`None` without an info part, or with one that is not
    /// version 2).
    pub flags: Option<&'a [u8]>,
}

/// Parses a message file name. Never fails: a name that does not follow the grammar has no
/// size and no flags.
pub fn parse(name: &[u8]) -> Filename<'_> {
    let base = base_name(name);
    let info = name.get(base.len() + 1..);
    let flags = info.and_then(|i| i.strip_prefix(b"2,"));
    // The fields follow the first ',' of the base; the unique part before it may hold none.
    let mut size = None;
    let mut vsize = None;
    for field in base.split(|&b| b == b',').skip(1) {
        if let Some(v) = field.strip_prefix(b"S=") {
            size = size.or(number(v));
        } else if let Some(v) = field.strip_prefix(b"W=") {
            vsize = vsize.or(number(v));
        }
    }
    Filename {
        base,
        size,
        vsize,
        flags,
    }
}

/// A decimal number of ASCII digits only, without overflow.
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_flags() {
        let f = parse(b"1700000000.M1P2.host,S=1234,W=1260:2,RS");
        assert_eq!(f.base, b"1700000000.M1P2.host,S=1234,W=1260");
        assert_eq!(f.size, Some(1234));
        assert_eq!(f.vsize, Some(1260));
        assert_eq!(f.flags, Some(&b"RS"[..]));
        let f = parse(b"1700000000.M1P2.host");
        assert_eq!((f.size, f.vsize, f.flags), (None, None, None));
        let f = parse(b"x,S=12a,S=99999999999999999999999:1,foo");
        assert_eq!((f.size, f.flags), (None, None));
        assert_eq!(parse(b"x,S=7:2,").flags, Some(&b""[..]));
    }

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
