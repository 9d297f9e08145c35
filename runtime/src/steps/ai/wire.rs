//! The Chat Completions wire format, as OpenAI documents it (and compatible servers speak it):
//! the request inputbot sends and the parts of the answer it reads.
//!
//! ```text
//!  POST <url>  {"model": "…", "messages": [{"role": "system", "content": "…"},
//!                                          {"role": "user", "content": "…"}],
//!               "response_format": {"type": "json_schema",
//!                                   "json_schema": {"name": "answer", "schema": {…}, "strict": true}},
//!               "temperature": 0, "max_tokens": 200}
//!  200        {"id": "chatcmpl-…", "object": "chat.completion", "model": "…",
//!               "choices": [{"index": 0, "finish_reason": "stop",
//!                            "message": {"role": "assistant", "content": "{\"intent\": …}", "refusal": null}}],
//!               "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}}
//! ```

use serde::Deserialize;
use serde_json::{Value, json};

/// What the request is made of besides the messages.
pub(super) struct Settings<'a> {
    pub model: &'a str,
    pub schema_name: &'a str,
    pub schema: &'a Value,
    pub strict: bool,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// The request body for one event's messages.
pub(super) fn request(settings: &Settings<'_>, system: Option<&str>, user: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user}));
    let mut body = json!({
        "model": settings.model,
        "messages": messages,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": settings.schema_name,
                "schema": settings.schema,
                "strict": settings.strict,
            },
        },
    });
    if let Some(t) = settings.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = settings.max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

/// A chat completion: the choices and the token usage.
#[derive(Debug, Deserialize)]
pub(super) struct Completion {
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One choice of a completion.
#[derive(Debug, Deserialize)]
pub(super) struct Choice {
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant's message.
#[derive(Debug, Deserialize)]
pub(super) struct Message {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
}

/// Tokens used by a call.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The JSON text of an answer: the content, without the Markdown code fence some servers wrap
/// it in when they do not enforce the schema.
pub(super) fn answer_text(content: &str) -> &str {
    let text = content.trim();
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_lose_a_markdown_fence() {
        assert_eq!(answer_text(" {\"a\":1} "), "{\"a\":1}");
        assert_eq!(answer_text("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(answer_text("```\n{}\n```"), "{}");
    }

    #[test]
    fn the_request_carries_the_schema_as_response_format() {
        let schema = json!({"type": "object"});
        let body = request(
            &Settings {
                model: "m",
                schema_name: "answer",
                schema: &schema,
                strict: true,
                temperature: Some(0.0),
                max_tokens: None,
            },
            None,
            "hi",
        );
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
        assert!(body.get("max_tokens").is_none());
    }
}
