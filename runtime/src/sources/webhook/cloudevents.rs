//! The CloudEvents HTTP binding: binary mode (`ce-*` headers) and structured mode
//! (`application/cloudevents+json`) become an event with the sender's id, source, type,
//! subject, time and extensions; a valid W3C `traceparent` is kept.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{Route, request::Refusal};
use crate::event::Event;

pub(super) fn parse_cloudevent(
    route: &Route,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Event, Refusal> {
    use cloudevents::{AttributesReader, event::ExtensionValue};
    let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, "invalid_cloudevent", m);
    let ce = cloudevents::binding::http::to_event(headers, bytes.to_vec())
        .map_err(|e| bad(format!("not a valid CloudEvent: {e}")))?;
    let data = match ce.data() {
        None => Value::Null,
        Some(cloudevents::Data::Json(v)) => v.clone(),
        Some(cloudevents::Data::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b)
            .map_err(|_| bad("CloudEvent data must be JSON (or a JSON string)".to_owned()))?,
    };
    let mut event = Event::new(&route.bot, &route.source, ce.ty(), data);
    event.id = ce.id().to_owned();
    event.source = ce.source().to_string();
    event.subject = ce.subject().map(str::to_owned);
    if let Some(t) = ce.time() {
        event.time = *t;
    }
    let mut extensions = BTreeMap::new();
    for (name, value) in ce.iter_extensions() {
        let text = match value {
            ExtensionValue::String(s) => s.clone(),
            ExtensionValue::Boolean(b) => b.to_string(),
            ExtensionValue::Integer(i) => i.to_string(),
        };
        if name == "traceparent" {
            if is_traceparent(&text) {
                event.traceparent = Some(text);
            }
        } else {
            extensions.insert(name.to_owned(), text);
        }
    }
    event.extensions = extensions;
    Ok(event)
}

pub(super) fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 4
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}
