//! `inputbot dlq redrive`: puts dead letters back to the stage that failed them, rate-limited
//! and optionally filtered, and removes those that went through; records that fail again are
//! dead-lettered anew (appended), so nothing is lost either way.
//!
//! It plans first — the filter and the failed stage of every record — so that a problem found
//! halfway never leaves some records put back and still in the file, and it rewrites the files
//! only once everything put back has settled. What runs the stages is a [`Target`]: locally,
//! the bot started on the embedded bus with its sources off ([`crate::local::redrive`]).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::future::BoxFuture;
use inputbot_api::{
    expr::{CelExpr, Scope},
    names,
};

use super::{DeadLetter, DlqError, files, read, rewrite};
use crate::event::Event;

/// The running stages that records are put back to.
pub trait Target: Sync {
    /// Whether consumer `group` reads `topic` (the stage is among the given files).
    fn has_group(&self, topic: &str, group: &str) -> bool;
    /// Hands `event` to consumer `group` of `topic` only, not to every reader of the topic.
    fn put_back<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Box<dyn std::error::Error + Send + Sync>>>;
    /// Waits until everything put back was delivered, filtered or dead-lettered again.
    fn settle(&self, timeout: Duration) -> BoxFuture<'_, bool>;
}

/// What `dlq redrive` puts back.
#[derive(Clone, Debug, Default)]
pub struct RedriveOptions {
    /// Only this dead-letter topic.
    pub topic: Option<String>,
    /// Only records for which this CEL condition (over `data`, `event`, `labels`, `error`) holds.
    pub filter: Option<String>,
    /// Records per second.
    pub rate: f64,
}

/// What `dlq redrive` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Records put back.
    pub redriven: usize,
    /// Of those, dead-lettered again.
    pub failed_again: usize,
    /// Records left alone (not selected).
    pub kept: usize,
}

/// Why redrive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The bot could not start.
    #[error(transparent)]
    Start(Box<dyn std::error::Error + Send + Sync>),
    /// The bus did not take a record back.
    #[error(transparent)]
    Publish(Box<dyn std::error::Error + Send + Sync>),
    /// A dead-letter file could not be read or written.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// IO.
    #[error("cannot rewrite {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// What was put back did not finish; the files were left as they were.
    #[error(
        "the redriven events did not finish within an hour; the dead-letter files were left unchanged"
    )]
    Unfinished,
    /// The filter is not a valid CEL condition.
    #[error("--filter: {0}")]
    Filter(String),
    /// A record names a stage that is not in the given files.
    #[error(
        "{path}: record {index} failed at {resource} ({stage}), which is not in the given files"
    )]
    UnknownStage {
        /// File.
        path: String,
        /// 1-based record.
        index: usize,
        /// Resource.
        resource: String,
        /// Stage.
        stage: String,
    },
}

/// Compiles `--filter` (a CEL condition over `data`, `event`, `labels`, `error`).
pub fn filter(options: &RedriveOptions) -> Result<Option<CelExpr>, RedriveError> {
    options
        .filter
        .as_deref()
        .map(|f| CelExpr::compile(f, Scope::DeadLetter))
        .transpose()
        .map_err(RedriveError::Filter)
}

/// Puts the selected records of the dead-letter files under `data_dir` back to `target`,
/// rate-limited; once they settled, removes those that went through.
pub async fn redrive(
    target: &impl Target,
    data_dir: &Path,
    options: &RedriveOptions,
    filter: Option<&CelExpr>,
) -> Result<RedriveReport, RedriveError> {
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut report = RedriveReport::default();
    // Plan first — the filter and the failed stage of every record — so that a problem found
    // halfway never leaves some records put back and still in the file.
    struct Plan {
        path: PathBuf,
        records: Vec<DeadLetter>,
        selected: Vec<(usize, String)>,
    }
    let mut plans = Vec::new();
    for path in files(&data_dir.join("dlq")) {
        let topic = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let records = read(&path)?;
        if options.topic.as_deref().is_some_and(|t| t != topic) {
            report.kept += records.len();
            continue;
        }
        let mut selected = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let take = match filter {
                Some(f) => {
                    let vars = record.event.activation().with(
                        "error",
                        serde_json::json!({"class": record.error.class, "message": record.error.message,
                            "status": record.error.status, "attempts": record.error.attempts}),
                    );
                    f.eval_bool(&vars).map_err(RedriveError::Filter)?
                }
                None => true,
            };
            if !take {
                report.kept += 1;
                continue;
            }
            let r = &record.failed_at.resource;
            let role = if record.failed_at.stage == "step" {
                "process"
            } else {
                "act"
            };
            let group = names::consumer_group(&r.namespace, &r.name, role);
            if !target.has_group(&record.input_topic, &group) {
                return Err(RedriveError::UnknownStage {
                    path: path.display().to_string(),
                    index: i + 1,
                    resource: r.to_string(),
                    stage: record.failed_at.name.clone(),
                });
            }
            selected.push((i, group));
        }
        plans.push(Plan {
            path,
            records,
            selected,
        });
    }
    for plan in &plans {
        for (i, group) in &plan.selected {
            let record = &plan.records[*i];
            target
                .put_back(&record.input_topic, group, &record.event)
                .await
                .map_err(RedriveError::Publish)?;
            report.redriven += 1;
            tokio::time::sleep(interval).await;
        }
    }
    if !target.settle(Duration::from_secs(3600)).await {
        // Leave every file as it was: what was put back may still be in flight.
        return Err(RedriveError::Unfinished);
    }
    // Remove what was put back; keep what was not selected and what failed again (appended).
    for Plan {
        path,
        records,
        selected,
    } in plans
    {
        // Read again: records that failed again were appended while the stages ran.
        let current = read(&path)?;
        report.failed_again += current.len().saturating_sub(records.len());
        let kept: Vec<_> = current
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !selected.iter().any(|(s, _)| s == i))
            .map(|(_, r)| r)
            .collect();
        rewrite(&path, &kept).map_err(|source| RedriveError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(report)
}
