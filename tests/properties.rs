//! Property tests of the parsers: they never panic on any input, and what they parse is what
//! was written.

use maildirfs::maildir::filename::{base_name, parse};
use maildirfs::maildir::uidlist::parse_uidlist;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn base_name_is_the_prefix_before_the_first_colon(name in proptest::collection::vec(any::<u8>(), 0..300)) {
        let base = base_name(&name);
        prop_assert!(name.starts_with(base));
        prop_assert!(!base.contains(&b':'));
        if base.len() < name.len() {
            prop_assert_eq!(name[base.len()], b':');
        }
    }

    #[test]
    fn flags_never_change_the_base(base in "[^:\n]{1,60}", flags in "[A-Za-z]{0,10}") {
        let named = format!("{base}:2,{flags}");
        prop_assert_eq!(base_name(named.as_bytes()), base.as_bytes());
    }

    #[test]
    fn filename_parser_never_panics(name in proptest::collection::vec(any::<u8>(), 0..300)) {
        let f = parse(&name);
        prop_assert_eq!(f.base, base_name(&name));
    }

    #[test]
    fn size_field_round_trips(
        unique in "[0-9]{10}\\.M[0-9]{1,6}P[0-9]{1,5}\\.[a-z]{1,10}",
        size in any::<u64>(),
        vsize in proptest::option::of(any::<u64>()),
        flags in proptest::option::of("[A-Za-z]{0,8}"),
    ) {
        let mut name = format!("{unique},S={size}");
        if let Some(w) = vsize {
            name.push_str(&format!(",W={w}"));
        }
        if let Some(f) = &flags {
            name.push_str(&format!(":2,{f}"));
        }
        let f = parse(name.as_bytes());
        prop_assert_eq!(f.size, Some(size));
        prop_assert_eq!(f.vsize, vsize);
        prop_assert_eq!(f.flags, flags.as_ref().map(|f| f.as_bytes()));
    }

    #[test]
    fn uidlist_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_uidlist(&bytes);
    }

    #[test]
    fn uidlist_parser_never_panics_on_near_valid_input(
        lines in proptest::collection::vec("[0-9 :VNGWa-z.,=\n]{0,40}", 0..20),
    ) {
        let text = format!("3 V1 N9\n{}", lines.join("\n"));
        let _ = parse_uidlist(text.as_bytes());
    }

    #[test]
    fn a_written_uidlist_parses_back(
        validity in 1u32..u32::MAX,
        gaps in proptest::collection::vec(1u32..1000, 0..50),
        names in proptest::collection::vec("[0-9]{10}\\.M[0-9]{1,6}P[0-9]{1,5}\\.[a-z]{1,10}(,S=[0-9]{1,6})?", 50),
    ) {
        let mut uid = 0u32;
        let mut text = String::new();
        let mut want = Vec::new();
        for (gap, name) in gaps.iter().zip(&names) {
            uid += gap;
            text.push_str(&format!("{uid} :{name}\n"));
            want.push((uid, name.clone()));
        }
        let text = format!("3 V{validity} N{} G00ff\n{text}", uid + 1);
        let list = parse_uidlist(text.as_bytes()).unwrap();
        prop_assert_eq!(list.uid_validity, validity);
        prop_assert_eq!(list.next_uid, uid + 1);
        let got: Vec<(u32, String)> = list
            .records
            .iter()
            .map(|r| (r.uid, String::from_utf8_lossy(&r.filename).into_owned()))
            .collect();
        prop_assert_eq!(got, want);
    }
}
