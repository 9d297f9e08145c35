//! `inputbot dlq inspect|redrive --kafka-topic T`: dead letters on a Kafka dead-letter topic.
//!
//! ```text
//!  inspect: DLQ topic, every partition from its start to its end now ─▶ select ─▶ print
//!  redrive: the same ─▶ select ─▶ publish the event to record.inputTopic with
//!           `inputbot_redrive_group: <the failed stage's group>` ─▶ only that group handles
//!           it (every other group of the topic skips it), rate-limited, with progress
//! ```
//!
//! A DLQ topic is a log: redriving does not remove a record (retention does). Use `--since`
//! (and `--dry-run` first) so that a second run does not put the same records back again.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use inputbot_api::{expr::CelExpr, names};
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};

use super::{KafkaBus, KafkaOptions, KafkaSettings, codec};
use crate::dlq::{
    DeadLetter,
    redrive::{RedriveError, RedriveReport},
};

/// The header that hands a redriven event to one consumer group only.
pub const REDRIVE_GROUP: &str = "inputbot_redrive_group";

/// Which dead letters a command works on.
#[derive(Debug, Default)]
pub struct Selection {
    /// Only records dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this error class (`status`, `timeout`, `validation`, …).
    pub class: Option<String>,
    /// Only this step or action (`http`, `shape`, …), or resource name.
    pub name: Option<String>,
    /// Only records for which this CEL condition (over `data`, `event`, `labels`, `error`) holds.
    pub filter: Option<CelExpr>,
}

impl Selection {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &DeadLetter) -> Result<bool, String> {
        if self.since.is_some_and(|s| record.dead_lettered_at < s)
            || self
                .class
                .as_ref()
                .is_some_and(|c| *c != record.error.class)
            || self.name.as_ref().is_some_and(|n| {
                *n != record.failed_at.name && *n != record.failed_at.resource.name
            })
        {
            return Ok(false);
        }
        match &self.filter {
            None => Ok(true),
            Some(f) => f.eval_bool(&record.event.activation().with(
                "error",
                serde_json::json!({"class": record.error.class, "message": record.error.message,
                    "status": record.error.status, "attempts": record.error.attempts}),
            )),
        }
    }
}

/// Why the topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KafkaDlqError {
    /// The broker refused or did not answer.
    #[error("reading {topic}: {message}")]
    Read {
        /// Topic.
        topic: String,
        /// What went wrong.
        message: String,
    },
}

/// Every dead letter on `topic` now, as (partition, offset, record); records that are no
/// dead letter are reported on stderr and skipped.
pub fn read(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<Vec<(i32, i64, DeadLetter)>, KafkaDlqError> {
    let err = |message: String| KafkaDlqError::Read {
        topic: topic.to_owned(),
        message,
    };
    let mut config: ClientConfig = settings.client_config();
    config
        .set("group.id", "inputbot-dlq-reader")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(|e| err(e.to_string()))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| err(e.to_string()))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(err("no such topic".into()));
    };
    if let Some(e) = t.error() {
        return Err(err(format!("{e:?}")));
    }
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| err(e.to_string()))?;
        if high > low {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(err(
                "the topic could not be read to its end within 60 s".into()
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(|e| err(e.to_string()))?;
        match m.payload().map(codec::decode_dead_letter) {
            Some(Ok(record)) => out.push((m.partition(), m.offset(), record)),
            _ => eprintln!(
                "warning: {topic} partition {} offset {} is not a dead-letter record; skipped",
                m.partition(),
                m.offset()
            ),
        }
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(out)
}

/// Prints the selected dead letters of `topic` (one line each, or JSON lines); returns how
/// many.
pub async fn inspect(
    settings: KafkaSettings,
    topic: &str,
    selection: &Selection,
    json: bool,
) -> Result<usize, KafkaDlqError> {
    let t = topic.to_owned();
    let records = tokio::task::spawn_blocking(move || read(&settings, &t))
        .await
        .map_err(|e| KafkaDlqError::Read {
            topic: topic.to_owned(),
            message: e.to_string(),
        })??;
    let mut n = 0;
    for (partition, offset, r) in &records {
        if !selection.matches(r).unwrap_or(false) {
            continue;
        }
        n += 1;
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{}  {topic}/{partition}@{offset}  event {}  {} {} {}  {}{} after {} attempt{}: {}",
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
    if !json {
        println!("{n} of {} dead letters on {topic} selected", records.len());
    }
    Ok(n)
}

/// The consumer group of the stage that failed a record.
pub fn failed_group(record: &DeadLetter) -> String {
    let r = &record.failed_at.resource;
    let role = if record.failed_at.stage == "step" {
        "process"
    } else {
        "act"
    };
    names::consumer_group(&r.namespace, &r.name, role)
}

/// Puts the selected dead letters of `topic` back to the stages that failed them (see the
/// module docs), at most `rate` per second; with `dry_run` only says what it would do.
pub async fn redrive(
    settings: KafkaSettings,
    topic: &str,
    selection: &Selection,
    rate: f64,
    dry_run: bool,
) -> Result<RedriveReport, RedriveError> {
    let t = topic.to_owned();
    let s = settings.clone();
    let records = tokio::task::spawn_blocking(move || read(&s, &t))
        .await
        .map_err(|e| RedriveError::Publish(e.into()))?
        .map_err(|e| RedriveError::Publish(e.into()))?;
    let mut report = RedriveReport::default();
    let mut chosen = Vec::new();
    for (_, _, r) in records {
        if selection.matches(&r).map_err(RedriveError::Filter)? {
            chosen.push(r);
        } else {
            report.kept += 1;
        }
    }
    if dry_run {
        for r in &chosen {
            println!(
                "would put event {} back on {} for group {} ({} {}: {})",
                r.event.id,
                r.input_topic,
                failed_group(r),
                r.failed_at.resource,
                r.failed_at.name,
                r.error.class
            );
        }
        report.redriven = chosen.len();
        return Ok(report);
    }
    let mut inputs: Vec<String> = chosen.iter().map(|r| r.input_topic.clone()).collect();
    inputs.sort();
    inputs.dedup();
    let bus = KafkaBus::connect(settings, KafkaOptions::default(), &inputs)
        .await
        .map_err(|e| RedriveError::Start(Box::new(e)))?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let total = chosen.len();
    for (i, r) in chosen.iter().enumerate() {
        bus.publish_to_group(&r.input_topic, &failed_group(r), &r.event)
            .await
            .map_err(|e| RedriveError::Publish(Box::new(e)))?;
        report.redriven += 1;
        if (i + 1) % 100 == 0 || i + 1 == total {
            eprintln!("redriven {} of {total}", i + 1);
        }
        tokio::time::sleep(interval).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use inputbot_api::{config::ResourceId, expr::Scope};
    use serde_json::json;

    use super::*;
    use crate::{
        dlq::{ErrorInfo, FailedAt},
        event::Event,
    };

    fn record(class: &str, status: Option<u16>) -> DeadLetter {
        DeadLetter::new(
            Event::new("ns/bot", "hook", "t", json!({"n": 1})),
            FailedAt {
                resource: ResourceId::new("ActionBinding", "ns", "crm"),
                stage: "action".into(),
                name: "http".into(),
            },
            ErrorInfo {
                class: class.into(),
                message: "m".into(),
                status,
                attempts: 3,
            },
            "inputbot.ns.p.out",
        )
    }

    #[test]
    fn selects_by_time_class_name_and_filter() {
        let r = record("status", Some(503));
        assert!(Selection::default().matches(&r).unwrap());
        let later = Selection {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Selection::default()
        };
        assert!(!later.matches(&r).unwrap());
        let timeouts = Selection {
            class: Some("timeout".into()),
            ..Selection::default()
        };
        assert!(!timeouts.matches(&r).unwrap());
        let crm = Selection {
            name: Some("crm".into()),
            filter: Some(
                CelExpr::compile("error.status == 503 && data.n == 1", Scope::DeadLetter).unwrap(),
            ),
            ..Selection::default()
        };
        assert!(crm.matches(&r).unwrap());
        assert_eq!(failed_group(&r), names::consumer_group("ns", "crm", "act"));
    }
}
