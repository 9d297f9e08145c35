//! Request parsing: a webhook body becomes an event — a CloudEvent (see
//! [`cloudevents`](super::cloudevents)), a JSON document, or a form — and every refusal becomes
//! the same JSON answer `{"error": {"status", "reason", "message"}}`.

use axum::{
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    Route,
    cloudevents::{is_traceparent, parse_cloudevent},
};
use crate::event::Event;

/// A refusal: status, stable reason, message, and optional extra headers.
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
    pub(super) allow: bool,
    /// The `WWW-Authenticate` challenge of a `401`.
    pub(super) challenge: Option<&'static str>,
}

impl Refusal {
    pub(super) fn new(
        status: StatusCode,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
            allow: false,
            challenge: None,
        }
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"status": self.status.as_u16(), "reason": self.reason, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(challenge) = self
            .challenge
            .filter(|_| self.status == StatusCode::UNAUTHORIZED)
        {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        if self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        response
    }
}

pub(super) fn lower_case_headers(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            map.insert(
                name.as_str().to_ascii_lowercase(),
                Value::String(v.to_owned()),
            );
        }
    }
    Value::Object(map)
}

/// Turns the body into an event: a CloudEvent (binary or structured mode), a JSON document, or
/// a form.
pub(super) fn parse(route: &Route, headers: &HeaderMap, bytes: &[u8]) -> Result<Event, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let is_cloudevent =
        headers.contains_key("ce-specversion") || media == "application/cloudevents+json";
    if is_cloudevent {
        return parse_cloudevent(route, headers, bytes);
    }
    let data = if media.is_empty() || media == "application/json" || media.ends_with("+json") {
        serde_json::from_slice::<Value>(bytes).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        })?
    } else if media == "application/x-www-form-urlencoded" {
        let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Value::Object(map)
    } else {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "expected application/json, application/x-www-form-urlencoded or a CloudEvent, found {media}"
            ),
        ));
    };
    let mut event = Event::new(&route.bot, &route.source, &route.event_type, data);
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && is_traceparent(tp)
    {
        event.traceparent = Some(tp.to_owned());
    }
    Ok(event)
}
