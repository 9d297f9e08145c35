//! What a dead letter carries: the original event, where it failed, the error class and
//! message, the HTTP status, attempts, first and last failure times and the trace id — and the
//! topic to put it back on.

use chrono::{DateTime, Utc};
use inputbot_api::config::ResourceId;
use serde::{Deserialize, Serialize};

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
