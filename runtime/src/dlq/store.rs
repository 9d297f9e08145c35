//! The local dead-letter store: one JSON-lines file per dead-letter topic under the data
//! directory, appended and synced before the source event is acknowledged, read back by
//! `inspect` and `redrive`, and rewritten atomically by `redrive`.
//!
//! Writes go through `std::fs` on a blocking thread (tokio's `File` hands a write to a
//! background task, and its `sync_data` does not report that write's failure): an append is
//! acknowledged only after `write_all` and `sync_data` both succeeded. A line cut short by a
//! crash was never acknowledged: reads skip it (and say so), and the next append cuts it off.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

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

/// Appends a record and syncs it to disk; `Ok` only once the line is durable.
pub async fn append(path: &Path, record: &DeadLetter) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || append_line(&path, &line))
        .await
        .map_err(std::io::Error::other)?
}

fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let whole = whole_lines(&mut file)?;
    if whole < file.metadata()?.len() {
        // A torn line from a crash: never acknowledged, and it would swallow this record.
        file.set_len(whole)?;
    }
    let written = file.write_all(line).and_then(|()| file.sync_data());
    if written.is_err() {
        // Take a half-written line back out, so the file stays readable.
        let _ = file.set_len(whole).and_then(|()| file.sync_data());
    }
    written
}

/// The length of the file up to and including its last newline.
fn whole_lines(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Reads every record of a file (a missing file has none); a torn last line is skipped with a
/// warning (see [`read_all`]).
pub fn read(path: &Path) -> Result<Vec<DeadLetter>, DlqError> {
    let (records, torn) = read_all(path)?;
    if let Some(line) = torn {
        tracing::warn!(path = %path.display(), line, "skipped a torn last line (a write cut short; it was never acknowledged)");
    }
    Ok(records)
}

/// Reads every record of a file, and the 1-based number of a torn last line (one without its
/// newline that is not a record) that was skipped. Any other line that is not a record is an
/// error.
pub fn read_all(path: &Path) -> Result<(Vec<DeadLetter>, Option<usize>), DlqError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(source) => {
            return Err(DlqError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let complete = text.last().is_none_or(|&b| b == b'\n');
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    let mut records = Vec::new();
    let mut torn = None;
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(_) if i == last && !complete => torn = Some(i + 1),
            Err(e) => {
                return Err(DlqError::Parse {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok((records, torn))
}

/// Replaces a file's records atomically and durably: write aside and sync, rename, then sync
/// the directory so the rename survives a crash.
pub fn rewrite(path: &Path, records: &[DeadLetter]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_write_is_reported_not_acknowledged() {
        // /dev/full takes the open and fails every write with "no space left on device".
        let err = append(Path::new("/dev/full"), &record(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_on_read_and_cut_off_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        append(&path, &record(1)).await.unwrap();
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of the second append left half a line.
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        let (records, skipped) = read_all(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(skipped, Some(2));
        assert_eq!(read(&path).unwrap().len(), 1);
        append(&path, &record(3)).await.unwrap();
        let got = read(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].event.data, json!({"n": 3}));
        assert_eq!(read_all(&path).unwrap().1, None);
    }
}
