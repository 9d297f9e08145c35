//! A pipeline's steps, compiled once and run for every event:
//!
//! ```text
//!  event ─▶ validate ─▶ transform ─▶ enrich ─▶ classify ─▶ filter ─▶ Continue(event)
//!              │            │           │                     └──▶ Filtered (counted, not an error)
//!              └────────────┴───────────┴──▶ Failed { step, class, message } → dead letter
//! ```
//!
//! One file (or folder) per step kind (`validate`, `transform`, `enrich`, `classify`, `filter`,
//! `ai`), each a
//! compiled type with `new` (from its spec) and `apply` (to one event, leaving the event as it
//! was when it fails); this module compiles a pipeline's steps in order and runs them.

mod ai;
mod classify;
mod enrich;
mod filter;
mod transform;
mod validate;

use inputbot_api::{config::ProcessConfig, expr::Limits, pipeline::StepKind};

use self::{
    ai::Ai, classify::Classify, enrich::Enricher, filter::Filter, transform::Transform,
    validate::Validate,
};
use crate::{event::Event, metrics::Metrics, secrets::Secrets};

/// Why a pipeline could not be built (names the step and field).
#[derive(Debug, thiserror::Error)]
#[error("{pipeline}: {field}: {message}")]
pub struct BuildError {
    /// `Pipeline ns/name`.
    pub pipeline: String,
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// What the steps made of an event.
#[derive(Debug)]
pub enum StepOutcome {
    /// Passed every step.
    Continue(Event),
    /// A filter dropped it.
    Filtered {
        /// The filter step.
        step: String,
    },
    /// A step failed: dead-letter it.
    Failed {
        /// The event as it was before the failing step.
        event: Event,
        /// The step.
        step: String,
        /// `validation`, `transform`, `enrich`, `expression`, `budget` (an expression broke its
        /// time, step or nesting limit), `ai` (no usable answer from the model's server) or
        /// `model-output` (the model's answer did not match the schema, twice).
        class: &'static str,
        /// What went wrong.
        message: String,
        /// HTTP status of a failed enrichment.
        status: Option<u16>,
    },
}

enum Compiled {
    Validate(Validate),
    Transform(Transform),
    Enrich(Box<Enricher>),
    Classify(Classify),
    Filter(Filter),
    Ai(Box<Ai>),
}

struct Step {
    name: String,
    compiled: Compiled,
}

/// A compiled pipeline.
pub struct Steps {
    steps: Vec<Step>,
    limits: Limits,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|s| &s.name))
            .finish()
    }
}

impl Steps {
    /// Compiles every step (validated specs compile; errors name the field anyway). `metrics`
    /// receives what steps count themselves (the ai step's calls, tokens and cache).
    pub fn build(
        config: &ProcessConfig,
        secrets: &Secrets,
        client: reqwest::Client,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let resource = format!("{}/{}", config.pipeline.namespace, config.pipeline.name);
        let err = |i: usize, field: &str, message: String| BuildError {
            pipeline: config.pipeline.to_string(),
            field: format!("spec.steps[{i}].{field}"),
            message,
        };
        let mut steps = Vec::new();
        for (i, named) in config.steps.iter().enumerate() {
            let Some(kind) = named.step.kind() else {
                return Err(err(i, "", "set exactly one step kind".into()));
            };
            let compiled = match kind {
                StepKind::Validate(v) => Compiled::Validate(
                    Validate::new(&v.schema).map_err(|e| err(i, "validate.schema", e))?,
                ),
                StepKind::Transform(t) => Compiled::Transform(
                    Transform::new(&t.jq).map_err(|e| err(i, "transform.jq", e))?,
                ),
                StepKind::Enrich(e) => Compiled::Enrich(Box::new(
                    Enricher::new(&e.http, secrets, client.clone())
                        .map_err(|(field, m)| err(i, &format!("enrich.http.{field}"), m))?,
                )),
                StepKind::Classify(c) => Compiled::Classify(
                    Classify::new(c)
                        .map_err(|(j, m)| err(i, &format!("classify.rules[{j}].when"), m))?,
                ),
                StepKind::Filter(f) => {
                    Compiled::Filter(Filter::new(&f.when).map_err(|e| err(i, "filter.when", e))?)
                }
                StepKind::Ai(a) => Compiled::Ai(Box::new(
                    Ai::new(
                        a,
                        secrets,
                        client.clone(),
                        metrics.clone(),
                        &resource,
                        &named.name,
                    )
                    .map_err(|(field, m)| err(i, &format!("ai.{field}"), m))?,
                )),
            };
            steps.push(Step {
                name: named.name.clone(),
                compiled,
            });
        }
        Ok(Self {
            steps,
            limits: Limits::default(),
        })
    }

    /// Runs every step on `event`.
    pub async fn run(&self, mut event: Event) -> StepOutcome {
        for step in &self.steps {
            let fail = |event: Event, class: &'static str, message: String, status: Option<u16>| {
                StepOutcome::Failed {
                    event,
                    step: step.name.clone(),
                    class,
                    message,
                    status,
                }
            };
            let failed = match &step.compiled {
                Compiled::Validate(v) => v.apply(&event).err().map(|m| ("validation", m, None)),
                Compiled::Transform(t) => t
                    .apply(&mut event, self.limits)
                    .await
                    .err()
                    .map(|e| (e.class("transform"), e.into(), None)),
                Compiled::Enrich(e) => e
                    .apply(&mut event)
                    .await
                    .err()
                    .map(|(m, s)| ("enrich", m, s)),
                Compiled::Classify(c) => c
                    .apply(&mut event, self.limits)
                    .await
                    .err()
                    .map(|e| (e.class("expression"), e.into(), None)),
                Compiled::Filter(f) => match f.apply(&event, self.limits).await {
                    Ok(true) => None,
                    Ok(false) => {
                        return StepOutcome::Filtered {
                            step: step.name.clone(),
                        };
                    }
                    Err(e) => Some((e.class("expression"), e.into(), None)),
                },
                Compiled::Ai(a) => a
                    .apply(&mut event, self.limits)
                    .await
                    .err()
                    .map(|f| (f.class, f.message, f.status)),
            };
            if let Some((class, message, status)) = failed {
                return fail(event, class, message, status);
            }
        }
        StepOutcome::Continue(event)
    }
}
