//! `inputbot dlq inspect`: lists the dead letters of a local run — when, which event, where
//! it failed and why — or prints them as JSON lines. Text that came from a sender (ids,
//! messages) is printed with its control characters escaped, so it cannot move the cursor,
//! retitle the terminal or forge lines.

use std::path::Path;

use super::{DlqError, files, read_all};

/// Prints the dead letters under `data_dir` (only those of `topic` when given) to stdout.
pub fn inspect(data_dir: &Path, topic: Option<&str>, json: bool) -> Result<(), DlqError> {
    let files = files(&data_dir.join("dlq"));
    let mut total = 0;
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if topic.is_some_and(|t| t != name) {
            continue;
        }
        let (records, torn) = read_all(&path)?;
        if let Some(line) = torn {
            eprintln!(
                "{}:{line}: skipped a torn last line (a write cut short; it was never acknowledged)",
                path.display()
            );
        }
        total += records.len();
        if json {
            for r in &records {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
            continue;
        }
        println!(
            "{name}: {} dead letter{}",
            records.len(),
            if records.len() == 1 { "" } else { "s" }
        );
        for r in &records {
            println!(
                "  {}  event {}  {} {} {}  {}{} after {} attempt{}: {}",
                r.dead_lettered_at.format("%Y-%m-%d %H:%M:%S"),
                printable(&r.event.id),
                printable(&r.failed_at.resource.to_string()),
                printable(&r.failed_at.stage),
                printable(&r.failed_at.name),
                printable(&r.error.class),
                r.error.status.map(|s| format!(" {s}")).unwrap_or_default(),
                r.error.attempts,
                if r.error.attempts == 1 { "" } else { "s" },
                printable(&r.error.message)
            );
        }
    }
    if !json && total == 0 {
        println!("no dead letters in {}", data_dir.join("dlq").display());
    }
    Ok(())
}

/// `text` with every control character (escape, carriage return, newline, …) written as its
/// Rust escape, e.g. `\u{1b}`.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
