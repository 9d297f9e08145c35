//! The troubleshooting page is keyed by the reasons the operator writes: every reason found
//! in its source (conditions, Events, error labels) has a heading there, so the page cannot
//! fall behind the code.

mod support;

use support::{CONDITION_TYPES, reasons, repo_root};

fn page() -> String {
    std::fs::read_to_string(repo_root().join("docs/troubleshooting.md"))
        .expect("docs/troubleshooting.md")
}

#[test]
fn the_troubleshooting_page_has_a_heading_for_every_reason_the_operator_sets() {
    let page = page();
    let headings: Vec<&str> = page.lines().filter(|l| l.starts_with('#')).collect();
    let missing: Vec<String> = reasons()
        .into_iter()
        .filter(|r| !headings.iter().any(|h| h.contains(&format!("`{r}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no heading naming {missing:?} (e.g. \"### `{}`\"); \
         each reason the operator sets needs one",
        missing.first().map(String::as_str).unwrap_or_default()
    );
}

#[test]
fn the_troubleshooting_page_names_every_condition_type() {
    let page = page();
    for t in CONDITION_TYPES {
        assert!(
            page.contains(&format!("`{t}`")),
            "docs/troubleshooting.md does not name the condition `{t}`"
        );
    }
}
