//! Dead letters: events that could not be processed or delivered, with everything a person needs
//! to understand and replay them — the original event, where it failed, the error class and
//! message, the HTTP status, attempts, first and last failure times and the trace id — and the
//! topic to put it back on (`inputbot dlq redrive`).
//!
//! Locally they are JSON lines under the data directory, one file per dead-letter topic,
//! appended and synced before the source event is acknowledged.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use inputbot_api::config::ResourceId;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::event::Event;

/// One dead-lettered event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The event as it was when it failed.
    pub event: Event,
    /// Where it failed.
    pub failed_at: FailedAt,
    /// What went wrong.
    pub error: ErrorInfo,
    /// The topic the failed stage consumes: redrive publishes the event there again.
    pub input_topic: String,
    /// First failed attempt.
    pub first_failure: DateTime<Utc>,
    /// Last failed attempt.
    pub last_failure: DateTime<Utc>,
    /// When the record was written.
    pub dead_lettered_at: DateTime<Utc>,
    /// Trace id of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The stage that gave up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedAt {
    /// The Pipeline or ActionBinding.
    pub resource: ResourceId,
    /// `step` or `action`.
    pub stage: String,
    /// The step's name or the action's kind.
    pub name: String,
}

/// The error of the last attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// Stable class: `status`, `timeout`, `connection`, `validation`, `transform`, `enrich`,
    /// `expression`, `template`, `config`.
    pub class: String,
    /// Human-readable message (never a secret).
    pub message: String,
    /// HTTP status of the last attempt, if there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
}

impl DeadLetter {
    /// A record for a failure that happened now.
    pub fn new(event: Event, failed_at: FailedAt, error: ErrorInfo, input_topic: &str) -> Self {
        let now = Utc::now();
        let trace_id = event.trace_id().map(str::to_owned);
        Self {
            event,
            failed_at,
            error,
            input_topic: input_topic.to_owned(),
            first_failure: now,
            last_failure: now,
            dead_lettered_at: now,
            trace_id,
        }
    }
}

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
    use serde_json::json;

    use super::*;

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
