//! The `ai` pipeline step: one call per event to an OpenAI-compatible Chat Completions API
//! (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM…) whose answer, a JSON
//! object matching a JSON Schema, is stored under a field of the event data.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    binding::Retry,
    common::{Duration, SecretKeyRef, any_object},
};

/// Attempts of one model call when `retry.maxAttempts` is not set.
pub const DEFAULT_AI_ATTEMPTS: u32 = 3;
/// Longest wait between attempts of a model call when `retry.maxDelay` is not set.
pub const DEFAULT_AI_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(10);
/// Timeout of one model call when `timeout` is not set.
pub const DEFAULT_AI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Calls one step makes at once (per replica) when `maxConcurrency` is not set.
pub const DEFAULT_AI_CONCURRENCY: u32 = 4;
/// Answers a step's cache keeps when `cache.maxEntries` is not set.
pub const DEFAULT_AI_CACHE_ENTRIES: u32 = 1000;
/// Name of the answer's schema sent to the model when `schemaName` is not set.
pub const DEFAULT_AI_SCHEMA_NAME: &str = "answer";

/// Ask a language model about the event and store its structured answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiStep {
    /// The Chat Completions endpoint, e.g. `https://api.example.com/v1/chat/completions`, or a
    /// local server such as Ollama's `http://127.0.0.1:11434/v1/chat/completions`. The event
    /// data is sent there: choose a provider whose data handling you accept.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Model name, as the server knows it, e.g. `gpt-4o-mini` or `llama3.1:8b`.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// The API key, from a Secret. Sent as `Authorization: Bearer <key>` (or in `apiKeyHeader`).
    /// Leave it out for local servers that need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Send the API key as the value of this header instead of `Authorization: Bearer`, e.g.
    /// `api-key` for Azure OpenAI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub api_key_header: Option<String>,
    /// The system message: instructions with `{{ }}` CEL expressions over `data`, `event` and
    /// `labels`, e.g. `Classify the support ticket. Answer in JSON.`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub system_prompt: Option<String>,
    /// The user message with `{{ }}` CEL expressions over `data`, `event` and `labels`, e.g.
    /// `Subject: {{ data.subject }}\n\n{{ data.text }}`.
    #[schemars(length(min = 1, max = 65536))]
    pub user_prompt: String,
    /// JSON Schema the answer must match (a JSON object). Sent to the model as
    /// `response_format: {type: json_schema}` and checked on return: an answer that is not JSON
    /// or does not match is asked for once more, then the event is dead-lettered with class
    /// `model-output`. With `strict` (the default) OpenAI requires every property to be listed
    /// in `required` and `additionalProperties: false`.
    #[schemars(schema_with = "any_object")]
    pub response_schema: serde_json::Value,
    /// Name of the schema sent to the model (letters, digits, `_` and `-`). Defaults to
    /// `answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub schema_name: Option<String>,
    /// Ask the server to follow the schema exactly (`json_schema.strict`). Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Field of the event data the answer is stored under, e.g. `ai`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub result_field: String,
    /// Sampling temperature, 0 to 2. Defaults to the server's; 0 makes answers (and the cache)
    /// most repeatable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Most tokens the model may generate for one answer (`max_tokens`): a bound on cost and
    /// latency. Defaults to the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_tokens: Option<u32>,
    /// Timeout of one call. Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of a failed call, as for actions. Defaults: 3 attempts, exponential backoff from
    /// 1s up to 10s with jitter, on `429`, `5xx`, timeouts and connection failures, waiting as
    /// long as `Retry-After` asks (up to `maxDelay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Most calls this step makes at once per replica; further events wait. Defaults to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: Option<u32>,
    /// Reuse answers for identical prompts (same model, messages and schema) for a while.
    /// Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<AiCache>,
}

/// The answer cache of an `ai` step (per replica, in memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiCache {
    /// How long an answer is reused, e.g. `1h`.
    pub ttl: Duration,
    /// Most answers kept; the oldest is dropped first. Defaults to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_entries: Option<u32>,
}
