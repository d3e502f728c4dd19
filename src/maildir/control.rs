//! Separate control trees: where Dovecot keeps each mailbox's `dovecot-uidlist`, its lock and
//! its keywords when they are not in the Maildir (2.3's `CONTROL=` in `mail_location`, 2.4's
//! `mail_control_path`). Dovecot then never looks at a uidlist or lock inside the Maildir, so
//! maildirfs must lock and read the ones in the control tree, or its locks keep nobody out and
//! its image has no UIDs.
//!
//! Dovecot expands the template per user (`%d` the domain, `%n` the user name without it,
//! `%u` both, `~` the home); maildirfs has no userdb and takes them from the account's place in
//! SOURCE: `%n` is the account directory's name, or its parent's when the account directory is
//! called `Maildir` (`/var/vmail/%d/%n/Maildir` and `/var/vmail/%d/%n` both work), `%d` the
//! directory above that, `~` the directory holding `Maildir`.
//!
//! Within an account's control directory (Maildir++ layout, the default), INBOX's files are in
//! `.INBOX/` and a folder's in its own name (`.Archive/`); `subscriptions` is in the control
//! directory itself (mailbox-list-maildir.c, maildir-uidlist.c).
//!
//! Pure functions over paths and strings: nothing here touches the disk, except
//! [`from_doveconf`], which asks Dovecot.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where INBOX's control files are in an account's control directory.
pub const INBOX_DIR: &str = ".INBOX";

/// A parsed control-tree template, e.g. `/var/vmail/control/%d/%n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Vec<u8>),
    /// `%d`, `%{user | domain}`.
    Domain,
    /// `%n`, `%{user | username}`.
    Name,
    /// `%u`, `%{user}`: `%n@%d`.
    User,
    /// A leading `~` or `%h`, `%{home}`.
    Home,
}

impl std::str::FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Template, String> {
        let bad = |why: &str| format!("control directory {s:?}: {why}");
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut rest = s;
        if let Some(r) = rest.strip_prefix('~') {
            parts.push(Part::Home);
            rest = r;
        }
        while let Some(c) = rest.chars().next() {
            if c != '%' {
                lit.extend_from_slice(c.to_string().as_bytes());
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let (var, after) = variable(&rest[1..]).ok_or_else(|| {
                bad("unknown variable (known: %d %n %u %h ~, %{user | domain}, %{user | username}, %{user}, %{home})")
            })?;
            rest = after;
            if var == Part::Lit(b"%".to_vec()) {
                lit.push(b'%');
                continue;
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            if var == Part::Home && !parts.is_empty() {
                return Err(bad("the home can only begin the path"));
            }
            parts.push(var);
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        let t = Template {
            text: s.to_owned(),
            parts,
        };
        if t.parts.first() != Some(&Part::Home) && !s.starts_with('/') {
            return Err(bad("must be an absolute path, or begin with ~"));
        }
        if t.parts
            .iter()
            .any(|p| matches!(p, Part::Lit(l) if l.contains(&0)))
        {
            return Err(bad("contains a NUL byte"));
        }
        Ok(t)
    }
}

/// One variable after a `%`: the part and what follows it. 2.3 spells `%d`, `%n`, `%u`, `%h`
/// (and `%Ld` lower-cased, which a store laid out by domain already is); 2.4 `%{user | domain}`
/// and `%{user | username}`, with any spaces.
fn variable(s: &str) -> Option<(Part, &str)> {
    let mut chars = s.chars();
    match chars.next()? {
        '%' => Some((Part::Lit(b"%".to_vec()), chars.as_str())),
        'd' => Some((Part::Domain, chars.as_str())),
        'n' => Some((Part::Name, chars.as_str())),
        'u' => Some((Part::User, chars.as_str())),
        'h' => Some((Part::Home, chars.as_str())),
        'L' => variable(chars.as_str()).filter(|(p, _)| *p != Part::Home),
        '{' => {
            let end = s.find('}')?;
            let inner: String = s[1..end].chars().filter(|c| !c.is_whitespace()).collect();
            let part = match inner.as_str() {
                "user|domain" | "domain" => Part::Domain,
                "user|username" | "username" => Part::Name,
                "user" => Part::User,
                "home" => Part::Home,
                _ => return None,
            };
            Some((part, &s[end + 1..]))
        }
        _ => None,
    }
}

/// What an account's place in SOURCE says of its user: `%n`, `%d` and the home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `%n`: the account directory's name, or its parent's when it is called `Maildir`.
    pub name: OsString,
    /// `%d`: the name of the directory above that (`None` at the filesystem's root).
    pub domain: Option<OsString>,
    /// The directory holding `Maildir`, when the account directory is called so.
    pub home: Option<PathBuf>,
}

impl Identity {
    /// From the account directory's absolute path.
    pub fn of(account_dir: &Path) -> Option<Identity> {
        let last = account_dir.file_name()?;
        let (user_dir, home) = if last == "Maildir" {
            let parent = account_dir.parent()?;
            (parent, Some(parent.to_path_buf()))
        } else {
            (account_dir, None)
        };
        Some(Identity {
            name: user_dir.file_name()?.to_owned(),
            domain: user_dir
                .parent()
                .and_then(Path::file_name)
                .map(OsStr::to_owned),
            home,
        })
    }
}

impl Template {
    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The directory the template names for every account alike: its text before the first
    /// variable, up to the last `/` (e.g. `/var/vmail/control` of `/var/vmail/control/%d/%n`).
    /// `None` for a template that begins with the home.
    pub fn base(&self) -> Option<PathBuf> {
        let Some(Part::Lit(first)) = self.parts.first() else {
            return None;
        };
        if self.parts.len() == 1 {
            return Some(PathBuf::from(OsString::from_vec(first.clone())));
        }
        let cut = first.iter().rposition(|&b| b == b'/')?;
        let base = if cut == 0 { &first[..1] } else { &first[..cut] };
        Some(PathBuf::from(OsStr::from_bytes(base)))
    }

    /// The control directory of the account whose directory is `account_dir` (absolute).
    pub fn expand(&self, account_dir: &Path) -> Result<PathBuf, String> {
        let id = Identity::of(account_dir).ok_or_else(|| {
            format!(
                "{}: no user name in this path for {}",
                crate::error::escape_path(account_dir),
                self.text
            )
        })?;
        let domain = || {
            id.domain.as_ref().ok_or_else(|| {
                format!(
                    "{}: no domain directory above it for {}",
                    crate::error::escape_path(account_dir),
                    self.text
                )
            })
        };
        let mut out = Vec::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Name => out.extend_from_slice(id.name.as_bytes()),
                Part::Domain => out.extend_from_slice(domain()?.as_bytes()),
                Part::User => {
                    out.extend_from_slice(id.name.as_bytes());
                    if let Some(d) = &id.domain {
                        out.push(b'@');
                        out.extend_from_slice(d.as_bytes());
                    }
                }
                Part::Home => {
                    let home = id.home.as_ref().ok_or_else(|| {
                        format!(
                            "{}: the home is known only for an account directory called \
                             Maildir; give the control directory as an absolute path",
                            crate::error::escape_path(account_dir)
                        )
                    })?;
                    out.extend_from_slice(home.as_os_str().as_bytes());
                }
            }
        }
        let path = PathBuf::from(OsString::from_vec(out));
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(format!(
                "{}: control directory {} has a .. component",
                crate::error::escape_path(account_dir),
                crate::error::escape_path(&path)
            ));
        }
        Ok(path)
    }
}

/// Where a mailbox's control files are within its account's control directory, from the
/// mailbox's path below the account's root (empty for INBOX).
pub fn mailbox_dir(below_account: &Path) -> PathBuf {
    if below_account.as_os_str().is_empty() {
        PathBuf::from(INBOX_DIR)
    } else {
        below_account.to_path_buf()
    }
}

/// What Dovecot's own configuration says, when `doveconf` is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Where Dovecot keeps the mail (`maildir:` location or `mail_path`), unexpanded.
    pub mail_path: String,
    /// `mail_home`, where set: what a home-relative mail path (`~/Maildir`) is relative to.
    pub mail_home: Option<String>,
    /// Its control template, if one is set.
    pub control: Option<String>,
}

/// Asks `doveconf` for the mail settings: 2.4's `mail_driver`/`mail_path`/`mail_control_path`,
/// else 2.3's `mail_location`. `None` when doveconf is missing, fails, or the storage is not
/// Maildir.
pub fn from_doveconf() -> Option<Learned> {
    // One call for both versions: each prints `key = value` for the settings it knows and
    // passes over the others (`-h` would refuse a 2.4 setting that is set in more than one
    // filter).
    let out = Command::new("doveconf")
        .args([
            "mail_location",
            "mail_driver",
            "mail_path",
            "mail_control_path",
            "mail_home",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_doveconf(&String::from_utf8_lossy(&out.stdout))
}

/// The mail settings of `doveconf KEY...` output: top-level `key = value` lines.
pub fn parse_doveconf(text: &str) -> Option<Learned> {
    let mut depth = 0usize;
    let mut get = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with('{') {
            depth += 1;
        } else if line == "}" {
            depth = depth.saturating_sub(1);
        } else if depth == 0 {
            if let Some((k, v)) = line
                .split_once(" = ")
                .or_else(|| line.strip_suffix(" =").map(|k| (k, "")))
            {
                get.insert(k.trim(), v.trim());
            }
        }
    }
    let mail_home = get
        .get("mail_home")
        .filter(|h| !h.is_empty())
        .map(|h| h.to_string());
    if let Some(location) = get.get("mail_location").filter(|l| !l.is_empty()) {
        return parse_location(location).map(|l| Learned { mail_home, ..l });
    }
    if get.get("mail_driver").copied() != Some("maildir") {
        return None;
    }
    Some(Learned {
        mail_path: get.get("mail_path")?.to_string(),
        mail_home,
        control: get
            .get("mail_control_path")
            .filter(|c| !c.is_empty())
            .map(|c| c.to_string()),
    })
}

/// Splits a 2.3 `mail_location` (`maildir:PATH:KEY=VALUE:...`, `::` a literal colon).
pub fn parse_location(location: &str) -> Option<Learned> {
    let rest = location.strip_prefix("maildir:")?;
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' {
            if chars.peek() == Some(&':') {
                chars.next();
                field.push(':');
            } else {
                fields.push(std::mem::take(&mut field));
            }
        } else {
            field.push(c);
        }
    }
    fields.push(field);
    let mut fields = fields.into_iter();
    let mail_path = fields.next()?;
    let control = fields.find_map(|f| f.strip_prefix("CONTROL=").map(str::to_owned));
    Some(Learned {
        mail_path,
        mail_home: None,
        control,
    })
}

impl Learned {
    /// Whether this configuration's control template can be taken for SOURCE: an absolute
    /// mail path (or a home-relative one under an absolute `mail_home`) must, up to its first
    /// variable, lie in SOURCE or SOURCE in it (a copy of the store elsewhere must not have
    /// the live control tree's files served as its own). Homes from the userdb cannot be told
    /// without it, so with a home-relative mail path and no `mail_home`, only a home-relative
    /// control template, which follows the tree, is taken.
    pub fn describes(&self, source: &Path) -> bool {
        let home = |p: &str| -> Option<String> {
            ["~", "%h", "%{home}"]
                .iter()
                .find_map(|h| p.strip_prefix(h))
                .map(str::to_owned)
        };
        let mut path = self.mail_path.clone();
        if let Some(rest) = home(&path) {
            match self.mail_home.as_deref().filter(|h| h.starts_with('/')) {
                Some(h) => path = format!("{h}{rest}"),
                None => return self.control.as_deref().and_then(home).is_some(),
            }
        }
        let path = path.as_str();
        let fixed = path.find('%').map_or(path, |i| &path[..i]);
        let fixed = Path::new(fixed.rsplit_once('/').map_or(fixed, |(a, _)| a));
        !fixed.as_os_str().is_empty() && (source.starts_with(fixed) || fixed.starts_with(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        s.parse().unwrap()
    }

    #[test]
    fn expands_from_the_accounts_place() {
        let by_domain = t("/var/vmail/control/%d/%n");
        for dir in [
            "/var/vmail/example.org/alice/Maildir",
            "/var/vmail/example.org/alice",
        ] {
            assert_eq!(
                by_domain.expand(Path::new(dir)).unwrap(),
                Path::new("/var/vmail/control/example.org/alice")
            );
        }
        assert_eq!(
            t("/c/%u").expand(Path::new("/v/example.org/bob")).unwrap(),
            Path::new("/c/bob@example.org")
        );
        assert_eq!(
            t("~/control")
                .expand(Path::new("/v/d/bob/Maildir"))
                .unwrap(),
            Path::new("/v/d/bob/control")
        );
        assert_eq!(
            t("%h/control")
                .expand(Path::new("/v/d/bob/Maildir"))
                .unwrap(),
            Path::new("/v/d/bob/control")
        );
    }

    #[test]
    fn accepts_dovecot_24_spellings() {
        let a = t("/c/%{user | domain}/%{user|username}");
        let b = t("/c/%d/%n");
        let dir = Path::new("/v/example.org/alice/Maildir");
        assert_eq!(a.expand(dir).unwrap(), b.expand(dir).unwrap());
        assert_eq!(
            t("/c/%{user}").expand(dir).unwrap(),
            Path::new("/c/alice@example.org")
        );
        assert_eq!(t("/c/%Ld/%Ln").expand(dir).unwrap(), b.expand(dir).unwrap());
        assert_eq!(
            t("/c/100%%/%n").expand(dir).unwrap(),
            Path::new("/c/100%/alice")
        );
    }

    #[test]
    fn refuses_what_it_cannot_place() {
        for bad in [
            "control/%n",
            "/c/%x",
            "/c/%{user | lower}",
            "/c/%n/~/x/%h",
            "/c/%",
        ] {
            assert!(bad.parse::<Template>().is_err(), "{bad}");
        }
        // The home only of a directory called Maildir; a domain only below one.
        assert!(t("~/c").expand(Path::new("/v/d/bob")).is_err());
        assert!(t("/c/%d/%n").expand(Path::new("/bob")).is_err());
        assert!(t("/c/%n").expand(Path::new("/v/..")).is_err());
    }

    #[test]
    fn base_is_the_fixed_directory() {
        assert_eq!(
            t("/var/vmail/control/%d/%n").base(),
            Some("/var/vmail/control".into())
        );
        assert_eq!(t("/ctl-%d/%n").base(), Some("/".into()));
        assert_eq!(t("/c/fixed").base(), Some("/c/fixed".into()));
        assert_eq!(t("~/control").base(), None);
    }

    #[test]
    fn inbox_is_in_dot_inbox() {
        assert_eq!(mailbox_dir(Path::new("")), Path::new(".INBOX"));
        assert_eq!(mailbox_dir(Path::new(".Archive")), Path::new(".Archive"));
    }

    #[test]
    fn reads_doveconf_of_both_versions() {
        let v24 = "mail_driver = maildir\nmail_path = /v/%{user | domain}/%{user | username}/Maildir\n\
                   mail_control_path = /c/%{user | domain}/%{user | username}\n";
        let l = parse_doveconf(v24).unwrap();
        assert_eq!(
            l.mail_path,
            "/v/%{user | domain}/%{user | username}/Maildir"
        );
        assert_eq!(
            l.control.as_deref(),
            Some("/c/%{user | domain}/%{user | username}")
        );
        let none = "mail_driver = maildir\nmail_path = ~/Maildir\nmail_control_path = \n";
        assert_eq!(parse_doveconf(none).unwrap().control, None);
        assert!(parse_doveconf("mail_driver = mbox\nmail_path = %{home}/mail\n").is_none());
        let v23 = "mail_location = maildir:~/Maildir:CONTROL=~/control\n";
        assert_eq!(
            parse_doveconf(v23).unwrap().control.as_deref(),
            Some("~/control")
        );
        let filtered =
            "namespace inbox {\n  mail_path = /x\n}\nmail_driver = maildir\nmail_path = /v/%n\n";
        assert_eq!(parse_doveconf(filtered).unwrap().mail_path, "/v/%n");
    }

    #[test]
    fn reads_a_23_location() {
        let l = parse_location("maildir:/var/vmail/%d/%n/Maildir:CONTROL=/c/%d/%n:INDEX=/i/%d/%n")
            .unwrap();
        assert_eq!(l.mail_path, "/var/vmail/%d/%n/Maildir");
        assert_eq!(l.control.as_deref(), Some("/c/%d/%n"));
        let colon = parse_location("maildir:/m::x/%n:LAYOUT=fs").unwrap();
        assert_eq!(colon.mail_path, "/m:x/%n");
        assert_eq!(colon.control, None);
        assert!(parse_location("mdbox:~/mdbox").is_none());
        assert!(l.describes(Path::new("/var/vmail")));
        assert!(l.describes(Path::new("/var/vmail/example.org")));
        assert!(!l.describes(Path::new("/srv/mail")));
        let home = parse_location("maildir:~/Maildir:CONTROL=~/control").unwrap();
        assert!(home.describes(Path::new("/anywhere")));
        let fixed = parse_location("maildir:~/Maildir:CONTROL=/c/%u").unwrap();
        assert!(!fixed.describes(Path::new("/var/vmail")));
        // 2.4 as Debian 13's example has it: homes from mail_home, mail under ~/Maildir.
        let v24 = parse_doveconf(
            "mail_driver = maildir\nmail_path = ~/Maildir\n\
             mail_home = /var/vmail/%{user | domain}/%{user | username}\n\
             mail_control_path = /var/vmail/control/%{user | domain}/%{user | username}\n",
        )
        .unwrap();
        assert!(v24.describes(Path::new("/var/vmail")));
        assert!(!v24.describes(Path::new("/srv/copy")));
    }
}
