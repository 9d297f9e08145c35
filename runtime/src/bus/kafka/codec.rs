//! The CloudEvents Kafka binding, binary mode: the event's attributes as `ce_` headers, its
//! data as the record's value (JSON), `content-type: application/json`, the W3C `traceparent`
//! as its own header, and the `partitionkey` extension as the record key.
//!
//! ```text
//!  key      partitionkey extension, else the event's source
//!  headers  ce_specversion ce_id ce_source ce_type ce_time [ce_subject]
//!           ce_inputbotbot ce_inputbotsource [ce_inputbotlabels (JSON array)]
//!           [ce_inputbotauth (JSON object: the verified auth)] [ce_<extension>…]
//!           content-type  traceparent
//!  value    the data, JSON
//! ```
//!
//! Decoding is lenient, so that no record is ever dropped for its shape: a record without
//! `ce_` headers (a structured-mode CloudEvent, or plain JSON someone produced) becomes an
//! event the way the webhook wraps plain JSON, and a value that is not JSON becomes a string.
//!
//! Dead letters travel as their whole record (JSON) in the value, with the failure's summary as
//! `inputbot_dlq_*` headers beside the original event's `ce_` headers, so a person (or
//! `kcat`) sees why without decoding the value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde_json::Value;

use crate::{dlq::DeadLetter, event::Event};

/// The CloudEvents extension whose value is the record's key.
pub const PARTITION_KEY: &str = "partitionkey";

/// Header names this binding writes for its own attributes (not passed as extensions).
const OWN: &[&str] = &[
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "ce_inputbotbot",
    "ce_inputbotsource",
    "ce_inputbotlabels",
    "ce_inputbotauth",
    "ce_traceparent",
    "ce_datacontenttype",
];

/// The longest error message a dead-letter header carries (the value has it whole).
const HEADER_MESSAGE_MAX: usize = 512;

/// The record key of an event: its `partitionkey` extension (the idempotency key, when the
/// source has one), else its source — so events of one key stay in order on one partition.
pub fn key(event: &Event) -> &str {
    event
        .extensions
        .get(PARTITION_KEY)
        .map(String::as_str)
        .unwrap_or(&event.source)
}

/// An event's headers and value.
pub fn encode(event: &Event) -> (OwnedHeaders, Vec<u8>) {
    let headers = event_headers(OwnedHeaders::new_with_capacity(12), event);
    // Serializing a serde_json::Value cannot fail.
    let value = serde_json::to_vec(&event.data).unwrap_or_default();
    (headers, value)
}

fn event_headers(headers: OwnedHeaders, event: &Event) -> OwnedHeaders {
    let time = event.time.to_rfc3339();
    let labels = (!event.labels.is_empty())
        .then(|| serde_json::to_string(&event.labels).unwrap_or_default());
    let mut h = headers
        .insert(text("ce_specversion", "1.0"))
        .insert(text("ce_id", &event.id))
        .insert(text("ce_source", &event.source))
        .insert(text("ce_type", &event.ty))
        .insert(text("ce_time", &time))
        .insert(text("ce_inputbotbot", &event.bot))
        .insert(text("ce_inputbotsource", &event.bot_source))
        .insert(text("content-type", "application/json"));
    if let Some(subject) = &event.subject {
        h = h.insert(text("ce_subject", subject));
    }
    if let Some(labels) = &labels {
        h = h.insert(text("ce_inputbotlabels", labels));
    }
    let auth = event.auth.as_ref().map(Value::to_string);
    if let Some(auth) = &auth {
        h = h.insert(text("ce_inputbotauth", auth));
    }
    if let Some(tp) = &event.traceparent {
        h = h.insert(text("traceparent", tp));
    }
    for (name, value) in &event.extensions {
        let header = format!("ce_{name}");
        if !OWN.contains(&header.as_str()) {
            h = h.insert(Header {
                key: &header,
                value: Some(value.as_bytes()),
            });
        }
    }
    h
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// A dead letter's headers (the failure summary and the original event's attributes) and value
/// (the whole record, JSON).
pub fn encode_dead_letter(record: &DeadLetter) -> (OwnedHeaders, Vec<u8>) {
    let mut message = record.error.message.clone();
    if let Some((cut, _)) = message.char_indices().nth(HEADER_MESSAGE_MAX) {
        message.truncate(cut);
    }
    let resource = format!(
        "{}/{}/{}",
        record.failed_at.resource.kind,
        record.failed_at.resource.namespace,
        record.failed_at.resource.name
    );
    let attempts = record.error.attempts.to_string();
    let first = record.first_failure.to_rfc3339();
    let last = record.last_failure.to_rfc3339();
    let at = record.dead_lettered_at.to_rfc3339();
    let mut h = OwnedHeaders::new_with_capacity(24)
        .insert(text("inputbot_dlq_resource", &resource))
        .insert(text("inputbot_dlq_stage", &record.failed_at.stage))
        .insert(text("inputbot_dlq_name", &record.failed_at.name))
        .insert(text("inputbot_dlq_class", &record.error.class))
        .insert(text("inputbot_dlq_message", &message))
        .insert(text("inputbot_dlq_attempts", &attempts))
        .insert(text("inputbot_dlq_first_failure", &first))
        .insert(text("inputbot_dlq_last_failure", &last))
        .insert(text("inputbot_dlq_at", &at))
        .insert(text("inputbot_dlq_input_topic", &record.input_topic));
    let status = record.error.status.map(|s| s.to_string());
    if let Some(status) = &status {
        h = h.insert(text("inputbot_dlq_status", status));
    }
    if let Some(trace) = &record.trace_id {
        h = h.insert(text("inputbot_dlq_trace_id", trace));
    }
    let h = event_headers(h, &record.event);
    // Serializing the record (plain data) cannot fail.
    let value = serde_json::to_vec(record).unwrap_or_default();
    (h, value)
}

/// The dead letter in a record's value.
pub fn decode_dead_letter(value: &[u8]) -> Result<DeadLetter, serde_json::Error> {
    serde_json::from_slice(value)
}

/// The event in a record (see the module docs: never fails).
pub fn decode<H: Headers>(headers: Option<&H>, key: Option<&[u8]>, value: Option<&[u8]>) -> Event {
    let mut ce: BTreeMap<String, String> = BTreeMap::new();
    let mut traceparent = None;
    if let Some(headers) = headers {
        for h in headers.iter() {
            let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            if h.key.eq_ignore_ascii_case("traceparent") {
                traceparent = Some(v.to_owned());
            } else if let Some(name) = h.key.strip_prefix("ce_") {
                ce.insert(name.to_ascii_lowercase(), v.to_owned());
            }
        }
    }
    let data = match value {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    };
    let Some(id) = ce.remove("id") else {
        return wrap_plain(data, key, traceparent);
    };
    let bot = ce.remove("inputbotbot").unwrap_or_default();
    let bot_source = ce.remove("inputbotsource").unwrap_or_default();
    let source = ce
        .remove("source")
        .unwrap_or_else(|| format!("/inputbot/{bot}/{bot_source}"));
    let time = ce
        .remove("time")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let labels = ce
        .remove("inputbotlabels")
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
    let auth = ce
        .remove("inputbotauth")
        .and_then(|a| serde_json::from_str::<Value>(&a).ok())
        .filter(Value::is_object);
    if traceparent.is_none() {
        traceparent = ce.remove("traceparent");
    }
    let ty = ce
        .remove("type")
        .unwrap_or_else(|| "dev.inputbot.kafka".to_owned());
    let subject = ce.remove("subject");
    for own in ["specversion", "datacontenttype", "traceparent"] {
        ce.remove(own);
    }
    Event {
        id,
        source,
        ty,
        subject,
        time,
        data,
        labels,
        bot,
        bot_source,
        traceparent,
        extensions: ce,
        auth,
    }
}

/// A record that is no binary-mode CloudEvent: a structured-mode one is taken as it is, other
/// JSON is wrapped like the webhook wraps plain JSON.
fn wrap_plain(data: Value, key: Option<&[u8]>, traceparent: Option<String>) -> Event {
    if let Ok(mut event) = serde_json::from_value::<Event>(data.clone()) {
        if event.traceparent.is_none() {
            event.traceparent = traceparent;
        }
        return event;
    }
    let mut event = Event::new("", "kafka", "dev.inputbot.kafka", data);
    if let Some(tp) = traceparent {
        event.traceparent = Some(tp);
    }
    if let Some(k) = key.and_then(|k| std::str::from_utf8(k).ok()) {
        event
            .extensions
            .insert(PARTITION_KEY.to_owned(), k.to_owned());
    }
    event
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dlq::{ErrorInfo, FailedAt};

    fn header<'a>(h: &'a OwnedHeaders, name: &str) -> Option<&'a str> {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    #[test]
    fn an_event_round_trips_through_binary_mode() {
        let mut e = Event::new("ns/bot", "hook", "com.example.t", json!({"a": [1, "x"]}));
        e.subject = Some("s".into());
        e.labels = vec!["billing".into(), "a,b".into()];
        e.extensions.insert(PARTITION_KEY.into(), "k-1".into());
        e.extensions.insert("custom".into(), "v".into());
        let (h, value) = encode(&e);
        assert_eq!(header(&h, "ce_specversion"), Some("1.0"));
        assert_eq!(header(&h, "ce_id"), Some(e.id.as_str()));
        assert_eq!(header(&h, "ce_type"), Some("com.example.t"));
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert_eq!(header(&h, "traceparent"), e.traceparent.as_deref());
        assert_eq!(header(&h, "ce_partitionkey"), Some("k-1"));
        assert_eq!(key(&e), "k-1");
        assert_eq!(value, br#"{"a":[1,"x"]}"#);
        let back = decode(Some(&h), Some(b"k-1"), Some(&value));
        // Times keep their precision through RFC 3339.
        assert_eq!(back, e);
    }

    #[test]
    fn verified_auth_travels_as_its_own_header_and_a_senders_extension_cannot_forge_it() {
        let mut e = Event::new("ns/bot", "hook", "t", json!({}));
        e.auth = Some(json!({"scheme": "jwt", "claims": {"email": "a@corp.example"}}));
        // What a caller could put in a CloudEvent of its own.
        e.extensions.insert(
            "inputbotauth".into(),
            r#"{"scheme":"jwt","claims":{"admin":true}}"#.into(),
        );
        let (h, value) = encode(&e);
        let back = decode(Some(&h), None, Some(&value));
        assert_eq!(back.auth, e.auth);
        assert!(!back.extensions.contains_key("inputbotauth"));

        let mut plain = Event::new("ns/bot", "hook", "t", json!({}));
        plain
            .extensions
            .insert("inputbotauth".into(), r#"{"scheme":"jwt"}"#.into());
        let (h, value) = encode(&plain);
        assert_eq!(header(&h, "ce_inputbotauth"), None);
        assert_eq!(decode(Some(&h), None, Some(&value)).auth, None);
    }

    #[test]
    fn the_key_falls_back_to_the_source() {
        let e = Event::new("ns/bot", "hook", "t", json!(null));
        assert_eq!(key(&e), "/inputbot/ns/bot/hook");
    }

    #[test]
    fn plain_and_structured_records_become_events() {
        let e = decode::<OwnedHeaders>(None, Some(b"k"), Some(br#"{"x": 1}"#));
        assert_eq!(e.data, json!({"x": 1}));
        assert_eq!(
            e.extensions.get(PARTITION_KEY).map(String::as_str),
            Some("k")
        );
        let e = decode::<OwnedHeaders>(None, None, Some(b"not json"));
        assert_eq!(e.data, json!("not json"));
        let original = Event::new("ns/bot", "hook", "t", json!({"y": 2}));
        let structured = serde_json::to_vec(&original).unwrap();
        assert_eq!(
            decode::<OwnedHeaders>(None, None, Some(&structured)),
            original
        );
    }

    #[test]
    fn a_dead_letter_carries_its_reason_as_headers_and_the_whole_record_as_value() {
        let e = Event::new("ns/bot", "hook", "t", json!({"n": 1}));
        let record = DeadLetter::new(
            e.clone(),
            FailedAt {
                resource: inputbot_api::config::ResourceId::new("ActionBinding", "ns", "crm"),
                stage: "action".into(),
                name: "http".into(),
            },
            ErrorInfo {
                class: "status".into(),
                message: "HTTP 500 from http://target/".into(),
                status: Some(500),
                attempts: 3,
            },
            "inputbot.ns.p.out",
        );
        let (h, value) = encode_dead_letter(&record);
        assert_eq!(header(&h, "inputbot_dlq_class"), Some("status"));
        assert_eq!(header(&h, "inputbot_dlq_status"), Some("500"));
        assert_eq!(header(&h, "inputbot_dlq_attempts"), Some("3"));
        assert_eq!(header(&h, "inputbot_dlq_name"), Some("http"));
        assert_eq!(header(&h, "inputbot_dlq_trace_id"), e.trace_id());
        assert_eq!(header(&h, "ce_id"), Some(e.id.as_str()));
        assert_eq!(decode_dead_letter(&value).unwrap(), record);
    }
}
