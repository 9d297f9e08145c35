//! The webhook source: the HTTP side of the ingest role.
//!
//! ```text
//!  request ─▶ route (404) ─▶ method (405) ─▶ draining? (503) ─▶ rate limit (429)
//!          ─▶ body limit (413) ─▶ auth on the raw bytes (401/409/400)
//!          ─▶ parse: CloudEvent binary/structured, JSON, or form (400/415)
//!          ─▶ edge schema (400 + JSON pointer) ─▶ idempotency key (duplicate → 202)
//!          ─▶ publish to the raw topic, wait for the bus ─▶ 202 {id}   (or 503 + Retry-After)
//! ```
//!
//! Auth, the body limit and the rate limit run before anything parses the body. Every answer
//! has a JSON body `{"error": {"status", "reason", "message"}}` or `{"id": …}`. A `2xx` is only
//! sent once the event is durable; when the bus cannot take it the caller gets `503` and the
//! delivery id is forgotten, so the sender's retry is accepted.//!
//! ```text
//!  webhook/
//!   mod.rs          routes (one per webhook path), health and metrics endpoints, accept
//!   request.rs      the body → an event (JSON, form); refusals and their JSON answer
//!   cloudevents.rs  the CloudEvents HTTP binding (binary and structured mode), traceparent
//!   idempotency.rs  idempotency keys: bounded, expiring, confirmed once the bus holds the event
//!   auth/           signatures and credentials, checked on the raw bytes
//! ```

pub mod auth;
mod cloudevents;
mod idempotency;
mod rejections;
mod request;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use inputbot_api::{
    bot::WebhookSource,
    config::IngestConfig,
    expr::{Activation, CelExpr, EvalError, Limits, Scope},
};
use serde_json::{Value, json};

use self::{
    auth::{AuthError, WebhookAuthenticator},
    idempotency::{Claim, Idempotency},
    request::{Refusal, lower_case_headers, parse},
};
use crate::{
    bus::{Bus, kafka::dedupe},
    metrics::{self, Metrics, RejectLabels},
    secrets::Secrets,
};

/// Default largest body: 1 MiB.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// Why intake could not be set up (names the bot, source and field).
#[derive(Debug, thiserror::Error)]
#[error("{bot}: {field}: {message}")]
pub struct IntakeError {
    /// `InputBot ns/name`.
    pub bot: String,
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Readiness shared by intake and the role: false while the bus is down or the pod drains.
#[derive(Clone, Debug, Default)]
pub struct Health {
    draining: Arc<AtomicBool>,
}

impl Health {
    /// Stop taking requests (`/readyz` fails, webhooks get 503).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

struct Route {
    bot: String,
    source: String,
    topic: String,
    auth: WebhookAuthenticator,
    max_body: u64,
    limiter: Option<DefaultDirectRateLimiter>,
    schema: Option<jsonschema::Validator>,
    idempotency: Option<(CelExpr, Idempotency)>,
    event_type: String,
    /// Refusals logged at a bounded rate.
    rejections: rejections::RejectionLog,
}

/// Shared state of the HTTP server.
pub struct Intake {
    routes: HashMap<String, Arc<Route>>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    health: Health,
    /// How long a request's body may take to arrive (then `408`).
    body_timeout: Duration,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("paths", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Intake {
    /// Builds the webhook routes of the given bots (each with its own Secrets); a body that
    /// has not arrived within `body_timeout` is answered `408`.
    pub fn new(
        bots: &[(IngestConfig, Secrets)],
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        health: Health,
        body_timeout: Duration,
    ) -> Result<Arc<Self>, IntakeError> {
        let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
        for (config, secrets) in bots {
            let bot = format!("{}/{}", config.bot.namespace, config.bot.name);
            for (i, source) in config.sources.iter().enumerate() {
                let Some(webhook) = &source.webhook else {
                    continue;
                };
                let err = |field: &str, message: String| IntakeError {
                    bot: config.bot.to_string(),
                    field: format!("spec.sources[{i}].webhook.{field}"),
                    message,
                };
                if let Some(other) = routes.get(&webhook.path) {
                    return Err(err(
                        "path",
                        format!(
                            "{} is already served by source {} of bot {}",
                            webhook.path, other.source, other.bot
                        ),
                    ));
                }
                let route = build_route(&bot, &source.name, &config.topic, webhook, secrets)
                    .map_err(|(field, message)| err(field, message))?;
                routes.insert(webhook.path.clone(), Arc::new(route));
            }
        }
        Ok(Arc::new(Self {
            routes,
            bus,
            metrics,
            health,
            body_timeout,
        }))
    }

    /// The paths served.
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.routes.keys().cloned().collect();
        p.sort();
        p
    }

    /// The router: webhooks plus `/healthz`, `/readyz` and `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .fallback(webhook)
            .with_state(self.clone())
    }
}

fn build_route(
    bot: &str,
    source: &str,
    topic: &str,
    webhook: &WebhookSource,
    secrets: &Secrets,
) -> Result<Route, (&'static str, String)> {
    let auth = WebhookAuthenticator::new(&webhook.auth, &secrets.resolver())
        .map_err(|e| ("auth", e.to_string()))?;
    let limiter = match &webhook.rate_limit {
        Some(rl) => {
            let period = Duration::from_secs_f64(1.0 / rl.per_second.max(0.000_001));
            let burst = rl.burst.unwrap_or(rl.per_second.ceil() as u32).max(1);
            let quota = Quota::with_period(period)
                .ok_or(("rateLimit.perSecond", "must be above 0".to_owned()))?
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            Some(RateLimiter::direct(quota))
        }
        None => None,
    };
    let schema = webhook
        .schema
        .as_ref()
        .map(jsonschema::validator_for)
        .transpose()
        .map_err(|e| ("schema", e.to_string()))?;
    let idempotency = match &webhook.idempotency_key {
        Some(key) => {
            let expr = CelExpr::compile(key, Scope::Intake).map_err(|e| ("idempotencyKey", e))?;
            let window = webhook
                .idempotency_window
                .as_ref()
                .map(|d| d.to_std())
                .transpose()
                .map_err(|e| ("idempotencyWindow", e))?
                .unwrap_or(Duration::from_secs(24 * 3600));
            Some((expr, Idempotency::new(window)))
        }
        None => None,
    };
    Ok(Route {
        bot: bot.to_owned(),
        source: source.to_owned(),
        topic: topic.to_owned(),
        auth,
        max_body: webhook.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        limiter,
        schema,
        idempotency,
        event_type: webhook
            .event_type
            .clone()
            .unwrap_or_else(|| "dev.inputbot.webhook".to_owned()),
        rejections: rejections::RejectionLog::default(),
    })
}

async fn readyz(State(intake): State<Arc<Intake>>) -> Response {
    if intake.health.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !intake.bus.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State(intake): State<Arc<Intake>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        intake.metrics.encode(),
    )
        .into_response()
}

async fn webhook(
    State(intake): State<Arc<Intake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let Some(route) = intake.routes.get(uri.path()).cloned() else {
        return Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no webhook source serves {}", uri.path()),
        )
        .into_response();
    };
    let labels = metrics::source(&route.bot, &route.source);
    intake.metrics.received.get_or_create(&labels).inc();
    match accept(&intake, &route, method, uri.query(), &headers, body).await {
        Ok((status, body)) => {
            intake
                .metrics
                .intake_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            (status, axum::Json(body)).into_response()
        }
        Err(refusal) => {
            intake
                .metrics
                .rejected
                .get_or_create(&RejectLabels {
                    bot: route.bot.clone(),
                    source: route.source.clone(),
                    reason: refusal.reason.to_owned(),
                })
                .inc();
            match route.rejections.admit(refusal.reason, Instant::now()) {
                Some(left_out) => tracing::info!(
                    target: "inputbot::intake",
                    bot = %route.bot, source = %route.source, status = refusal.status.as_u16(),
                    reason = refusal.reason, left_out,
                    "rejected: {} ({left_out} more with this reason left out of the log since the last line)",
                    refusal.message
                ),
                None => tracing::debug!(
                    target: "inputbot::intake",
                    bot = %route.bot, source = %route.source, status = refusal.status.as_u16(),
                    reason = refusal.reason, "rejected: {}", refusal.message
                ),
            }
            refusal.into_response()
        }
    }
}

async fn accept(
    intake: &Intake,
    route: &Arc<Route>,
    method: Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Value), Refusal> {
    if method != Method::POST {
        let mut r = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("expected POST, found {method}"),
        );
        r.allow = true;
        return Err(r);
    }
    if intake.health.is_draining() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the bot is shutting down; retry",
        )
        .retry_after(5));
    }
    if let Some(limiter) = &route.limiter
        && let Err(not_until) = limiter.check()
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this source accepts no more requests right now",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64));
    }
    // The body limit: refuse on Content-Length at once, and cap what is read otherwise.
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body exceeds this source's limit of {} bytes",
                route.max_body
            ),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > route.max_body
    {
        return Err(too_large());
    }
    let limit = usize::try_from(route.max_body).unwrap_or(usize::MAX);
    // A client that trickles its body must not hold a connection (or shutdown) forever.
    let read = tokio::time::timeout(
        intake.body_timeout,
        http_body_util::Limited::new(body, limit).collect(),
    );
    let bytes = match read.await {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {:?}", intake.body_timeout),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the body: {e}"),
            ));
        }
    };
    let verified = route
        .auth
        .check(headers, query, &bytes, SystemTime::now())
        .await
        .map_err(|e: AuthError| {
            let mut refusal = Refusal::new(e.status(), e.reason(), e.to_string());
            if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                refusal = refusal.retry_after(30);
            } else {
                refusal.challenge = route.auth.challenge();
            }
            refusal
        })?;
    if verified.repeat {
        // Already accepted: a retry, or a captured request resent. Published once only.
        intake
            .metrics
            .duplicates
            .get_or_create(&metrics::source(&route.bot, &route.source))
            .inc();
        return Ok((StatusCode::ACCEPTED, json!({"duplicate": true})));
    }
    let forget = || {
        if let Some(id) = &verified.delivery_id {
            route.auth.forget(id);
        }
    };
    let mut event = match parse(route, headers, &bytes) {
        Ok(e) => e,
        Err(r) => {
            forget();
            return Err(r);
        }
    };
    // Only what intake verified, never anything the request says about itself.
    event.auth = verified.auth.clone();
    if let Some(schema) = &route.schema {
        let errors: Vec<(String, String)> = schema
            .iter_errors(&event.data)
            .take(5)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect();
        if let Some((pointer, _)) = errors.first() {
            forget();
            let pointer = if pointer.is_empty() {
                "/".to_owned()
            } else {
                pointer.clone()
            };
            let details: Vec<String> = errors
                .iter()
                .map(|(p, m)| format!("{}: {m}", if p.is_empty() { "/" } else { p }))
                .collect();
            let mut message = format!(
                "the payload does not match the source's schema at {pointer}: {}",
                details.join("; ")
            );
            // Messages quote the payload: cut on a character boundary.
            if let Some((cut, _)) = message.char_indices().nth(2048) {
                message.truncate(cut);
            }
            let r = Refusal::new(StatusCode::BAD_REQUEST, "schema", message);
            return Err(r);
        }
    }
    // Idempotency: a key already accepted inside the window is answered like the first time.
    let key = match &route.idempotency {
        Some((expr, store)) => {
            let vars = Activation::new()
                .with("headers", lower_case_headers(headers))
                .with("data", event.data.clone())
                .with("event", event.attributes())
                .with("auth", event.auth_value());
            let expr_ = expr.clone();
            let computed = crate::eval::run(Limits::default(), move || {
                expr_.eval(&vars).map_err(EvalError::Failed)
            })
            .await;
            let key = match computed {
                Ok(Value::String(s)) => s,
                Ok(Value::Null) | Err(_) => {
                    forget();
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "idempotency_key",
                        format!(
                            "the idempotency key {:?} could not be computed from this request",
                            expr.source()
                        ),
                    ));
                }
                Ok(other) => other.to_string(),
            };
            match store.claim(&key, &event.id) {
                Claim::New => Some(key),
                Claim::Seen(id) => {
                    intake
                        .metrics
                        .duplicates
                        .get_or_create(&metrics::source(&route.bot, &route.source))
                        .inc();
                    return Ok((StatusCode::ACCEPTED, json!({"id": id, "duplicate": true})));
                }
                Claim::Pending => {
                    forget();
                    return Err(Refusal::new(
                        StatusCode::CONFLICT,
                        "in_progress",
                        "a request with the same idempotency key is being accepted; retry",
                    )
                    .retry_after(1));
                }
            }
        }
        None => None,
    };
    // The idempotency key partitions the event on Kafka (CloudEvents' `partitionkey`), so every
    // copy of one key lands on one partition, in order — where the raw topic's consumers drop
    // the copies that reached other ingest replicas (`bus::kafka::dedupe`). A replay id marks
    // the event the same way (its copies share the source's partition).
    if let Some(key) = &key {
        event.extensions.insert(
            crate::bus::kafka::codec::PARTITION_KEY.to_owned(),
            key.clone(),
        );
        let window = route.idempotency.as_ref().map(|(_, s)| s.window());
        let until = chrono::Utc::now()
            + window
                .and_then(|w| chrono::TimeDelta::from_std(w).ok())
                .unwrap_or(chrono::TimeDelta::hours(24));
        dedupe::mark(&mut event, "idempotency", key, until);
    } else if let (Some(id), Some(until)) = (&verified.delivery_id, verified.replay_until) {
        dedupe::mark(&mut event, "replay", id, chrono::DateTime::from(until));
    }
    // Publish and its bookkeeping run in their own task: if the client goes away meanwhile
    // (hyper drops this future), the idempotency claim is still confirmed or released and the
    // delivery id still forgotten on failure, so the sender's retry is not locked out.
    let bus = intake.bus.clone();
    let metrics = intake.metrics.clone();
    let task_route = route.clone();
    let delivery_id = verified.delivery_id.clone();
    let published = tokio::spawn(async move {
        let route = task_route;
        let result = bus.publish(&route.topic, &event).await;
        let claimed = key
            .as_deref()
            .zip(route.idempotency.as_ref().map(|(_, store)| store));
        match &result {
            Ok(()) => {
                if let Some((key, store)) = claimed {
                    store.confirm(key);
                }
                if let Some(id) = &delivery_id {
                    route.auth.confirm(id);
                }
                metrics
                    .accepted
                    .get_or_create(&metrics::source(&route.bot, &route.source))
                    .inc();
                tracing::info!(
                    target: "inputbot::intake",
                    bot = %route.bot, source = %route.source, event = %event.id,
                    trace = event.trace_id().unwrap_or(""), "accepted"
                );
            }
            Err(e) => {
                if let Some((key, store)) = claimed {
                    store.release(key);
                }
                if let Some(id) = &delivery_id {
                    route.auth.forget(id);
                }
                tracing::warn!(target: "inputbot::intake", bot = %route.bot, source = %route.source, "bus refused the event: {e}");
            }
        }
        result.map(|()| event.id)
    });
    match published.await {
        Ok(Ok(id)) => Ok((StatusCode::ACCEPTED, json!({"id": id}))),
        // The sender learns that nothing was stored, not why: the bus's reason names broker
        // addresses, topics, the SASL user or certificate paths, and is in the log above.
        Ok(Err(_)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event could not be stored, nothing was accepted; retry later",
        )
        .retry_after(5)),
        Err(join) => {
            tracing::error!(target: "inputbot::intake", bot = %route.bot, source = %route.source, "publishing task failed: {join}");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored, nothing was accepted; retry later",
            )
            .retry_after(5))
        }
    }
}
