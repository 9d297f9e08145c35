//! The http action: one request per attempt to a URL template (values URL-encoded), with the
//! configured headers, a body (`jq` → JSON, `template` → text, none → the event data, except
//! for `GET` and `DELETE`), the idempotency header with the event id, and the CloudEvents
//! binary-mode attributes and `traceparent`.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use inputbot_api::{
    binding::{HttpAction, HttpMethod},
    expr::{JqProgram, Limits, Scope, Template},
};

use super::{
    ActionImpl, BuildError, DEFAULT_HTTP_TIMEOUT, DEFAULT_IDEMPOTENCY_HEADER, other, timeout_of,
};
use crate::{
    delivery::AttemptError,
    event::Event,
    outbound::{OAuth2, redact_url, render_url, resolve_headers, send_request_with},
    secrets::Secrets,
};

enum HttpBody {
    /// jq over the data, sent as JSON.
    Jq(JqProgram, HeaderValue),
    /// A text template.
    Template(Template, HeaderValue),
    /// The event data as JSON (no body for GET and DELETE).
    EventData,
}

pub(super) struct HttpImpl {
    url_source: String,
    url: Template,
    method: reqwest::Method,
    headers: HeaderMap,
    body: HttpBody,
    timeout: Duration,
    idempotency_header: Option<HeaderName>,
    oauth2: Option<OAuth2>,
    client: reqwest::Client,
}

impl fmt::Debug for HttpImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may come from Secrets.
        let headers: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        let body = match &self.body {
            HttpBody::Jq(jq, _) => format!("jq {:?}", jq.source()),
            HttpBody::Template(..) => "template".to_owned(),
            HttpBody::EventData => "event data".to_owned(),
        };
        f.debug_struct("HttpAction")
            .field("method", &self.method.as_str())
            .field("url", &self.url_source)
            .field("headers", &headers)
            .field("body", &body)
            .field("timeout", &self.timeout)
            .field(
                "idempotency_header",
                &self.idempotency_header.as_ref().map(HeaderName::as_str),
            )
            .field("oauth2", &self.oauth2)
            .finish()
    }
}

impl HttpImpl {
    pub(super) fn build(
        spec: &HttpAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        // Schemes are case-insensitive (RFC 3986 §3.1), as validation takes them.
        let scheme = spec.url.get(..8).unwrap_or(&spec.url).to_ascii_lowercase();
        if !(scheme.starts_with("http://") || scheme.starts_with("https://")) {
            return Err(BuildError::invalid(
                "http.url",
                "must start with http:// or https://",
            ));
        }
        let url = Template::compile(&spec.url, Scope::Event)
            .map_err(|e| BuildError::invalid("http.url", e))?;
        if !spec.url.contains("{{") {
            reqwest::Url::parse(&spec.url)
                .map_err(|e| BuildError::invalid("http.url", format!("not a valid URL: {e}")))?;
        }
        let method = match spec.method.unwrap_or_default() {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Delete => reqwest::Method::DELETE,
        };
        let headers = resolve_headers(&spec.headers, secrets, "http.headers")?;
        let content_type = |given: Option<&String>, default: &'static str| {
            given.map_or(Ok(HeaderValue::from_static(default)), |ct| {
                HeaderValue::from_str(ct).map_err(|_| {
                    BuildError::invalid("http.body.contentType", "not a valid header value")
                })
            })
        };
        let body = match &spec.body {
            None => HttpBody::EventData,
            Some(body) => match (&body.jq, &body.template) {
                (Some(jq), None) => HttpBody::Jq(
                    JqProgram::compile(jq).map_err(|e| BuildError::invalid("http.body.jq", e))?,
                    content_type(body.content_type.as_ref(), "application/json")?,
                ),
                (None, Some(template)) => HttpBody::Template(
                    Template::compile(template, Scope::Event)
                        .map_err(|e| BuildError::invalid("http.body.template", e))?,
                    content_type(body.content_type.as_ref(), "text/plain; charset=utf-8")?,
                ),
                _ => {
                    return Err(BuildError::invalid(
                        "http.body",
                        "set exactly one of jq or template",
                    ));
                }
            },
        };
        let idempotency_header = match spec
            .idempotency_header
            .as_deref()
            .unwrap_or(DEFAULT_IDEMPOTENCY_HEADER)
        {
            "" => None,
            name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                BuildError::invalid("http.idempotencyHeader", "not a valid header name")
            })?),
        };
        let oauth2 = spec
            .oauth2
            .as_ref()
            .map(|o| OAuth2::new(o, secrets, "http.oauth2", client.clone()))
            .transpose()?;
        if oauth2.is_some() && headers.contains_key(http::header::AUTHORIZATION) {
            return Err(BuildError::invalid(
                "http.headers.Authorization",
                "cannot be set with http.oauth2, which sends the Authorization header",
            ));
        }
        Ok(Self {
            url_source: spec.url.clone(),
            url,
            method,
            headers,
            body,
            timeout: timeout_of(spec.timeout.as_ref(), "http.timeout", DEFAULT_HTTP_TIMEOUT)?,
            idempotency_header,
            oauth2,
            client,
        })
    }

    /// The request for `event`; an error here is the event's fault ([`FailureClass::Other`]).
    async fn request(&self, event: &Event) -> Result<reqwest::Request, AttemptError> {
        let vars = event.activation();
        let url = render_url(&self.url, &vars).map_err(|e| other(format!("http.url: {e}")))?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| other(format!("http.url: the rendered URL is not valid: {e}")))?;
        let (body, content_type) = match &self.body {
            HttpBody::Jq(jq, ct) => {
                // On an expression thread, under the default limits: a runaway body program
                // fails this event, never the worker delivering the others.
                let value = crate::eval::jq_one(jq, &event.data, Limits::default())
                    .await
                    .map_err(|e| other(format!("http.body.jq: {e}")))?;
                (Some(value.to_string().into_bytes()), Some(ct.clone()))
            }
            HttpBody::Template(template, ct) => {
                let text = template
                    .render(&vars)
                    .map_err(|e| other(format!("http.body.template: {e}")))?;
                (Some(text.into_bytes()), Some(ct.clone()))
            }
            HttpBody::EventData
                if matches!(self.method, reqwest::Method::GET | reqwest::Method::DELETE) =>
            {
                (None, None)
            }
            HttpBody::EventData => (
                Some(event.data.to_string().into_bytes()),
                Some(HeaderValue::from_static("application/json")),
            ),
        };
        let mut headers = self.headers.clone();
        if let Some(ct) = content_type
            && !headers.contains_key(CONTENT_TYPE)
        {
            headers.insert(CONTENT_TYPE, ct);
        }
        if let Some(name) = &self.idempotency_header {
            let id = HeaderValue::from_str(&event.id).map_err(|_| {
                other("http.idempotencyHeader: the event id is not a valid header value")
            })?;
            headers.insert(name.clone(), id);
        }
        cloudevent_headers(event, &mut headers);
        let mut request = reqwest::Request::new(self.method.clone(), url);
        *request.headers_mut() = headers;
        if let Some(body) = body {
            *request.body_mut() = Some(body.into());
        }
        Ok(request)
    }
}

/// The CloudEvents HTTP binary-mode attributes and the trace context. Attributes that are not
/// valid header values are left out.
fn cloudevent_headers(event: &Event, headers: &mut HeaderMap) {
    let attributes = [
        ("ce-specversion", Some("1.0".to_owned())),
        ("ce-id", Some(event.id.clone())),
        ("ce-source", Some(event.source.clone())),
        ("ce-type", Some(event.ty.clone())),
        ("ce-time", Some(event.time.to_rfc3339())),
        ("ce-subject", event.subject.clone()),
        ("traceparent", event.traceparent.clone()),
    ];
    for (name, value) in attributes {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

impl ActionImpl for HttpImpl {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let request = self.request(event).await?;
            let target = format!("{} {}", request.method(), redact_url(request.url()));
            send_request_with(
                &self.client,
                self.oauth2.as_ref(),
                request,
                self.timeout,
                "",
                &target,
            )
            .await?;
            Ok(())
        })
    }
}
