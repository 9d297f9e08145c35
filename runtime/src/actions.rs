//! Actions: what an ActionBinding does with each event that reaches it.
//!
//! Each action is compiled once by [`build`] (templates, jq, Secrets, the SMTP transport) into
//! an [`ActionImpl`], and the delivery engine ([`crate::delivery::Deliverer`]) calls
//! [`ActionImpl::attempt`] once per attempt. Every failure is classified for the retry policy:
//!
//! | failure | class | retried by default |
//! |---|---|---|
//! | no answer within the timeout (HTTP or SMTP) | [`FailureClass::Timeout`] | yes |
//! | cannot connect, connection broke, TLS failed | [`FailureClass::Connection`] | yes |
//! | HTTP non-2xx answer | [`FailureClass::Status`]`(code)` with `Retry-After` | 429 and 5xx |
//! | SMTP transient reply (4xx: 421, 450, 451, 452, …) | [`FailureClass::Connection`] | yes |
//! | SMTP permanent reply (5xx: 550, 553, 554, …) | [`FailureClass::Other`] | no |
//! | a body, URL, text, subject or jq that cannot be evaluated for this event | [`FailureClass::Other`] | no |
//!
//! SMTP replies are *not* mapped to [`FailureClass::Status`]: `retryOn` speaks HTTP, where `5xx`
//! means "try again" and `4xx` "do not", while SMTP means the opposite (`4xx` transient, `5xx`
//! permanent). A transient SMTP reply is therefore retried like a connection failure, and a
//! permanent one is dead-lettered at once; the SMTP code is in the message.
//!
//! An **http** request carries the configured headers (Secrets resolved at build time), the
//! body (`jq` → JSON, `template` → text, none → the event data as JSON, except for `GET` and
//! `DELETE`, which then carry no body), `Content-Type` unless a configured header sets it, the
//! idempotency header with the event id, the CloudEvents binary-mode attributes (`ce-specversion`,
//! `ce-id`, `ce-source`, `ce-type`, `ce-time`, `ce-subject`) and `traceparent`.
//!
//! No message and no `Debug` output carries a Secret value: header values from Secrets, the
//! Slack webhook URL and the SMTP password are kept out of both, and URLs in messages lose their
//! query string and credentials.

use std::{fmt, io::Write as _, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::future::BoxFuture;
use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONTENT_TYPE, RETRY_AFTER},
};
use inputbot_api::{
    binding::{
        Action, ActionKind, EmailAction, HttpAction, HttpMethod, LogAction, SlackAction, SmtpTls,
    },
    common::{Duration as SpecDuration, Headers, SecretKeyRef},
    config::FailureClass,
    expr::{JqProgram, Scope, Template},
};
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use serde_json::json;

use crate::{
    delivery::AttemptError,
    event::Event,
    secrets::{SecretError, Secrets},
};

/// Default timeout of one HTTP or Slack attempt.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of one SMTP attempt.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default header carrying the event id on every HTTP attempt.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Largest successful response body [`send`] reads; a larger one is a failure of class
/// [`FailureClass::Other`] (memory stays bounded).
pub const MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;
/// How much of an error response body [`send`] reads (for the message).
const ERROR_BODY_BYTES: usize = 4096;
/// Characters of an error response body quoted in the message.
const ERROR_BODY_CHARS: usize = 200;

/// One action of an ActionBinding, compiled once (templates, jq, secrets, SMTP transport) and run
/// per attempt.
pub trait ActionImpl: Send + Sync {
    /// `http`, `slack`, `email`, `kafka`, `log`.
    fn kind(&self) -> &'static str;
    /// One attempt to deliver `event` (attempt is 1-based). Errors are classified for the retry
    /// policy.
    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>>;
}

impl fmt::Debug for dyn ActionImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActionImpl({})", self.kind())
    }
}

/// Why an action cannot be built. Every message starts with the field at fault and never
/// contains a Secret value.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A field has a value the runtime cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `http.url` or `http.headers.Authorization`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A referenced Secret value could not be read.
    #[error("{field}: {error}")]
    Secret {
        /// The field holding the reference, e.g. `slack.webhookSecretRef`.
        field: String,
        /// Why it could not be read (names the Secret and key only).
        error: SecretError,
    },
    /// Kafka actions need the Kafka bus; they are built by it, not here.
    #[error(
        "kafka.topic: writing to Kafka topic {topic:?} needs the Kafka bus, and the local embedded run has none; run the binding in a cluster (the act role) or use another action locally"
    )]
    NeedsKafka {
        /// The target topic.
        topic: String,
    },
    /// Zero or several action kinds are set.
    #[error("action: set exactly one of http, slack, email, kafka or log")]
    NoKind,
}

impl BuildError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Builds the action. `client` is shared (connection pooling). Kafka actions are built by the
/// Kafka bus: for them this returns [`BuildError::NeedsKafka`].
pub fn build(
    action: &Action,
    secrets: &Secrets,
    client: reqwest::Client,
) -> Result<Arc<dyn ActionImpl>, BuildError> {
    match action.kind().ok_or(BuildError::NoKind)? {
        ActionKind::Http(http) => Ok(Arc::new(HttpImpl::build(http, secrets, client)?)),
        ActionKind::Slack(slack) => Ok(Arc::new(SlackImpl::build(slack, secrets, client)?)),
        ActionKind::Email(email) => Ok(Arc::new(EmailImpl::build(email, secrets)?)),
        ActionKind::Kafka(kafka) => Err(BuildError::NeedsKafka {
            topic: kafka.topic.clone(),
        }),
        ActionKind::Log(log) => Ok(Arc::new(LogImpl::build(log)?)),
    }
}

/// Shared HTTP send, used by the http and slack actions and by the pipeline's enrich step.
///
/// Sends `request` with `timeout` over the whole exchange (connect, request, response body) and
/// classifies failures: timeout → [`FailureClass::Timeout`]; connect and I/O errors →
/// [`FailureClass::Connection`]; a non-2xx answer → [`FailureClass::Status`]`(code)` with
/// `retry_after` from `Retry-After` (delta-seconds or HTTP-date) and the message
/// `HTTP 503 from <method> <url without query>: <first 200 characters of the body>`; a request
/// that cannot be built, too many redirects or a 2xx body over [`MAX_RESPONSE_BYTES`] →
/// [`FailureClass::Other`]. When `what` is not empty, every message starts with `<what>: `
/// (e.g. `enrich customer: HTTP 503 from GET http://…`).
///
/// Returns the status, the response headers and the body of a 2xx answer.
pub async fn send(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
    timeout: Duration,
    what: &str,
) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    let request = request.build().map_err(|e| {
        AttemptError::new(
            FailureClass::Other,
            format!(
                "{prefix}cannot build the request: {}",
                chain(&e.without_url())
            ),
        )
    })?;
    let target = format!("{} {}", request.method(), redacted(request.url()));
    send_request(client, request, timeout, &prefix, &target).await
}

/// Resolves `Headers` (literal or Secret) into a HeaderMap. Errors name the header
/// (`<field>.<name>`), never its value; values read from Secrets are marked sensitive.
pub fn resolve_headers(
    headers: &Headers,
    secrets: &Secrets,
    field: &str,
) -> Result<HeaderMap, BuildError> {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let here = format!("{field}.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            BuildError::invalid(
                &here,
                "not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            )
        })?;
        let value = match (&value.value, &value.secret_ref) {
            (Some(literal), None) => HeaderValue::from_str(literal).map_err(|_| {
                BuildError::invalid(
                    &here,
                    "the value is not a valid header value (visible ASCII characters and spaces only)",
                )
            })?,
            (None, Some(secret)) => {
                let text = secrets.get_string(secret).map_err(|error| BuildError::Secret {
                    field: format!("{here}.secretRef"),
                    error,
                })?;
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    BuildError::invalid(
                        format!("{here}.secretRef"),
                        format!(
                            "{} holds a value that is not a valid header value (visible ASCII characters and spaces only)",
                            secret_label(secrets, secret)
                        ),
                    )
                })?;
                value.set_sensitive(true);
                value
            }
            _ => return Err(BuildError::invalid(&here, "set exactly one of value or secretRef")),
        };
        out.append(header, value);
    }
    Ok(out)
}

/// Parses a `Retry-After` value: delta-seconds (`7`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, a date in the past meaning zero).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP

enum HttpBody {
    /// jq over the data, sent as JSON.
    Jq(JqProgram, HeaderValue),
    /// A text template.
    Template(Template, HeaderValue),
    /// The event data as JSON (no body for GET and DELETE).
    EventData,
}

struct HttpImpl {
    url_source: String,
    url: Template,
    method: reqwest::Method,
    headers: HeaderMap,
    body: HttpBody,
    timeout: Duration,
    idempotency_header: Option<HeaderName>,
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
            .finish()
    }
}

impl HttpImpl {
    fn build(
        spec: &HttpAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        if !(spec.url.starts_with("http://") || spec.url.starts_with("https://")) {
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
        Ok(Self {
            url_source: spec.url.clone(),
            url,
            method,
            headers,
            body,
            timeout: timeout_of(spec.timeout.as_ref(), "http.timeout", DEFAULT_HTTP_TIMEOUT)?,
            idempotency_header,
            client,
        })
    }

    /// The request for `event`; an error here is the event's fault ([`FailureClass::Other`]).
    fn request(&self, event: &Event) -> Result<reqwest::Request, AttemptError> {
        let vars = event.activation();
        let url = self
            .url
            .render_with(&vars, |s| urlencoding::encode(s).into_owned())
            .map_err(|e| other(format!("http.url: {e}")))?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| other(format!("http.url: the rendered URL is not valid: {e}")))?;
        let (body, content_type) = match &self.body {
            HttpBody::Jq(jq, ct) => {
                let value = jq
                    .run_one(&event.data)
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
            let request = self.request(event)?;
            let target = format!("{} {}", request.method(), redacted(request.url()));
            send_request(&self.client, request, self.timeout, "", &target).await?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Slack

struct SlackImpl {
    /// The webhook URL: a credential. Never in a message or in `Debug`.
    url: reqwest::Url,
    /// How messages name the target instead of the URL.
    target: String,
    text_source: String,
    text: Template,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for SlackImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackAction")
            .field("webhook", &self.target)
            .field("text", &self.text_source)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SlackImpl {
    fn build(
        spec: &SlackAction,
        secrets: &Secrets,
        client: reqwest::Client,
    ) -> Result<Self, BuildError> {
        let field = "slack.webhookSecretRef";
        let label = secret_label(secrets, &spec.webhook_secret_ref);
        let raw = secrets
            .get_string(&spec.webhook_secret_ref)
            .map_err(|error| BuildError::Secret {
                field: field.to_owned(),
                error,
            })?;
        // `url::ParseError` does not quote its input.
        let url = reqwest::Url::parse(raw.trim()).map_err(|e| {
            BuildError::invalid(field, format!("{label} does not hold a valid URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BuildError::invalid(
                field,
                format!("{label} does not hold an http or https URL"),
            ));
        }
        Ok(Self {
            url,
            target: format!("Slack webhook ({label})"),
            text_source: spec.text.clone(),
            text: Template::compile(&spec.text, Scope::Event)
                .map_err(|e| BuildError::invalid("slack.text", e))?,
            timeout: timeout_of(spec.timeout.as_ref(), "slack.timeout", DEFAULT_HTTP_TIMEOUT)?,
            client,
        })
    }
}

impl ActionImpl for SlackImpl {
    fn kind(&self) -> &'static str {
        "slack"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let text = self
                .text
                .render(&event.activation())
                .map_err(|e| other(format!("slack.text: {e}")))?;
            let mut request = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            *request.body_mut() = Some(json!({ "text": text }).to_string().into());
            let target = format!("POST {}", self.target);
            send_request(&self.client, request, self.timeout, "", &target).await?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Email

struct EmailImpl {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for messages.
    server: String,
    tls: SmtpTls,
    username: Option<String>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: Template,
    body: Template,
    timeout: Duration,
}

impl fmt::Debug for EmailImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No transport: it holds the password.
        let to: Vec<String> = self.to.iter().map(ToString::to_string).collect();
        f.debug_struct("EmailAction")
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("from", &self.from.to_string())
            .field("to", &to)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EmailImpl {
    fn build(spec: &EmailAction, secrets: &Secrets) -> Result<Self, BuildError> {
        let smtp = &spec.smtp;
        let tls = smtp.tls.unwrap_or_default();
        let port = smtp.port.unwrap_or(match tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        });
        let timeout = timeout_of(
            smtp.timeout.as_ref(),
            "email.smtp.timeout",
            DEFAULT_SMTP_TIMEOUT,
        )?;
        let tls_parameters = || {
            TlsParameters::new(smtp.host.clone()).map_err(|e| {
                BuildError::invalid("email.smtp.tls", format!("cannot set up TLS: {e}"))
            })
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(port)
            .timeout(Some(timeout));
        builder = match tls {
            // STARTTLS is required: no credentials or mail go out over plain text.
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters()?)),
            SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls_parameters()?)),
            SmtpTls::None => builder.tls(Tls::None),
        };
        match (&smtp.username, &smtp.password_secret_ref) {
            (Some(username), Some(secret)) => {
                let password = secrets
                    .get_string(secret)
                    .map_err(|error| BuildError::Secret {
                        field: "email.smtp.passwordSecretRef".to_owned(),
                        error,
                    })?;
                builder = builder.credentials(Credentials::new(username.clone(), password));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(BuildError::invalid(
                    "email.smtp.passwordSecretRef",
                    "required when username is set",
                ));
            }
            (None, Some(_)) => {
                return Err(BuildError::invalid(
                    "email.smtp.username",
                    "required when passwordSecretRef is set",
                ));
            }
        }
        let mailbox = |field: String, text: &str| {
            text.parse::<Mailbox>().map_err(|e| {
                BuildError::invalid(field, format!("{text:?} is not an email address: {e}"))
            })
        };
        if spec.to.is_empty() {
            return Err(BuildError::invalid(
                "email.to",
                "needs at least one recipient",
            ));
        }
        let to = spec
            .to
            .iter()
            .enumerate()
            .map(|(i, to)| mailbox(format!("email.to[{i}]"), to))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{port}", smtp.host),
            tls,
            username: smtp.username.clone(),
            from: mailbox("email.from".to_owned(), &spec.from)?,
            to,
            subject: Template::compile(&spec.subject, Scope::Event)
                .map_err(|e| BuildError::invalid("email.subject", e))?,
            body: Template::compile(&spec.body, Scope::Event)
                .map_err(|e| BuildError::invalid("email.body", e))?,
            timeout,
        })
    }

    fn message(&self, event: &Event) -> Result<Message, AttemptError> {
        let vars = event.activation();
        let subject = self
            .subject
            .render(&vars)
            .map_err(|e| other(format!("email.subject: {e}")))?;
        let body = self
            .body
            .render(&vars)
            .map_err(|e| other(format!("email.body: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(body)
            .map_err(|e| other(format!("email: cannot build the message: {e}")))
    }

    /// Classifies an SMTP failure (see the module documentation for why SMTP replies are not
    /// HTTP statuses).
    fn classify(&self, e: &lettre::transport::smtp::Error) -> AttemptError {
        let server = &self.server;
        if let Some(code) = e.status() {
            let code = u16::from(code);
            let reply = std::error::Error::source(e)
                .map(|s| format!(": {}", one_line(&s.to_string())))
                .unwrap_or_default();
            return if e.is_transient() {
                AttemptError::new(
                    FailureClass::Connection,
                    format!(
                        "email: SMTP {code} from {server} (transient reply, retried like a connection failure){reply}"
                    ),
                )
            } else {
                AttemptError::new(
                    FailureClass::Other,
                    format!(
                        "email: SMTP {code} from {server} (permanent reply, not retried){reply}"
                    ),
                )
            };
        }
        if e.is_timeout() {
            return AttemptError::new(
                FailureClass::Timeout,
                format!(
                    "email: no answer from SMTP server {server} within {}",
                    human(self.timeout)
                ),
            );
        }
        if e.is_client() {
            // The client cannot go on with this server (e.g. no common authentication
            // mechanism): a configuration problem that retries do not fix.
            return AttemptError::new(
                FailureClass::Other,
                format!(
                    "email: cannot send through SMTP server {server}: {}",
                    one_line(&e.to_string())
                ),
            );
        }
        AttemptError::new(
            FailureClass::Connection,
            format!(
                "email: cannot reach SMTP server {server}: {}",
                one_line(&e.to_string())
            ),
        )
    }
}

impl ActionImpl for EmailImpl {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let message = self.message(event)?;
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Err(_) => Err(AttemptError::new(
                    FailureClass::Timeout,
                    format!(
                        "email: no answer from SMTP server {} within {}",
                        self.server,
                        human(self.timeout)
                    ),
                )),
                Ok(Err(e)) => Err(self.classify(&e)),
                Ok(Ok(_)) => Ok(()),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Log

struct LogImpl {
    template: Option<Template>,
    source: Option<String>,
}

impl fmt::Debug for LogImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogAction")
            .field("template", &self.source)
            .finish()
    }
}

impl LogImpl {
    fn build(spec: &LogAction) -> Result<Self, BuildError> {
        let template = spec
            .template
            .as_deref()
            .map(|t| Template::compile(t, Scope::Event))
            .transpose()
            .map_err(|e| BuildError::invalid("log.template", e))?;
        Ok(Self {
            template,
            source: spec.template.clone(),
        })
    }

    /// The line for `event`: the rendered template, or the data as compact JSON.
    fn line(&self, event: &Event) -> Result<String, AttemptError> {
        match &self.template {
            Some(template) => template
                .render(&event.activation())
                .map_err(|e| other(format!("log.template: {e}"))),
            None => Ok(event.data.to_string()),
        }
    }
}

impl ActionImpl for LogImpl {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let line = self.line(event)?;
            // A closed stdout is no reason to fail (and retry) a delivery.
            let _ = writeln!(std::io::stdout().lock(), "{line}");
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Sends a built request; `target` names it in messages (`POST http://host/path`, or a label
/// when the URL itself is a credential).
async fn send_request(
    client: &reqwest::Client,
    mut request: reqwest::Request,
    timeout: Duration,
    prefix: &str,
    target: &str,
) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
    *request.timeout_mut() = Some(timeout);
    let exchange = async {
        let response = client.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let limit = if status.is_success() {
            MAX_RESPONSE_BYTES
        } else {
            ERROR_BODY_BYTES
        };
        let (body, complete) = read_limited(response, limit).await?;
        Ok::<_, reqwest::Error>((status, headers, body, complete))
    };
    let timed_out = || {
        AttemptError::new(
            FailureClass::Timeout,
            format!("{prefix}no answer from {target} within {}", human(timeout)),
        )
    };
    let (status, headers, body, complete) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            // The URL may carry credentials (a Slack webhook, a query token): never quoted.
            let e = e.without_url();
            return Err(if e.is_timeout() {
                timed_out()
            } else if e.is_builder() || e.is_redirect() {
                AttemptError::new(
                    FailureClass::Other,
                    format!("{prefix}cannot send to {target}: {}", chain(&e)),
                )
            } else {
                AttemptError::new(
                    FailureClass::Connection,
                    format!("{prefix}cannot reach {target}: {}", chain(&e)),
                )
            });
        }
        Ok(Ok(exchange)) => exchange,
    };
    let code = status.as_u16();
    if !status.is_success() {
        let mut error = AttemptError::status(
            code,
            format!("{prefix}HTTP {code} from {target}{}", preview(&body)),
        );
        if let Some(after) = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
        {
            error = error.with_retry_after(after);
        }
        return Err(error);
    }
    if !complete {
        return Err(AttemptError::new(
            FailureClass::Other,
            format!(
                "{prefix}the answer from {target} is larger than {} MiB",
                MAX_RESPONSE_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok((code, headers, body))
}

/// Reads at most `limit` bytes of the body; `false` when there was more.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf.freeze(), false));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), true))
}

/// `: <first 200 characters>` of an error body, on one line; empty for an empty body.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut quoted = one_line(&text.chars().take(ERROR_BODY_CHARS).collect::<String>());
    if text.chars().nth(ERROR_BODY_CHARS).is_some() {
        quoted.push('…');
    }
    format!(": {quoted}")
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The URL without query, fragment and credentials.
fn redacted(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// An error and its sources, joined with `: ` (repeated texts once).
fn chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    one_line(&parts.join(": "))
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn other(message: impl Into<String>) -> AttemptError {
    AttemptError::new(FailureClass::Other, message)
}

fn timeout_of(
    given: Option<&SpecDuration>,
    field: &str,
    default: Duration,
) -> Result<Duration, BuildError> {
    let Some(given) = given else {
        return Ok(default);
    };
    let timeout = given.to_std().map_err(|e| BuildError::invalid(field, e))?;
    if timeout.is_zero() {
        return Err(BuildError::invalid(field, "must be longer than 0"));
    }
    Ok(timeout)
}

/// `Secret ns/name key "k"` (the namespace when known).
fn secret_label(secrets: &Secrets, r: &SecretKeyRef) -> String {
    match secrets {
        Secrets::Manifests { namespace, .. } => {
            format!("Secret {namespace}/{} key {:?}", r.name, r.key)
        }
        Secrets::Mounted { .. } => format!("Secret {} key {:?}", r.name, r.key),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        path::Path,
        sync::{Arc, Mutex},
    };

    use inputbot_api::{
        binding::Backoff,
        config::{RetryOn, RetryPolicy},
    };
    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::TcpListener,
    };

    use super::*;

    const TOKEN: &str = "Bearer s3cr3t-t0ken-9f8e7d";
    const SMTP_PASSWORD: &str = "pa55-w0rd-q1w2e3";

    // -- a recording HTTP server --------------------------------------------------------------

    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        uri: String,
        headers: HeaderMap,
        body: Bytes,
    }

    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
        delay: Duration,
    }

    impl Reply {
        fn ok() -> Self {
            Self::status(200, "ok")
        }

        fn status(status: u16, body: &'static str) -> Self {
            Self {
                status,
                headers: Vec::new(),
                body,
                delay: Duration::ZERO,
            }
        }
    }

    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn server(reply: Reply) -> Server {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: http::Method, uri: http::Uri, headers: HeaderMap, body: Bytes| {
                let record = record.clone();
                let reply = reply.clone();
                async move {
                    record.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    tokio::time::sleep(reply.delay).await;
                    let mut response = http::Response::builder().status(reply.status);
                    for (name, value) in reply.headers {
                        response = response.header(name, value);
                    }
                    response.body(axum::body::Body::from(reply.body)).unwrap()
                }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, seen }
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    // -- a fake SMTP server ---------------------------------------------------------------------

    #[derive(Clone, Debug, Default)]
    struct Mail {
        auth: Option<String>,
        from: String,
        rcpts: Vec<String>,
        data: String,
    }

    /// Speaks enough SMTP for lettre: greeting, EHLO (offering AUTH PLAIN), AUTH, MAIL, RCPT,
    /// DATA, RSET, QUIT. `after_data` is the reply to the end of the message (`250 …` to
    /// accept); `auth_reply` the reply to AUTH.
    async fn fake_smtp(
        after_data: &'static str,
        auth_reply: &'static str,
    ) -> (u16, Arc<Mutex<Vec<Mail>>>) {
        let mails = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read);
                    let mut mail = Mail::default();
                    write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                    for _ in 0..1000 {
                        let mut line = String::new();
                        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &str = if upper.starts_with("EHLO") {
                            "250-fake\r\n250 AUTH PLAIN\r\n"
                        } else if upper.starts_with("AUTH") {
                            mail.auth = Some(line.trim().to_owned());
                            auth_reply
                        } else if upper.starts_with("MAIL FROM:") {
                            mail.from = line[10..].trim().to_owned();
                            "250 ok\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            mail.rcpts.push(line[8..].trim().to_owned());
                            "250 ok\r\n"
                        } else if upper.starts_with("DATA") {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            for _ in 0..100_000 {
                                let mut data = String::new();
                                if lines.read_line(&mut data).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if data == ".\r\n" {
                                    break;
                                }
                                mail.data.push_str(&data);
                            }
                            if after_data.starts_with("250") {
                                record.lock().unwrap().push(std::mem::take(&mut mail));
                            }
                            after_data
                        } else if upper.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                            "250 ok\r\n"
                        } else {
                            "500 unknown command\r\n"
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, mails)
    }

    // -- fixtures -------------------------------------------------------------------------------

    fn secrets(dir: &Path, entries: &[(&str, &str, &str)]) -> Secrets {
        for (name, key, value) in entries {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join(key), value).unwrap();
        }
        Secrets::Mounted {
            dir: dir.to_path_buf(),
        }
    }

    fn action(spec: Value) -> Action {
        serde_json::from_value(spec).unwrap()
    }

    fn event() -> Event {
        let mut e = Event::new(
            "team-a/support-intake",
            "zendesk",
            "ticket.created",
            json!({"ticket": 42, "from": "ann@example.com", "text": "please refund"}),
        );
        e.labels.push("billing".into());
        e
    }

    fn build_ok(spec: Value, secrets: &Secrets) -> Arc<dyn ActionImpl> {
        build(&action(spec), secrets, reqwest::Client::new()).unwrap()
    }

    fn build_err(spec: Value, secrets: &Secrets) -> String {
        build(&action(spec), secrets, reqwest::Client::new())
            .unwrap_err()
            .to_string()
    }

    fn default_retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::Exponential,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: true,
            retry_on: vec![
                RetryOn::Status(429),
                RetryOn::Class(5),
                RetryOn::Timeout,
                RetryOn::Connection,
            ],
            honor_retry_after: true,
        }
    }

    /// The `Debug` output of the concrete action (a `dyn ActionImpl` prints only its kind).
    fn debug_of(spec: Value, secrets: &Secrets) -> String {
        let action = action(spec);
        match action.kind().unwrap() {
            ActionKind::Http(h) => format!(
                "{:?}",
                HttpImpl::build(h, secrets, reqwest::Client::new()).unwrap()
            ),
            ActionKind::Slack(s) => format!(
                "{:?}",
                SlackImpl::build(s, secrets, reqwest::Client::new()).unwrap()
            ),
            ActionKind::Email(e) => format!("{:?}", EmailImpl::build(e, secrets).unwrap()),
            ActionKind::Log(l) => format!("{:?}", LogImpl::build(l).unwrap()),
            ActionKind::Kafka(_) => unreachable!(),
        }
    }

    fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
        seen.headers.get(name).map(|v| v.to_str().unwrap())
    }

    // -- http -----------------------------------------------------------------------------------

    #[tokio::test]
    async fn http_sends_the_body_method_headers_idempotency_key_and_cloudevent_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[("api", "token", &format!("{TOKEN}\n"))]);
        let server = server(Reply::ok()).await;
        let http = build_ok(
            json!({"http": {
                "url": server.url("/tickets"),
                "method": "PUT",
                "headers": {
                    "Authorization": {"secretRef": {"name": "api", "key": "token"}},
                    "X-Team": {"value": "support"},
                },
                "body": {"jq": "{id: .ticket, who: .from}"},
            }}),
            &secrets,
        );
        assert_eq!(http.kind(), "http");
        let e = event();
        http.attempt(&e, 1).await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let got = &seen[0];
        assert_eq!(got.method, "PUT");
        assert_eq!(got.uri, "/tickets");
        assert_eq!(
            serde_json::from_slice::<Value>(&got.body).unwrap(),
            json!({"id": 42, "who": "ann@example.com"})
        );
        assert_eq!(header(got, "content-type"), Some("application/json"));
        assert_eq!(header(got, "authorization"), Some(TOKEN));
        assert_eq!(header(got, "x-team"), Some("support"));
        assert_eq!(header(got, "idempotency-key"), Some(e.id.as_str()));
        assert_eq!(header(got, "ce-specversion"), Some("1.0"));
        assert_eq!(header(got, "ce-id"), Some(e.id.as_str()));
        assert_eq!(header(got, "ce-source"), Some(e.source.as_str()));
        assert_eq!(header(got, "ce-type"), Some("ticket.created"));
        assert_eq!(header(got, "traceparent"), e.traceparent.as_deref());
    }

    #[tokio::test]
    async fn http_sends_the_event_data_by_default_and_text_templates_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let server = server(Reply::ok()).await;
        let e = event();

        let plain = build_ok(json!({"http": {"url": server.url("/raw")}}), &secrets);
        plain.attempt(&e, 1).await.unwrap();
        let text = build_ok(
            json!({"http": {
                "url": server.url("/text"),
                "body": {"template": "#{{ data.ticket }} from {{ data.from }} {{ labels }}"},
                "idempotencyHeader": "X-Dedupe",
            }}),
            &secrets,
        );
        text.attempt(&e, 1).await.unwrap();
        let none = build_ok(
            json!({"http": {
                "url": server.url("/csv"),
                "body": {"template": "{{ data.ticket }},{{ data.from }}", "contentType": "text/csv"},
                "idempotencyHeader": "",
            }}),
            &secrets,
        );
        none.attempt(&e, 1).await.unwrap();

        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(
            serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
            e.data
        );
        assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
        assert_eq!(
            &seen[1].body[..],
            br#"#42 from ann@example.com ["billing"]"#
        );
        assert_eq!(
            header(&seen[1], "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&seen[1], "x-dedupe"), Some(e.id.as_str()));
        assert_eq!(header(&seen[1], "idempotency-key"), None);
        assert_eq!(&seen[2].body[..], b"42,ann@example.com");
        assert_eq!(header(&seen[2], "content-type"), Some("text/csv"));
        assert_eq!(header(&seen[2], "idempotency-key"), None);
        assert_eq!(header(&seen[2], "ce-id"), Some(e.id.as_str()));
    }

    #[tokio::test]
    async fn values_inserted_into_the_url_are_url_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let server = server(Reply::ok()).await;
        let http = build_ok(
            json!({"http": {
                "url": format!("{}/items/{{{{ data.name }}}}?q={{{{ data.q }}}}&n={{{{ data.n }}}}", server.url("")),
                "method": "GET",
            }}),
            &secrets,
        );
        let mut e = event();
        e.data = json!({"name": "a b/c?d", "q": "x&y=z#", "n": 7});
        http.attempt(&e, 1).await.unwrap();
        let seen = server.seen();
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].uri, "/items/a%20b%2Fc%3Fd?q=x%26y%3Dz%23&n=7");
        assert!(seen[0].body.is_empty(), "a GET carries no default body");
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_a_status_failure_that_carries_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let mut reply = Reply::status(503, "  down for\nmaintenance  ");
        reply.headers.push(("retry-after", "7"));
        let server = server(reply).await;
        let http = build_ok(
            json!({"http": {"url": server.url("/hook?api_key=abc123")}}),
            &secrets,
        );
        let err = http.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Status(503));
        assert_eq!(err.status, Some(503));
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            err.message,
            format!(
                "HTTP 503 from POST {}: down for maintenance",
                server.url("/hook")
            )
        );
        assert!(default_retry().retries(&err.class));
    }

    #[test]
    fn retry_after_accepts_delta_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        let later = (Utc::now() + chrono::Duration::seconds(90))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-3"), None);
    }

    #[test]
    fn long_error_bodies_are_cut_to_200_characters() {
        let body = "é".repeat(300);
        let p = preview(body.as_bytes());
        assert_eq!(p.chars().count(), 2 + 200 + 1);
        assert!(p.ends_with('…'));
        assert_eq!(preview(b"   "), "");
    }

    #[tokio::test]
    async fn a_server_slower_than_the_timeout_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let mut reply = Reply::ok();
        reply.delay = Duration::from_secs(3);
        let server = server(reply).await;
        let http = build_ok(
            json!({"http": {"url": server.url("/slow"), "timeout": "200ms"}}),
            &secrets,
        );
        let started = std::time::Instant::now();
        let err = http.attempt(&event(), 1).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.class, FailureClass::Timeout);
        assert_eq!(err.status, None);
        assert!(err.message.contains("within 200ms"), "{}", err.message);
        assert!(err.message.contains("/slow"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_failure() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let port = closed_port().await;
        let http = build_ok(
            json!({"http": {"url": format!("http://127.0.0.1:{port}/x?token=q")}}),
            &secrets,
        );
        let err = http.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Connection);
        assert!(
            err.message
                .starts_with(&format!("cannot reach POST http://127.0.0.1:{port}/x: ")),
            "{}",
            err.message
        );
        assert!(!err.message.contains("token"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_evaluated_is_not_retried_and_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let server = server(Reply::ok()).await;
        let jq = build_ok(
            json!({"http": {"url": server.url("/"), "body": {"jq": ".text + 1"}}}),
            &secrets,
        );
        let err = jq.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Other);
        assert!(err.message.starts_with("http.body.jq: "), "{}", err.message);
        assert!(!default_retry().retries(&err.class));

        let template = build_ok(
            json!({"http": {"url": server.url("/"), "body": {"template": "{{ data.missing.deeper }}"}}}),
            &secrets,
        );
        let err = template.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Other);
        assert!(
            err.message.starts_with("http.body.template: "),
            "{}",
            err.message
        );
        assert!(server.seen().is_empty(), "nothing reached the target");
    }

    #[tokio::test]
    async fn send_returns_the_answer_and_prefixes_its_messages_with_what() {
        let client = reqwest::Client::new();
        let mut reply = Reply::status(200, r#"{"tier":"gold"}"#);
        reply.headers.push(("x-answer", "yes"));
        let ok = server(reply).await;
        let (status, headers, body) = send(
            &client,
            client.get(ok.url("/customer")),
            Duration::from_secs(5),
            "enrich customer",
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers.get("x-answer").unwrap(), "yes");
        assert_eq!(&body[..], br#"{"tier":"gold"}"#);

        let mut reply = Reply::status(429, "");
        reply.headers.push(("retry-after", "2"));
        let limited = server(reply).await;
        let err = send(
            &client,
            client.get(limited.url("/customer?key=k")),
            Duration::from_secs(5),
            "enrich customer",
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, FailureClass::Status(429));
        assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(
            err.message,
            format!(
                "enrich customer: HTTP 429 from GET {}",
                limited.url("/customer")
            )
        );
    }

    // -- slack ----------------------------------------------------------------------------------

    #[tokio::test]
    async fn slack_posts_the_rendered_text_as_json() {
        let server = server(Reply::ok()).await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(
            dir.path(),
            &[("slack", "url", &server.url("/services/T0/B0/XyZ"))],
        );
        let slack = build_ok(
            json!({"slack": {
                "webhookSecretRef": {"name": "slack", "key": "url"},
                "text": "New ticket #{{ data.ticket }} from {{ data.from }}",
            }}),
            &secrets,
        );
        assert_eq!(slack.kind(), "slack");
        slack.attempt(&event(), 1).await.unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/services/T0/B0/XyZ");
        assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
            json!({"text": "New ticket #42 from ann@example.com"})
        );
    }

    // -- email ----------------------------------------------------------------------------------

    fn email_spec(port: u16, password: bool) -> Value {
        let mut smtp = json!({"host": "127.0.0.1", "port": port, "tls": "none", "timeout": "5s"});
        if password {
            smtp["username"] = json!("bot");
            smtp["passwordSecretRef"] = json!({"name": "smtp", "key": "password"});
        }
        json!({"email": {
            "smtp": smtp,
            "from": "Bot <bot@example.com>",
            "to": ["ann@example.com", "Ops <ops@example.com>"],
            "subject": "Ticket #{{ data.ticket }}",
            "body": "From {{ data.from }}: {{ data.text }}",
        }})
    }

    #[tokio::test]
    async fn email_arrives_with_the_rendered_subject_and_body_for_every_recipient() {
        let (port, mails) = fake_smtp("250 queued\r\n", "235 ok\r\n").await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[("smtp", "password", SMTP_PASSWORD)]);
        let email = build_ok(email_spec(port, true), &secrets);
        assert_eq!(email.kind(), "email");
        email.attempt(&event(), 1).await.unwrap();
        let mails = mails.lock().unwrap().clone();
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert!(mail.auth.as_deref().unwrap().starts_with("AUTH PLAIN"));
        assert_eq!(mail.from, "<bot@example.com>");
        assert_eq!(mail.rcpts, ["<ann@example.com>", "<ops@example.com>"]);
        assert!(
            mail.data.contains("Subject: Ticket #42\r\n"),
            "{}",
            mail.data
        );
        assert!(
            mail.data.contains("From: Bot <bot@example.com>"),
            "{}",
            mail.data
        );
        assert!(mail.data.contains("ann@example.com"), "{}", mail.data);
        assert!(mail.data.contains("Ops <ops@example.com>"), "{}", mail.data);
        assert!(
            mail.data.contains("Content-Type: text/plain"),
            "{}",
            mail.data
        );
        assert!(
            mail.data
                .contains("\r\n\r\nFrom ann@example.com: please refund"),
            "{}",
            mail.data
        );
    }

    #[tokio::test]
    async fn a_permanent_smtp_reply_is_not_retried() {
        let (port, mails) = fake_smtp("550 5.7.1 message rejected\r\n", "235 ok\r\n").await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let email = build_ok(email_spec(port, false), &secrets);
        let err = email.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Other);
        assert!(!default_retry().retries(&err.class));
        assert!(
            err.message.starts_with(&format!(
                "email: SMTP 550 from 127.0.0.1:{port} (permanent reply, not retried)"
            )),
            "{}",
            err.message
        );
        assert!(err.message.contains("message rejected"), "{}", err.message);
        assert!(mails.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_transient_smtp_reply_is_retried() {
        let (port, _) = fake_smtp("451 4.3.0 try again later\r\n", "235 ok\r\n").await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let email = build_ok(email_spec(port, false), &secrets);
        let err = email.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Connection);
        assert_eq!(err.status, None);
        assert!(default_retry().retries(&err.class));
        assert!(err.message.contains("SMTP 451"), "{}", err.message);
        assert!(err.message.contains("try again later"), "{}", err.message);
    }

    #[tokio::test]
    async fn an_smtp_server_that_cannot_be_reached_is_a_connection_failure() {
        let port = closed_port().await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let email = build_ok(email_spec(port, false), &secrets);
        let err = email.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Connection, "{}", err.message);
        assert!(
            err.message
                .starts_with(&format!("email: cannot reach SMTP server 127.0.0.1:{port}")),
            "{}",
            err.message
        );
    }

    // -- log ------------------------------------------------------------------------------------

    #[tokio::test]
    async fn log_prints_the_template_or_the_data_and_fails_only_on_a_template_error() {
        let e = event();
        let plain = LogImpl::build(&LogAction { template: None }).unwrap();
        assert_eq!(plain.line(&e).unwrap(), e.data.to_string());
        let text = LogImpl::build(&LogAction {
            template: Some("{{ event.type }} #{{ data.ticket }}".into()),
        })
        .unwrap();
        assert_eq!(text.line(&e).unwrap(), "ticket.created #42");
        let log = build_ok(
            json!({"log": {}}),
            &Secrets::Mounted {
                dir: "/nonexistent".into(),
            },
        );
        assert_eq!(log.kind(), "log");
        log.attempt(&e, 1).await.unwrap();
        let broken = build_ok(
            json!({"log": {"template": "{{ data.nope.deeper }}"}}),
            &Secrets::Mounted {
                dir: "/nonexistent".into(),
            },
        );
        let err = broken.attempt(&e, 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Other);
        assert!(err.message.starts_with("log.template: "), "{}", err.message);
    }

    // -- build errors and secrets ---------------------------------------------------------------

    #[test]
    fn build_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(dir.path(), &[]);
        let cases = [
            (
                json!({"http": {"url": "ftp://x"}}),
                "http.url: must start with http",
            ),
            (
                json!({"http": {"url": "http://x/{{ dta.id }}"}}),
                "http.url: in template: ",
            ),
            (
                json!({"http": {"url": "http://x", "body": {"jq": "{a: .b"}}}),
                "http.body.jq: invalid jq program",
            ),
            (
                json!({"http": {"url": "http://x", "headers": {"bad header": {"value": "v"}}}}),
                "http.headers.bad header: not a valid header name",
            ),
            (
                json!({"http": {"url": "http://x", "headers": {"X-A": {"secretRef": {"name": "ns-x", "key": "k"}}}}}),
                "http.headers.X-A.secretRef: cannot read Secret ns-x key \"k\"",
            ),
            (
                json!({"http": {"url": "http://x", "timeout": "soon"}}),
                "http.timeout: expected a duration",
            ),
            (
                json!({"slack": {"webhookSecretRef": {"name": "x", "key": "url"}, "text": "hi"}}),
                "slack.webhookSecretRef: cannot read Secret x key \"url\"",
            ),
            (
                json!({"kafka": {"topic": "orders"}}),
                "kafka.topic: writing to Kafka topic \"orders\" needs the Kafka bus, and the local embedded run has none",
            ),
            (
                json!({"log": {}, "kafka": {"topic": "orders"}}),
                "action: set exactly one of",
            ),
            (
                {
                    let mut spec = email_spec(25, false);
                    spec["email"]["to"][1] = json!("not an address");
                    spec
                },
                "email.to[1]: \"not an address\" is not an email address",
            ),
            (
                {
                    let mut spec = email_spec(25, false);
                    spec["email"]["smtp"]["username"] = json!("bot");
                    spec
                },
                "email.smtp.passwordSecretRef: required when username is set",
            ),
            (
                {
                    let mut spec = email_spec(25, false);
                    spec["email"]["subject"] = json!("{{ nope }}");
                    spec
                },
                "email.subject: in template",
            ),
        ];
        for (spec, want) in cases {
            let err = build_err(spec.clone(), &secrets);
            assert!(err.starts_with(want), "{spec}: {err}");
        }
    }

    #[tokio::test]
    async fn secret_values_never_appear_in_errors_or_debug_output() {
        let slack_server = server(Reply::status(404, "no_service")).await;
        let slack_url = slack_server.url("/services/T0/B0/S3CR3TPATH");
        let dead_port = closed_port().await;
        let dead_slack = format!("http://127.0.0.1:{dead_port}/services/T0/B0/S3CR3TPATH");
        let api = server(Reply::status(500, "boom")).await;
        let (smtp_port, _) = fake_smtp("250 ok\r\n", "535 5.7.8 authentication failed\r\n").await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = secrets(
            dir.path(),
            &[
                ("api", "token", TOKEN),
                ("api", "broken", "Bearer abc\u{1}S3CR3TPATH"),
                ("slack", "url", &slack_url),
                ("dead", "url", &dead_slack),
                ("notaurl", "url", "S3CR3TPATH not a url"),
                ("smtp", "password", SMTP_PASSWORD),
            ],
        );
        let secret_texts = [TOKEN, "s3cr3t", "S3CR3TPATH", SMTP_PASSWORD];
        let check = |what: &str, text: &str| {
            for secret in secret_texts {
                assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
            }
        };

        let spec = json!({"http": {"url": api.url("/"), "headers": {"Authorization": {"secretRef": {"name": "api", "key": "token"}}}}});
        let debug = debug_of(spec.clone(), &secrets);
        assert!(debug.contains("authorization"), "{debug}");
        check("http Debug", &debug);
        let http = build_ok(spec, &secrets);
        assert_eq!(format!("{http:?}"), "ActionImpl(http)");
        let err = http.attempt(&event(), 1).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Status(500));
        check("http error", &format!("{err} {err:?}"));
        let headers = resolve_headers(
            &serde_json::from_value(
                json!({"Authorization": {"secretRef": {"name": "api", "key": "token"}}}),
            )
            .unwrap(),
            &secrets,
            "enrich.headers",
        )
        .unwrap();
        check("resolved headers Debug", &format!("{headers:?}"));

        let err = build_err(
            json!({"http": {"url": "http://x", "headers": {"Authorization": {"secretRef": {"name": "api", "key": "broken"}}}}}),
            &secrets,
        );
        assert!(
            err.starts_with("http.headers.Authorization.secretRef: Secret api key \"broken\" holds a value that is not a valid header value"),
            "{err}"
        );
        check("header build error", &err);

        for name in ["slack", "dead"] {
            let spec =
                json!({"slack": {"webhookSecretRef": {"name": name, "key": "url"}, "text": "hi"}});
            check("slack Debug", &debug_of(spec.clone(), &secrets));
            let slack = build_ok(spec, &secrets);
            let err = slack.attempt(&event(), 1).await.unwrap_err();
            check("slack error", &format!("{err} {err:?}"));
            assert!(
                err.message
                    .contains(&format!("Slack webhook (Secret {name} key \"url\")")),
                "{}",
                err.message
            );
        }
        let err = build_err(
            json!({"slack": {"webhookSecretRef": {"name": "notaurl", "key": "url"}, "text": "hi"}}),
            &secrets,
        );
        assert!(
            err.starts_with(
                "slack.webhookSecretRef: Secret notaurl key \"url\" does not hold a valid URL"
            ),
            "{err}"
        );
        check("slack build error", &err);

        let debug = debug_of(email_spec(smtp_port, true), &secrets);
        assert!(debug.contains("bot@example.com"), "{debug}");
        check("email Debug", &debug);
        let email = build_ok(email_spec(smtp_port, true), &secrets);
        let err = email.attempt(&event(), 1).await.unwrap_err();
        assert!(err.message.contains("SMTP 535"), "{}", err.message);
        assert_eq!(err.class, FailureClass::Other);
        check("email error", &format!("{err} {err:?}"));
    }
}
