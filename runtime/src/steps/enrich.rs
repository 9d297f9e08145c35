//! The enrich step: looks a value up over HTTP (a URL template, optional jq body, configured
//! headers) and stores the JSON answer under `resultField` of the event data. Answers are
//! cached per URL and body for `cacheTTL` (bounded), and `onError: skip` lets the event go on
//! without the value when the lookup fails.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use inputbot_api::{
    expr::{JqProgram, Scope, Template},
    pipeline::{EnrichHttp, EnrichMethod, OnError},
};
use serde_json::Value;

use crate::{event::Event, outbound, secrets::Secrets};

/// Most responses an enrich step keeps in its cache.
const CACHE_CAPACITY: usize = 10_000;

pub(super) struct Enricher {
    url: Template,
    method: EnrichMethod,
    headers: http::HeaderMap,
    body: Option<JqProgram>,
    pub(super) result_field: String,
    timeout: Duration,
    cache_ttl: Option<Duration>,
    skip_on_error: bool,
    oauth2: Option<outbound::OAuth2>,
    client: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, Value)>>,
}

impl Enricher {
    pub(super) fn new(
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
            headers: outbound::resolve_headers(&spec.headers, secrets, "headers")
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
            oauth2: spec
                .oauth2
                .as_ref()
                .map(|o| outbound::OAuth2::new(o, secrets, "oauth2", client.clone()))
                .transpose()
                .map_err(|e| ("oauth2".to_owned(), e.to_string()))?,
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
        let url =
            outbound::render_url(&self.url, &vars).map_err(|e| (format!("url: {e}"), None))?;
        let body = match &self.body {
            Some(jq) => Some(
                crate::eval::jq_one(jq, &event.data, inputbot_api::expr::Limits::default())
                    .await
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
        let request = request.build().map_err(|e| {
            (
                format!(
                    "enrich: cannot build the request: {}",
                    outbound::chain(&e.without_url())
                ),
                None,
            )
        })?;
        let target = format!(
            "{} {}",
            request.method(),
            outbound::redact_url(request.url())
        );
        let (_, _, bytes) = outbound::send_request_with(
            &self.client,
            self.oauth2.as_ref(),
            request,
            self.timeout,
            "enrich: ",
            &target,
        )
        .await
        .map_err(|e| (e.message, e.status))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                format!(
                    "enrich response from {} is not JSON: {e}",
                    outbound::redact_url_str(&url)
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

impl Enricher {
    /// Looks the value up and stores it under `resultField`; the data must be an object.
    /// Errors carry the HTTP status of a failed lookup.
    pub(super) async fn apply(&self, event: &mut Event) -> Result<(), (String, Option<u16>)> {
        if let Some(value) = self.lookup(event).await? {
            if let Value::Object(map) = &mut event.data {
                map.insert(self.result_field.clone(), value);
            } else {
                return Err((
                    format!(
                        "cannot store the enrichment under {:?}: the event data is not an object",
                        self.result_field
                    ),
                    None,
                ));
            }
        }
        Ok(())
    }
}
