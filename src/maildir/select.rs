//! Account selection: `--include GLOB` and `--exclude GLOB`, matched against paths relative to
//! SOURCE one component at a time (`*` and `?` never match `/`; `[...]` classes; `\` quotes).
//!
//! A path is in the view when it or one of its parent directories matches an include (or no
//! include is given) and neither it nor any parent matches an exclude. The directories on the
//! way down to an included path are shown too, holding only that way down. So
//! `--include 'example.org/*'` is every account of one domain, `--include example.org/bob` one
//! account with everything in its directory, `--exclude '*/spam*'` leaves some out.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Whether a path is in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// In the view, with everything below it that no exclude removes.
    Shown,
    /// Only a directory on the way to something shown: its other entries are left out.
    Ancestor,
    /// Not in the view.
    Hidden,
}

/// One `--include` or `--exclude` pattern, split into components.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    parts: Vec<Vec<u8>>,
}

/// The `--include` and `--exclude` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Selection {
    /// Adds an `--include` pattern; a usage error if it is absolute, empty or holds `..`.
    pub fn include(&mut self, glob: &str) -> Result<(), String> {
        self.include.push(pattern(glob, "--include")?);
        Ok(())
    }

    /// Adds an `--exclude` pattern; a usage error if it is absolute, empty or holds `..`.
    pub fn exclude(&mut self, glob: &str) -> Result<(), String> {
        self.exclude.push(pattern(glob, "--exclude")?);
        Ok(())
    }

    /// Whether every path is shown (no pattern given).
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Where `rel` (relative to SOURCE; empty for SOURCE itself) stands.
    pub fn visibility(&self, rel: &Path) -> Visibility {
        if self.is_all() {
            return Visibility::Shown;
        }
        let comps: Vec<&[u8]> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.as_bytes()),
                _ => None,
            })
            .collect();
        if self.exclude.iter().any(|p| p.matches_prefix_of(&comps)) {
            return Visibility::Hidden;
        }
        if self.include.is_empty() || self.include.iter().any(|p| p.matches_prefix_of(&comps)) {
            return Visibility::Shown;
        }
        if self.include.iter().any(|p| p.may_lead_to(&comps)) {
            return Visibility::Ancestor;
        }
        Visibility::Hidden
    }
}

fn pattern(glob: &str, flag: &str) -> Result<Pattern, String> {
    let trimmed = glob.trim_end_matches('/');
    let parts: Vec<Vec<u8>> = trimmed
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(|p| p.as_bytes().to_vec())
        .collect();
    if glob.starts_with('/') || parts.is_empty() || parts.iter().any(|p| p == b"..") {
        return Err(format!(
            "{flag} {glob:?}: give a pattern relative to SOURCE, without '..'"
        ));
    }
    Ok(Pattern { parts })
}

impl Pattern {
    /// Whether `comps` or one of its leading parts matches the whole pattern.
    fn matches_prefix_of(&self, comps: &[&[u8]]) -> bool {
        comps.len() >= self.parts.len()
            && self.parts.iter().zip(comps).all(|(p, c)| glob_match(p, c))
    }

    /// Whether `comps` is shorter than the pattern and matches its leading parts, so that
    /// something below it may match.
    fn may_lead_to(&self, comps: &[&[u8]]) -> bool {
        comps.len() < self.parts.len()
            && self.parts.iter().zip(comps).all(|(p, c)| glob_match(p, c))
    }
}

/// Matches one path component against one glob component: `*` any bytes, `?` one byte,
/// `[abc]`, `[a-z]`, `[!x]` or `[^x]` a class, `\c` the byte `c`.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point: the last `*` and where its match would grow.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pat, p, s[i]),
            Some(b'\\') if p + 1 < pat.len() => (pat[p + 1] == s[i]).then_some(p + 2),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the class starting at `pat[open] == b'['`; returns the index after
/// the class if it matches. An unclosed `[` is a literal.
fn class(pat: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut j = open + 1;
    let negate = matches!(pat.get(j), Some(b'!' | b'^'));
    if negate {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    while j < pat.len() && (pat[j] != b']' || first) {
        first = false;
        let lo = pat[j];
        if pat.get(j + 1) == Some(&b'-') && pat.get(j + 2).is_some_and(|&h| h != b']') {
            hit |= lo <= c && c <= pat[j + 2];
            j += 3;
        } else {
            hit |= lo == c;
            j += 1;
        }
    }
    if j >= pat.len() {
        // No closing bracket: `[` stands for itself.
        return (c == b'[').then_some(open + 1);
    }
    (hit != negate).then_some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let yes: &[(&str, &str)] = &[
            ("*", "bob"),
            ("*", ".Sent"),
            ("b?b", "bob"),
            ("[ab]*", "alice"),
            ("[a-c]ob", "bob"),
            ("[!x]ob", "bob"),
            ("a\\*", "a*"),
            ("*.org", "example.org"),
            ("*a*b*", "xxaxxbxx"),
            ("[", "["),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} {s}");
        }
        let no: &[(&str, &str)] = &[
            ("b?b", "bb"),
            ("[!b]ob", "bob"),
            ("a\\*", "ab"),
            ("*.org", "example.com"),
            ("*a*b", "xxaxxbxxc"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} {s}");
        }
    }

    #[test]
    fn visibility_of_paths() {
        let mut s = Selection::default();
        assert_eq!(s.visibility(Path::new("a/b")), Visibility::Shown);
        s.include("example.org/*").unwrap();
        s.exclude("*/spam*").unwrap();
        let v = |p: &str| s.visibility(Path::new(p));
        assert_eq!(v(""), Visibility::Ancestor);
        assert_eq!(v("example.org"), Visibility::Ancestor);
        assert_eq!(v("example.org/bob"), Visibility::Shown);
        assert_eq!(v("example.org/bob/Maildir/cur"), Visibility::Shown);
        assert_eq!(v("example.org/spammer"), Visibility::Hidden);
        assert_eq!(v("example.org/spammer/Maildir"), Visibility::Hidden);
        assert_eq!(v("example.com"), Visibility::Hidden);
        assert!(s.include("/abs").is_err());
        assert!(s.exclude("a/../b").is_err());
        assert!(s.include("").is_err());
    }
}
