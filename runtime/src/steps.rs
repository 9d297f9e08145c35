//! A pipeline's steps, compiled once and run for every event:
//!
//! ```text
//!  event ─▶ validate ─▶ transform ─▶ enrich ─▶ classify ─▶ filter ─▶ Continue(event)
//!              │            │           │                     └──▶ Filtered (counted, not an error)
//!              └────────────┴───────────┴──▶ Failed { step, class, message } → dead letter
//! ```

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use inputbot_api::{
    config::ProcessConfig,
    expr::{CelExpr, JqProgram, Scope, Template},
    pipeline::{EnrichHttp, EnrichMethod, OnError, StepKind},
};
use serde_json::Value;

use crate::{event::Event, secrets::Secrets};

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
        /// `validation`, `transform`, `enrich`, `expression`.
        class: &'static str,
        /// What went wrong.
        message: String,
        /// HTTP status of a failed enrichment.
        status: Option<u16>,
    },
}

enum Compiled {
    Validate(Box<jsonschema::Validator>),
    Transform(JqProgram),
    Enrich(Box<Enricher>),
    Classify {
        rules: Vec<(CelExpr, String)>,
        first_match: bool,
        default_label: Option<String>,
    },
    Filter(CelExpr),
}

struct Step {
    name: String,
    compiled: Compiled,
}

/// A compiled pipeline.
pub struct Steps {
    steps: Vec<Step>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|s| &s.name))
            .finish()
    }
}

impl Steps {
    /// Compiles every step (validated specs compile; errors name the field anyway).
    pub fn build(
        config: &ProcessConfig,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
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
                StepKind::Validate(v) => Compiled::Validate(Box::new(
                    jsonschema::validator_for(&v.schema)
                        .map_err(|e| err(i, "validate.schema", e.to_string()))?,
                )),
                StepKind::Transform(t) => Compiled::Transform(
                    JqProgram::compile(&t.jq).map_err(|e| err(i, "transform.jq", e))?,
                ),
                StepKind::Enrich(e) => Compiled::Enrich(Box::new(
                    Enricher::new(&e.http, secrets, client.clone())
                        .map_err(|(field, m)| err(i, &format!("enrich.http.{field}"), m))?,
                )),
                StepKind::Classify(c) => Compiled::Classify {
                    rules: c
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(j, r)| {
                            CelExpr::compile(&r.when, Scope::Event)
                                .map(|e| (e, r.label.clone()))
                                .map_err(|m| err(i, &format!("classify.rules[{j}].when"), m))
                        })
                        .collect::<Result<_, _>>()?,
                    first_match: c.first_match,
                    default_label: c.default_label.clone(),
                },
                StepKind::Filter(f) => Compiled::Filter(
                    CelExpr::compile(&f.when, Scope::Event)
                        .map_err(|e| err(i, "filter.when", e))?,
                ),
            };
            steps.push(Step {
                name: named.name.clone(),
                compiled,
            });
        }
        Ok(Self { steps })
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
            match &step.compiled {
                Compiled::Validate(v) => {
                    let errors: Vec<String> = v
                        .iter_errors(&event.data)
                        .take(5)
                        .map(|e| {
                            let at = e.instance_path().to_string();
                            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
                        })
                        .collect();
                    if !errors.is_empty() {
                        let message = format!(
                            "event data does not match the schema: {}",
                            errors.join("; ")
                        );
                        return fail(event, "validation", message, None);
                    }
                }
                Compiled::Transform(jq) => match jq.run_one(&event.data) {
                    Ok(data) => event.data = data,
                    Err(message) => return fail(event, "transform", message, None),
                },
                Compiled::Enrich(enricher) => match enricher.lookup(&event).await {
                    Ok(Some(value)) => {
                        if let Value::Object(map) = &mut event.data {
                            map.insert(enricher.result_field.clone(), value);
                        } else {
                            let message = format!(
                                "cannot store the enrichment under {:?}: the event data is not an object",
                                enricher.result_field
                            );
                            return fail(event, "enrich", message, None);
                        }
                    }
                    Ok(None) => {}
                    Err((message, status)) => return fail(event, "enrich", message, status),
                },
                Compiled::Classify {
                    rules,
                    first_match,
                    default_label,
                } => {
                    let vars = event.activation();
                    let mut added = Vec::new();
                    for (expr, label) in rules {
                        match expr.eval_bool(&vars) {
                            Ok(true) => {
                                added.push(label.clone());
                                if *first_match {
                                    break;
                                }
                            }
                            Ok(false) => {}
                            Err(message) => return fail(event, "expression", message, None),
                        }
                    }
                    if added.is_empty() {
                        added.extend(default_label.clone());
                    }
                    for label in added {
                        if !event.labels.contains(&label) {
                            event.labels.push(label);
                        }
                    }
                }
                Compiled::Filter(expr) => match expr.eval_bool(&event.activation()) {
                    Ok(true) => {}
                    Ok(false) => {
                        return StepOutcome::Filtered {
                            step: step.name.clone(),
                        };
                    }
                    Err(message) => return fail(event, "expression", message, None),
                },
            }
        }
        StepOutcome::Continue(event)
    }
}

/// Most responses an enrich step keeps in its cache.
const CACHE_CAPACITY: usize = 10_000;

struct Enricher {
    url: Template,
    method: EnrichMethod,
    headers: http::HeaderMap,
    body: Option<JqProgram>,
    result_field: String,
    timeout: Duration,
    cache_ttl: Option<Duration>,
    skip_on_error: bool,
    client: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, Value)>>,
}

impl Enricher {
    fn new(
        spec: &EnrichHttp,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, (String, String)> {
        let dur = |d: &Option<inputbot_api::common::Duration>, field: &str, default: Duration| {
            d.as_ref()
                .map(|d| d.to_std().map_err(|e| (field.to_owned(), e)))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        Ok(Self {
            url: Template::compile(&spec.url, Scope::Event).map_err(|e| ("url".to_owned(), e))?,
            method: spec.method.unwrap_or_default(),
            headers: crate::outbound::resolve_headers(&spec.headers, secrets, "headers")
                .map_err(|e| ("headers".to_owned(), e.to_string()))?,
            body: spec
                .body
                .as_deref()
                .map(JqProgram::compile)
                .transpose()
                .map_err(|e| ("body".to_owned(), e))?,
            result_field: spec.result_field.clone(),
            timeout: dur(&spec.timeout, "timeout", Duration::from_secs(2))?,
            cache_ttl: spec
                .cache_ttl
                .as_ref()
                .map(|d| d.to_std())
                .transpose()
                .map_err(|e| ("cacheTTL".to_owned(), e))?,
            skip_on_error: spec.on_error == Some(OnError::Skip),
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The looked-up value; `None` when the lookup failed and the step skips errors.
    async fn lookup(&self, event: &Event) -> Result<Option<Value>, (String, Option<u16>)> {
        match self.fetch(event).await {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.skip_on_error => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self, event: &Event) -> Result<Value, (String, Option<u16>)> {
        let vars = event.activation();
        let url = self
            .url
            .render_with(&vars, |s| urlencoding::encode(s).into_owned())
            .map_err(|e| (format!("url: {e}"), None))?;
        let body = match &self.body {
            Some(jq) => Some(
                jq.run_one(&event.data)
                    .map_err(|e| (format!("body: {e}"), None))?,
            ),
            None => None,
        };
        let key = format!(
            "{url}\n{}",
            body.as_ref().map(Value::to_string).unwrap_or_default()
        );
        if let Some(ttl) = self.cache_ttl {
            let cache = self.cache.lock().expect("enrich cache lock");
            if let Some((at, value)) = cache.get(&key)
                && at.elapsed() < ttl
            {
                return Ok(value.clone());
            }
        }
        let request = match self.method {
            EnrichMethod::Get => self.client.get(&url),
            EnrichMethod::Post => self.client.post(&url).json(&body.unwrap_or(Value::Null)),
        }
        .headers(self.headers.clone())
        .header("accept", "application/json");
        let (_, _, bytes) = crate::outbound::send(&self.client, request, self.timeout, "enrich")
            .await
            .map_err(|e| (e.message, e.status))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                format!(
                    "enrich response from {} is not JSON: {e}",
                    crate::outbound::redact_url_str(&url)
                ),
                None,
            )
        })?;
        if let Some(ttl) = self.cache_ttl {
            let mut cache = self.cache.lock().expect("enrich cache lock");
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), value.clone()));
        }
        Ok(value)
    }
}
