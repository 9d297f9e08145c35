//! The ai step: asks a language model about the event through an OpenAI-compatible Chat
//! Completions API and stores its answer — a JSON object matching the step's schema — under
//! `resultField` of the event data.
//!
//! ```text
//!  event ─▶ render prompts (expression thread) ─▶ cache? ─hit──────────────────────▶ store
//!                                                  │ miss
//!                                                  ▼
//!            permit (maxConcurrency) ─▶ POST (timeout) ─▶ 2xx ─▶ parse, check schema ─ok─▶ store
//!               ▲                          │ 429/5xx/timeout       │ not JSON / no match
//!               └── backoff, Retry-After ◀─┘ (retry policy)        └─ once more, then `model-output`
//! ```
//!
//! Failure classes (the dead-letter record's `error.class`): `ai` — no usable answer after the
//! retries (a status, a timeout, a connection failure, an answer not in the Chat Completions
//! format), with the HTTP status; `model-output` — twice an answer that was not JSON or did not
//! match the schema (or a refusal); `expression`/`budget` — a prompt template that could not be
//! rendered. The API key is sent as a sensitive header and appears in no message, log or
//! `Debug` output.

#[cfg(test)]
mod tests;
mod wire;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue, header::AUTHORIZATION};
use inputbot_api::{
    ai::{
        AiStep, DEFAULT_AI_ATTEMPTS, DEFAULT_AI_CACHE_ENTRIES, DEFAULT_AI_CONCURRENCY,
        DEFAULT_AI_MAX_DELAY, DEFAULT_AI_SCHEMA_NAME, DEFAULT_AI_TIMEOUT,
    },
    config::{FailureClass, RetryPolicy},
    expr::{EvalError, Limits, Scope, Template},
};
use serde_json::Value;
use tokio::sync::Semaphore;

use self::wire::{Completion, Settings};
use super::cache::{self, Cache, MAX_CACHE_BYTES};
use crate::{
    delivery::{AttemptError, retry_delay},
    eval,
    event::Event,
    metrics::{AiLabels, AiTokenLabels, Metrics, StageLabels},
    outbound,
    secrets::Secrets,
};

/// Schema violations quoted in a `model-output` message at most.
const VIOLATIONS_QUOTED: usize = 3;

/// Why the step failed for an event: the dead-letter class, message and HTTP status.
#[derive(Debug)]
pub(super) struct Failure {
    pub class: &'static str,
    pub message: String,
    pub status: Option<u16>,
}

impl Failure {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            status: None,
        }
    }
}

/// Where the step's metrics go.
struct StepMetrics {
    metrics: Arc<Metrics>,
    resource: String,
    step: String,
}

impl StepMetrics {
    fn labels(&self, result: &str) -> AiLabels {
        AiLabels {
            resource: self.resource.clone(),
            step: self.step.clone(),
            result: result.to_owned(),
        }
    }

    fn call(&self, result: &str, took: Duration) {
        self.metrics
            .ai_calls
            .get_or_create(&self.labels(result))
            .inc();
        self.metrics
            .ai_call_seconds
            .get_or_create(&StageLabels {
                resource: self.resource.clone(),
                stage: self.step.clone(),
            })
            .observe(took.as_secs_f64());
    }

    fn cache(&self, hit: bool) {
        self.metrics
            .ai_cache
            .get_or_create(&self.labels(if hit { "hit" } else { "miss" }))
            .inc();
    }

    fn tokens(&self, prompt: u64, completion: u64) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            self.metrics
                .ai_tokens
                .get_or_create(&AiTokenLabels {
                    resource: self.resource.clone(),
                    step: self.step.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
    }
}

/// A compiled ai step.
pub(super) struct Ai {
    url: reqwest::Url,
    /// The API key header, marked sensitive. Never in a message or in `Debug`.
    auth: Option<(HeaderName, HeaderValue)>,
    model: String,
    schema_name: String,
    schema: Value,
    strict: bool,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    validator: jsonschema::Validator,
    prompts: Arc<(Option<Template>, Template)>,
    result_field: String,
    timeout: Duration,
    retry: RetryPolicy,
    permits: Semaphore,
    cache: Option<Cache>,
    metrics: StepMetrics,
    client: reqwest::Client,
}

impl std::fmt::Debug for Ai {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiStep")
            .field("url", &outbound::redact_url(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.auth.as_ref().map(|_| "(from a Secret)"))
            .field("result_field", &self.result_field)
            .finish_non_exhaustive()
    }
}

impl Ai {
    /// Compiles the step; errors name the field (relative to `ai.`).
    pub(super) fn new(
        spec: &AiStep,
        secrets: &Secrets,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        resource: &str,
        step: &str,
    ) -> Result<Self, (String, String)> {
        let bad = |field: &str, message: String| (field.to_owned(), message);
        let url = reqwest::Url::parse(&spec.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                bad(
                    "url",
                    format!(
                        "expected an http or https URL, found {:?}",
                        outbound::redact_url_str(&spec.url)
                    ),
                )
            })?;
        let auth = match &spec.api_key_secret_ref {
            None => None,
            Some(r) => {
                let key = secrets
                    .get_string(r)
                    .map_err(|e| bad("apiKeySecretRef", e.to_string()))?;
                let (name, text) = match &spec.api_key_header {
                    Some(h) => (
                        HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                            bad("apiKeyHeader", format!("not a valid header name: {h:?}"))
                        })?,
                        key.trim().to_owned(),
                    ),
                    None => (AUTHORIZATION, format!("Bearer {}", key.trim())),
                };
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    bad(
                        "apiKeySecretRef",
                        format!(
                            "{} holds a value that cannot be sent in a header (visible ASCII only)",
                            secrets.label(r)
                        ),
                    )
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        let validator = jsonschema::validator_for(&spec.response_schema)
            .map_err(|e| bad("responseSchema", format!("JSON Schema cannot be used: {e}")))?;
        let template = |source: &str, field: &str| {
            Template::compile(source, Scope::Event).map_err(|e| bad(field, e))
        };
        let prompts = (
            spec.system_prompt
                .as_deref()
                .map(|s| template(s, "systemPrompt"))
                .transpose()?,
            template(&spec.user_prompt, "userPrompt")?,
        );
        let duration = |d: Option<&inputbot_api::common::Duration>, field: &str| {
            d.map(|d| match d.to_std() {
                Ok(v) if !v.is_zero() => Ok(v),
                Ok(_) => Err(bad(field, "expected a duration greater than zero".into())),
                Err(e) => Err(bad(field, e)),
            })
            .transpose()
        };
        let cache = match &spec.cache {
            None => None,
            Some(c) => Some(Cache::new(
                duration(Some(&c.ttl), "cache.ttl")?.unwrap_or_default(),
                c.max_entries.unwrap_or(DEFAULT_AI_CACHE_ENTRIES) as usize,
                MAX_CACHE_BYTES,
            )),
        };
        Ok(Self {
            url,
            auth,
            model: spec.model.clone(),
            schema_name: spec
                .schema_name
                .clone()
                .unwrap_or_else(|| DEFAULT_AI_SCHEMA_NAME.to_owned()),
            schema: spec.response_schema.clone(),
            strict: spec.strict.unwrap_or(true),
            temperature: spec.temperature,
            max_tokens: spec.max_tokens,
            validator,
            prompts: Arc::new(prompts),
            result_field: spec.result_field.clone(),
            timeout: duration(spec.timeout.as_ref(), "timeout")?.unwrap_or(DEFAULT_AI_TIMEOUT),
            retry: RetryPolicy::from_spec(
                spec.retry.as_ref(),
                DEFAULT_AI_ATTEMPTS,
                DEFAULT_AI_MAX_DELAY,
            ),
            permits: Semaphore::new(spec.max_concurrency.unwrap_or(DEFAULT_AI_CONCURRENCY) as usize),
            cache,
            metrics: StepMetrics {
                metrics,
                resource: resource.to_owned(),
                step: step.to_owned(),
            },
            client,
        })
    }

    /// Asks the model (or the cache) and stores the answer under `resultField`; on a failure
    /// the event is left as it was.
    pub(super) async fn apply(&self, event: &mut Event, limits: Limits) -> Result<(), Failure> {
        if !event.data.is_object() {
            return Err(Failure::new(
                "ai",
                format!(
                    "cannot store the answer under {:?}: the event data is not an object",
                    self.result_field
                ),
            ));
        }
        let vars = event.activation();
        let prompts = self.prompts.clone();
        let (system, user) = eval::run(limits, move || {
            let system = match &prompts.0 {
                Some(t) => Some(
                    t.render(&vars)
                        .map_err(|e| EvalError::Failed(format!("systemPrompt: {e}")))?,
                ),
                None => None,
            };
            let user = prompts
                .1
                .render(&vars)
                .map_err(|e| EvalError::Failed(format!("userPrompt: {e}")))?;
            Ok((system, user))
        })
        .await
        .map_err(|e| Failure::new(e.class("expression"), e.to_string()))?;
        let request = wire::request(
            &Settings {
                model: &self.model,
                schema_name: &self.schema_name,
                schema: &self.schema,
                strict: self.strict,
                temperature: self.temperature,
                max_tokens: self.max_tokens,
            },
            system.as_deref(),
            &user,
        );
        let key = self
            .cache
            .as_ref()
            .map(|_| cache::key(&request.to_string()));
        let cached = match (&self.cache, &key) {
            (Some(cache), Some(key)) => {
                let found = cache.get(key);
                self.metrics.cache(found.is_some());
                found
            }
            _ => None,
        };
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.ask(&request).await?;
                if let (Some(cache), Some(key)) = (&self.cache, key) {
                    cache.put(key, answer.clone());
                }
                answer
            }
        };
        if let Value::Object(map) = &mut event.data {
            map.insert(self.result_field.clone(), answer);
        }
        Ok(())
    }

    /// A valid answer, asking a second time when the first is not JSON or does not match.
    async fn ask(&self, request: &Value) -> Result<Value, Failure> {
        let mut first_problem = String::new();
        for asked in 1..=2 {
            let (completion, took) = self.call(request).await?;
            let checked = self.check(&completion);
            self.metrics
                .call(if checked.is_ok() { "ok" } else { "invalid" }, took);
            match checked {
                Ok(answer) => return Ok(answer),
                Err(problem) => {
                    tracing::debug!(target: "inputbot::stage", step = %self.metrics.step, asked,
                        "the model's answer was not usable: {problem}");
                    if asked == 1 {
                        first_problem = problem;
                    } else {
                        let again = if problem == first_problem {
                            "the same again".to_owned()
                        } else {
                            problem
                        };
                        return Err(Failure::new(
                            "model-output",
                            format!(
                                "the model's answer did not match the response schema, twice: {first_problem}; asked again: {again}"
                            ),
                        ));
                    }
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// One completion, retrying failed calls under the step's retry policy.
    /// The completion comes with the time its call took.
    async fn call(&self, request: &Value) -> Result<(Completion, Duration), Failure> {
        let max_attempts = self.retry.max_attempts.max(1);
        let target = format!("POST {}", outbound::redact_url(&self.url));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = {
                // Held only for the call itself, not while waiting to retry. The semaphore is
                // never closed.
                let _permit = self.permits.acquire().await.ok();
                let mut builder = self
                    .client
                    .post(self.url.clone())
                    .header(http::header::ACCEPT, "application/json")
                    .json(request);
                if let Some((name, value)) = &self.auth {
                    builder = builder.header(name.clone(), value.clone());
                }
                match builder.build() {
                    Ok(built) => {
                        outbound::send_request(&self.client, built, self.timeout, "ai: ", &target)
                            .await
                    }
                    Err(e) => Err(AttemptError::new(
                        FailureClass::Other,
                        format!(
                            "ai: cannot build the request: {}",
                            outbound::chain(&e.without_url())
                        ),
                    )),
                }
            };
            let took = started.elapsed();
            let error = match result {
                Ok((_, _, body)) => match serde_json::from_slice::<Completion>(&body) {
                    Ok(completion) => {
                        if let Some(u) = &completion.usage {
                            self.metrics.tokens(u.prompt_tokens, u.completion_tokens);
                        }
                        return Ok((completion, took));
                    }
                    Err(e) => AttemptError::new(
                        FailureClass::Other,
                        format!(
                            "ai: the answer from {target} is not a chat completion ({e}){}",
                            outbound::preview(&body)
                        ),
                    ),
                },
                Err(error) => error,
            };
            self.metrics.call("error", took);
            if !self.retry.retries(&error.class) || attempt >= max_attempts {
                let tries = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(Failure {
                    class: "ai",
                    message: format!("{}{tries}", error.message),
                    status: error.status,
                });
            }
            let delay = retry_delay(&self.retry, attempt, error.retry_after, &mut rand::rng());
            tracing::debug!(target: "inputbot::stage", step = %self.metrics.step, attempt,
                status = error.status, delay_ms = delay.as_millis() as u64,
                "model call failed, retrying: {}", error.message);
            tokio::time::sleep(delay).await;
        }
    }

    /// The answer of a completion, checked against the schema; the problem otherwise.
    fn check(&self, completion: &Completion) -> Result<Value, String> {
        let choice = completion
            .choices
            .first()
            .ok_or("the completion has no choices")?;
        if let Some(refusal) = &choice.message.refusal {
            return Err(format!(
                "the model refused: {}",
                outbound::one_line(&refusal.chars().take(200).collect::<String>())
            ));
        }
        let content = choice.message.content.as_deref().unwrap_or_default();
        let truncated = if choice.finish_reason.as_deref() == Some("length") {
            " (finish_reason: length — the answer was cut off; raise maxTokens)"
        } else {
            ""
        };
        let answer: Value = serde_json::from_str(wire::answer_text(content)).map_err(|e| {
            format!(
                "the answer is not JSON ({e}){truncated}{}",
                outbound::preview(content.as_bytes())
            )
        })?;
        let violations: Vec<String> = self
            .validator
            .iter_errors(&answer)
            .take(VIOLATIONS_QUOTED)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if violations.is_empty() {
            Ok(answer)
        } else {
            Err(format!(
                "the answer does not match the schema: {}",
                violations.join("; ")
            ))
        }
    }
}
