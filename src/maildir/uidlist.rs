//! The `dovecot-uidlist` grammar (Dovecot 2.3 `maildir-uidlist.c`), parsed from bytes; never
//! touches the disk. maildirfs serves the file as the bytes read under the lock and never needs
//! to understand it to do that; the parser is for checking a tree (a copy, a restore).
//!
//! - Version 3: header `3 V<uidvalidity> N<nextuid> [G<guid>] [<key><value> ...]`, records
//!   `<uid> [<key><value> ...] :<filename>`.
//! - Version 1 (and Courier's `courierimapuiddb`): header `1 <uidvalidity> <nextuid>`, records
//!   `<uid> <filename>`.
//! - A last line without its newline is a write in progress (Dovecot appends in place) and is
//!   not parsed, as Dovecot does not parse it.

/// A parsed uidlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    /// The format version: 1 or 3, the only ones parsed.
    pub version: u8,
    /// The mailbox's UIDVALIDITY (the `V` key in version 3, never 0 there).
    pub uid_validity: u32,
    /// The UID the next message will get (the `N` key in version 3).
    pub next_uid: u32,
    /// The mailbox GUID (`G` key, version 3).
    pub guid: Option<Vec<u8>>,
    /// The records in file order, their UIDs increasing.
    pub records: Vec<Record>,
}

/// One message: its UID and its file's base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The message's UID, above the previous record's.
    pub uid: u32,
    /// The file name that ends the record (after the ` :` in version 3).
    pub filename: Vec<u8>,
}

/// Why a uidlist does not parse; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidlistError {
    /// No complete line: an empty file, or one whose only line is still being written.
    Empty,
    /// The first line is no header: no version number, a field missing or not a number, or a
    /// version 3 header without its UIDVALIDITY.
    BadHeader,
    /// A version other than 1 and 3: the number found.
    UnsupportedVersion(u8),
    /// A record without its UID, its separator or its file name.
    BadRecord {
        /// The record's line, counting from 1.
        line: usize,
    },
    /// A UID of 0, or one not above the previous record's.
    UidsNotIncreasing {
        /// The record's line, counting from 1.
        line: usize,
    },
}

impl std::fmt::Display for UidlistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UidlistError::Empty => f.write_str("empty"),
            UidlistError::BadHeader => f.write_str("bad header line"),
            UidlistError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            UidlistError::BadRecord { line } => write!(f, "bad record on line {line}"),
            UidlistError::UidsNotIncreasing { line } => {
                write!(f, "UID not above the previous one on line {line}")
            }
        }
    }
}

fn number(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses a uidlist's bytes.
pub fn parse_uidlist(bytes: &[u8]) -> Result<Uidlist, UidlistError> {
    // Only complete lines: a torn last line is an append in progress.
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..i],
        None => return Err(UidlistError::Empty),
    };
    let mut lines = complete.split(|&b| b == b'\n');
    let header = lines.next().ok_or(UidlistError::Empty)?;
    let mut fields = header.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let version = fields
        .next()
        .and_then(number)
        .ok_or(UidlistError::BadHeader)?;
    let mut list = Uidlist {
        version: u8::try_from(version).map_err(|_| UidlistError::BadHeader)?,
        uid_validity: 0,
        next_uid: 0,
        guid: None,
        records: Vec::new(),
    };
    match list.version {
        1 => {
            list.uid_validity = fields
                .next()
                .and_then(number)
                .ok_or(UidlistError::BadHeader)?;
            list.next_uid = fields
                .next()
                .and_then(number)
                .ok_or(UidlistError::BadHeader)?;
        }
        3 => {
            for f in fields {
                let (key, value) = (f[0], &f[1..]);
                match key {
                    b'V' => list.uid_validity = number(value).ok_or(UidlistError::BadHeader)?,
                    b'N' => list.next_uid = number(value).ok_or(UidlistError::BadHeader)?,
                    b'G' => list.guid = Some(value.to_vec()),
                    // Unknown keys are kept by Dovecot and mean nothing here.
                    _ => {}
                }
            }
            if list.uid_validity == 0 {
                return Err(UidlistError::BadHeader);
            }
        }
        v => return Err(UidlistError::UnsupportedVersion(v)),
    }
    let mut last = 0u32;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if line.is_empty() {
            continue;
        }
        let bad = || UidlistError::BadRecord { line: n };
        let space = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let uid = number(&line[..space]).ok_or_else(bad)?;
        let rest = &line[space + 1..];
        let filename = if list.version == 3 {
            // Extension fields, then " :" and the file name (which may hold anything but LF).
            let colon = if rest.first() == Some(&b':') {
                0
            } else {
                rest.windows(2).position(|w| w == b" :").ok_or_else(bad)? + 1
            };
            &rest[colon + 1..]
        } else {
            rest
        };
        if filename.is_empty() {
            return Err(bad());
        }
        if uid == 0 || uid <= last {
            return Err(UidlistError::UidsNotIncreasing { line: n });
        }
        last = uid;
        list.records.push(Record {
            uid,
            filename: filename.to_vec(),
        });
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_3() {
        let text = b"3 V1275660208 N25022 G3085f01b\n\
                     25017 :1275660208.M1P1.host,S=10\n\
                     25018 W1234 :1275660209.M2P2.host\n\
                     25019 :1275660210.M3P3.ho";
        let l = parse_uidlist(text).unwrap();
        assert_eq!(
            (l.version, l.uid_validity, l.next_uid),
            (3, 1_275_660_208, 25_022)
        );
        assert_eq!(l.guid.as_deref(), Some(&b"3085f01b"[..]));
        // The torn last line is not parsed.
        assert_eq!(l.records.len(), 2);
        assert_eq!(l.records[1].uid, 25_018);
        assert_eq!(l.records[1].filename, b"1275660209.M2P2.host");
    }

    #[test]
    fn parses_version_1() {
        let l = parse_uidlist(b"1 100 3\n1 a.b.c\n2 d.e.f\n").unwrap();
        assert_eq!(
            (l.version, l.uid_validity, l.next_uid, l.records.len()),
            (1, 100, 3, 2)
        );
        assert_eq!(l.records[1].filename, b"d.e.f");
    }

    #[test]
    fn rejects_what_dovecot_rejects() {
        let cases: &[(&[u8], UidlistError)] = &[
            (b"", UidlistError::Empty),
            (b"3 V1 N2", UidlistError::Empty),
            (b"x\n", UidlistError::BadHeader),
            (b"2 V1 N2\n", UidlistError::UnsupportedVersion(2)),
            (b"3 N2\n", UidlistError::BadHeader),
            (
                b"3 V1 N5\n2 :a\n1 :b\n",
                UidlistError::UidsNotIncreasing { line: 3 },
            ),
            (b"3 V1 N5\nx :a\n", UidlistError::BadRecord { line: 2 }),
            (b"3 V1 N5\n1 a\n", UidlistError::BadRecord { line: 2 }),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_uidlist(input).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
