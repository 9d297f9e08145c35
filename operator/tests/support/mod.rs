//! What the operator's source says about status: the condition reasons it can write, read
//! from the code itself so that documentation and health checks cannot drift from it.

// Each test file uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The operator crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's directory.
pub fn repo_root() -> PathBuf {
    crate_dir().join("..")
}

/// A source file without its `#[cfg(test)]` part (test fixtures are not reasons).
fn source(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The files where the operator writes conditions, Events and error labels: every file of
/// `src/controller/` and `src/error.rs`.
fn status_sources() -> Vec<PathBuf> {
    let dir = crate_dir().join("src/controller");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("src/controller")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.push(crate_dir().join("src/error.rs"));
    files.sort();
    files
}

/// Every string literal of `text` that is one CamelCase word (`"TopicsNotReady"`).
fn camel_case_literals(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices('"') {
        let rest = &text[at + 1..];
        let word: String = rest
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if rest[word.len()..].starts_with('"')
            && word.len() > 1
            && word.starts_with(|c: char| c.is_ascii_uppercase())
            && word.chars().any(|c| c.is_ascii_lowercase())
        {
            out.insert(word);
        }
    }
    out
}

/// CamelCase literals in those files that are not reasons, each with why.
pub const NOT_REASONS: [(&str, &str); 7] = [
    ("InputBot", "a kind"),
    ("Pipeline", "a kind"),
    ("ActionBinding", "a kind"),
    ("True", "a condition status"),
    ("False", "a condition status"),
    ("Reconcile", "the action of every Event"),
    ("Available", "the Deployment condition the operator reads"),
];

/// The condition types the operator writes (named on the troubleshooting page, and some are
/// also reasons).
pub const CONDITION_TYPES: [&str; 5] = [
    "Ready",
    "ReferencesResolved",
    "TopicsReady",
    "WorkloadReady",
    "AutoscalingReady",
];

/// Every reason the operator can set on a condition or an Event, or report as an error
/// label: the CamelCase literals of the status sources that are neither kinds nor statuses,
/// and not only condition types.
pub fn reasons() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for file in status_sources() {
        all.extend(camel_case_literals(&source(&file)));
    }
    let only_types = ["ReferencesResolved", "WorkloadReady", "AutoscalingReady"];
    all.retain(|r| !NOT_REASONS.iter().any(|(n, _)| n == r) && !only_types.contains(&r.as_str()));
    assert!(
        all.len() >= 10,
        "found only {all:?}: has the operator's status code moved out of src/controller/?"
    );
    all
}

/// The labels of `Error::label()` in src/error.rs (`Error::X(..) => "Label",`): the reasons
/// of permanent failures, which the operator puts on Ready and then waits for a change.
pub fn error_labels() -> BTreeSet<String> {
    let text = source(&crate_dir().join("src/error.rs"));
    let body = text
        .split("pub fn label(")
        .nth(1)
        .and_then(|rest| rest.split("pub fn ").next())
        .expect("Error::label in src/error.rs");
    let labels = camel_case_literals(body);
    assert!(labels.len() >= 4, "Error::label has only {labels:?}");
    labels
}

/// The Ready reasons the operator treats as coming up, not failing (a Normal Event, not a
/// Warning): the `matches!(now.reason.as_str(), "A" | "B")` in src/controller/mod.rs.
pub fn progressing_reasons() -> BTreeSet<String> {
    let text = source(&crate_dir().join("src/controller/mod.rs"));
    let line = text
        .lines()
        .find(|l| l.contains("let progressing = matches!(now.reason.as_str()"))
        .expect("the `let progressing = matches!(now.reason…)` line in src/controller/mod.rs");
    let reasons = camel_case_literals(line);
    assert!(!reasons.is_empty(), "no reasons in {line:?}");
    reasons
}
