//! `inputbot dlq inspect`: lists the dead letters of a local run — when, which event, where
//! it failed and why — or prints them as JSON lines.

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
                r.event.id,
                r.failed_at.resource,
                r.failed_at.stage,
                r.failed_at.name,
                r.error.class,
                r.error.status.map(|s| format!(" {s}")).unwrap_or_default(),
                r.error.attempts,
                if r.error.attempts == 1 { "" } else { "s" },
                r.error.message
            );
        }
    }
    if !json && total == 0 {
        println!("no dead letters in {}", data_dir.join("dlq").display());
    }
    Ok(())
}
