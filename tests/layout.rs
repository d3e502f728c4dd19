//! The layout's rule, checked: a stage imports only the stages above it in the flow
//! (maildir -> capture -> image -> serve -> admin), with `error` and `sys` beneath all, so
//! that `ls src` reads as the flow and no import goes back up it.

use std::path::{Path, PathBuf};

/// The stages in flow order; `error` and `sys` are beneath every stage.
const STAGES: [&str; 7] = [
    "error", "sys", "maildir", "capture", "image", "serve", "admin",
];

fn rank(stage: &str) -> Option<usize> {
    match stage {
        // The library root re-exports these.
        "error" | "sys" | "Error" | "Result" => Some(0),
        "MountOptions" => rank("admin"),
        _ => STAGES.iter().position(|s| *s == stage),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The stage a source file is in: its folder under `src/`, or its name for a top-level file.
fn stage_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn imports_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut back = Vec::new();
    let mut checked = 0;
    for file in &files {
        let here = stage_of(&src, file);
        // lib.rs and main.rs stand below everything; testutil serves every stage's tests.
        let Some(own) = rank(&here) else { continue };
        for (n, line) in std::fs::read_to_string(file).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let to: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                checked += 1;
                match rank(&to) {
                    Some(r) if r > own => back.push(format!(
                        "{}:{}: {here} imports {to}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1
                    )),
                    Some(_) => {}
                    None if to == "testutil" => {}
                    None => back.push(format!("{}:{}: unknown module {to}", file.display(), n + 1)),
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} imports found: is the scan right?"
    );
    assert!(
        back.is_empty(),
        "imports that go back up the flow:\n{}",
        back.join("\n")
    );
}

#[test]
fn every_stage_is_a_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for stage in &STAGES[2..] {
        assert!(
            src.join(stage).join("mod.rs").is_file(),
            "src/{stage}/mod.rs"
        );
    }
    let mut top: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rs"))
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["error.rs", "lib.rs", "main.rs", "sys.rs", "testutil.rs"]
    );
}

/// Syscalls are typed in one place: flags, error numbers and file kinds reach the rest of the
/// code as `sys`'s types (nix's `OFlag` and `Errno`, `FileKind`), never as raw `libc` values.
#[test]
fn libc_is_used_only_in_sys() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("sys.rs"))
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let rel = f.strip_prefix(&src).unwrap().display().to_string();
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.split("//").next().unwrap_or("").contains("libc::"))
                .map(|(n, _)| format!("{rel}:{}", n + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        outside.is_empty(),
        "libc:: outside sys.rs:\n{}",
        outside.join("\n")
    );
    assert!(src.join("sys.rs").is_file());
}
