//! The local dead-letter store: one JSON-lines file per dead-letter topic under the data
//! directory, appended and synced before the source event is acknowledged, read back by
//! `inspect` and `redrive`, and rewritten atomically by `redrive`.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::DeadLetter;

/// Problems reading a dead-letter file.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// IO.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a record.
    #[error("{path}:{line}: not a dead-letter record: {message}")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// Parser message.
        message: String,
    },
}

/// Appends a record and syncs it to disk.
pub async fn append(path: &Path, record: &DeadLetter) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let before = file.metadata().await?.len();
    let written = async {
        file.write_all(&line).await?;
        file.sync_data().await
    }
    .await;
    if written.is_err() {
        // A half-written line would make the whole file unreadable: take it back out.
        let _ = file.set_len(before).await;
    }
    written
}

/// Reads every record of a file (a missing file has none).
pub fn read(path: &Path) -> Result<Vec<DeadLetter>, DlqError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DlqError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| DlqError::Parse {
                path: path.display().to_string(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Replaces a file's records atomically (write aside, then rename).
pub fn rewrite(path: &Path, records: &[DeadLetter]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The dead-letter files of a data directory, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use inputbot_api::config::ResourceId;
    use serde_json::json;

    use super::*;
    use crate::{
        dlq::{ErrorInfo, FailedAt},
        event::Event,
    };

    fn record(n: i64) -> DeadLetter {
        DeadLetter::new(
            Event::new("ns/b", "s", "t", json!({"n": n})),
            FailedAt {
                resource: ResourceId::new("ActionBinding", "ns", "crm"),
                stage: "action".into(),
                name: "http".into(),
            },
            ErrorInfo {
                class: "status".into(),
                message: "HTTP 503".into(),
                status: Some(503),
                attempts: 5,
            },
            "inputbot.ns.p.out",
        )
    }

    #[tokio::test]
    async fn records_survive_a_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq/x.jsonl");
        append(&path, &record(1)).await.unwrap();
        append(&path, &record(2)).await.unwrap();
        let got = read(&path).unwrap();
        assert_eq!(got, vec![got[0].clone(), got[1].clone()]);
        assert_eq!(got[1].event.data, json!({"n": 2}));
        assert_eq!(got[0].trace_id.as_deref(), got[0].event.trace_id());
        rewrite(&path, &got[1..]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        assert_eq!(files(&dir.path().join("dlq")), vec![path]);
    }

    #[test]
    fn a_corrupt_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:1: not a dead-letter record"), "{err}");
    }
}
