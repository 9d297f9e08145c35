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
//!
//! Consecutive steps that only compute — validate, transform, classify, filter — run together
//! in **one** trip to an expression thread ([`crate::eval`]), under the sum of their time
//! limits: a hand-off between threads costs more than a small jq program or CEL condition, so a
//! pipeline of five such steps pays for one. enrich and ai await the network and run on the
//! async workers between such trips.

mod ai;
mod cache;
mod classify;
mod enrich;
mod filter;
mod transform;
mod validate;

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use inputbot_api::{
    config::ProcessConfig,
    expr::{EvalError, Limits},
    pipeline::StepKind,
};

use self::{
    ai::Ai, classify::Classify, enrich::Enricher, filter::Filter, transform::Transform,
    validate::Validate,
};
use crate::{eval, event::Event, metrics::Metrics, secrets::Secrets};

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

impl Compiled {
    /// Whether the step only computes (no network): consecutive ones share one trip to an
    /// expression thread.
    fn computes_only(&self) -> bool {
        matches!(
            self,
            Self::Validate(_) | Self::Transform(_) | Self::Classify(_) | Self::Filter(_)
        )
    }
}

struct Step {
    name: String,
    compiled: Compiled,
}

/// How a run of computing steps ended.
enum RunEnd {
    Continue,
    Filtered(usize),
    Failed(usize, &'static str, String),
}

/// Runs the computing steps `range` on `event`, on the calling (expression) thread; `at` says
/// which step is running, so a run abandoned at its time limit can name it.
fn compute(
    steps: &[Step],
    range: Range<usize>,
    event: &mut Event,
    limits: Limits,
    at: &AtomicUsize,
) -> RunEnd {
    for i in range {
        at.store(i, Ordering::Relaxed);
        let failed = match &steps[i].compiled {
            Compiled::Validate(v) => v.apply(event).err().map(|m| ("validation", m)),
            Compiled::Transform(t) => t
                .apply(event, limits)
                .err()
                .map(|e| (e.class("transform"), e.into())),
            Compiled::Classify(c) => c
                .apply(event, limits)
                .err()
                .map(|e| (e.class("expression"), e.into())),
            Compiled::Filter(f) => match f.apply(event, limits) {
                Ok(true) => None,
                Ok(false) => return RunEnd::Filtered(i),
                Err(e) => Some((e.class("expression"), e.into())),
            },
            Compiled::Enrich(_) | Compiled::Ai(_) => unreachable!("not a computing step"),
        };
        if let Some((class, message)) = failed {
            return RunEnd::Failed(i, class, message);
        }
    }
    RunEnd::Continue
}

/// A compiled pipeline.
pub struct Steps {
    steps: Arc<[Step]>,
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
            steps: steps.into(),
            limits: Limits::default(),
        })
    }

    /// Runs every step on `event`.
    pub async fn run(&self, mut event: Event) -> StepOutcome {
        let fail = |event: Event, i: usize, class: &'static str, message: String, status| {
            StepOutcome::Failed {
                event,
                step: self.steps[i].name.clone(),
                class,
                message,
                status,
            }
        };
        let mut i = 0;
        while i < self.steps.len() {
            if self.steps[i].compiled.computes_only() {
                let end = (i..self.steps.len())
                    .find(|&j| !self.steps[j].compiled.computes_only())
                    .unwrap_or(self.steps.len());
                // The event moves to the expression thread; an evaluation abandoned at its
                // time limit keeps it, so the dead letter gets this copy.
                let before = event.clone();
                let (steps, limits) = (self.steps.clone(), self.limits);
                let at = Arc::new(AtomicUsize::new(i));
                let running = at.clone();
                let budget = Limits {
                    time: limits.time * u32::try_from(end - i).unwrap_or(u32::MAX),
                    ..limits
                };
                let ran = eval::run(budget, move || {
                    let mut event = event;
                    let end = compute(&steps, i..end, &mut event, limits, &running);
                    Ok::<_, EvalError>((event, end))
                })
                .await;
                match ran {
                    Ok((after, RunEnd::Continue)) => event = after,
                    Ok((_, RunEnd::Filtered(j))) => {
                        return StepOutcome::Filtered {
                            step: self.steps[j].name.clone(),
                        };
                    }
                    Ok((after, RunEnd::Failed(j, class, message))) => {
                        return fail(after, j, class, message, None);
                    }
                    Err(e) => {
                        let j = at.load(Ordering::Relaxed);
                        return fail(before, j, e.class("expression"), e.into(), None);
                    }
                }
                i = end;
                continue;
            }
            let failed = match &self.steps[i].compiled {
                Compiled::Enrich(e) => e
                    .apply(&mut event)
                    .await
                    .err()
                    .map(|(m, s)| ("enrich", m, s)),
                Compiled::Ai(a) => a
                    .apply(&mut event, self.limits)
                    .await
                    .err()
                    .map(|f| (f.class, f.message, f.status)),
                _ => unreachable!("computing steps run above"),
            };
            if let Some((class, message, status)) = failed {
                return fail(event, i, class, message, status);
            }
            i += 1;
        }
        StepOutcome::Continue(event)
    }
}
