#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The crate's layering, checked on the source: which top-level modules each module's library
//! code (everything before its `#[cfg(test)]` block, comments excluded) may name through
//! `crate::`. The table is the one ARCHITECTURE.md draws; a new upward import fails here with
//! the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module → the modules it may import. Modules not listed (app, bench, pretrain, synth, the
/// binary) sit on top and may import anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("data", &[]),
    ("device", &[]),
    ("stats", &[]),
    ("perf", &[]),
    ("squeeze", &[]),
    ("assets", &[]),
    ("schema", &["data", "device"]),
    ("model", &["data", "device"]),
    ("probe", &["data", "device", "model", "schema"]),
    ("run", &["data", "schema", "stats"]),
    ("export", &["data", "run", "schema", "stats"]),
    (
        "train",
        &[
            "assets", "data", "device", "model", "perf", "probe", "run", "schema", "stats",
        ],
    ),
];

/// Every `.rs` file of a module (`src/NAME.rs` or `src/NAME/**`).
fn module_files(src: &Path, name: &str) -> Vec<PathBuf> {
    let single = src.join(format!("{name}.rs"));
    if single.exists() {
        return vec![single];
    }
    let mut out = Vec::new();
    let mut stack = vec![src.join(name)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// (line number, module) for every `crate::MODULE` the library code of `text` names.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = tail;
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut bad = Vec::new();
    let mut checked = 0;
    for (module, deps) in &allowed {
        let files = module_files(&src, module);
        assert!(!files.is_empty(), "module {module} has no source files");
        for file in files {
            checked += 1;
            let text = fs::read_to_string(&file).unwrap();
            for (line, dep) in crate_refs(&text) {
                if dep != *module && !deps.contains(dep.as_str()) {
                    bad.push(format!(
                        "{}:{line}: {module} imports crate::{dep}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn only_the_app_names_the_gui() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (module, _) in ALLOWED {
        for file in module_files(&src, module) {
            let text = fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if code.contains("egui") || code.contains("eframe") {
                    bad.push(format!("{}:{}: {}", file.display(), i + 1, code));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "GUI names outside the app:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_tests() {
    let text = "//! crate::train in a doc\nuse crate::data::Family;\nlet x = crate::stats::pearson(a, b); // crate::app\n#[cfg(test)]\nmod tests { use crate::train::X; }\n";
    let refs = crate_refs(text);
    assert_eq!(
        refs,
        vec![(2, "data".to_string()), (3, "stats".to_string())]
    );
}

/// The app's views draw from a read-only `ViewCtx` and their own state: none of them names the
/// whole app (whose fields they could change behind the action queue).
#[test]
fn views_never_reach_for_the_whole_app() {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/app");
    let mut bad = Vec::new();
    for view in [
        "curves",
        "tokens",
        "transfer",
        "influence",
        "setup",
        "playground",
    ] {
        let file = app.join(format!("{view}.rs"));
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("impl View for") || text.contains("impl super::View for"),
            "{} implements no View",
            file.display()
        );
        for (i, line) in text.lines().enumerate() {
            if line.contains("LdvizApp") && !line.trim_start().starts_with("//") {
                bad.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "views naming LdvizApp:\n{}", bad.join("\n"));
}
