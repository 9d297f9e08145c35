//! The enrich step: looks a value up over HTTP (a URL template, optional jq body, configured
//! headers) and stores the JSON answer under `resultField` of the event data. Answers are
//! cached by the SHA-256 of URL and body for `cacheTTL`, bounded in entries and in bytes
//! ([`super::cache`], shared with `ai`: a URL or body of MiBs costs its hash, an answer its
//! size, and one larger than the bound is not kept), and `onError: skip` lets the event go on
//! without the value when the lookup fails.

use std::time::Duration;

use inputbot_api::{
    expr::{JqProgram, Scope, Template},
    pipeline::{EnrichHttp, EnrichMethod, OnError},
};
use serde_json::Value;

use super::cache::{self, Cache, MAX_CACHE_BYTES};
use crate::{event::Event, outbound, secrets::Secrets};

/// Most responses an enrich step keeps in its cache (and at most [`MAX_CACHE_BYTES`]).
const CACHE_CAPACITY: usize = 10_000;

pub(super) struct Enricher {
    url: Template,
    method: EnrichMethod,
    headers: http::HeaderMap,
    body: Option<JqProgram>,
    pub(super) result_field: String,
    timeout: Duration,
    skip_on_error: bool,
    oauth2: Option<outbound::OAuth2>,
    client: reqwest::Client,
    /// Present with `cacheTTL`.
    cache: Option<Cache>,
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
            cache: spec
                .cache_ttl
                .as_ref()
                .map(|d| d.to_std())
                .transpose()
                .map_err(|e| ("cacheTTL".to_owned(), e))?
                .map(|ttl| Cache::new(ttl, CACHE_CAPACITY, MAX_CACHE_BYTES)),
            skip_on_error: spec.on_error == Some(OnError::Skip),
            oauth2: spec
                .oauth2
                .as_ref()
                .map(|o| outbound::OAuth2::new(o, secrets, "oauth2", client.clone()))
                .transpose()
                .map_err(|e| ("oauth2".to_owned(), e.to_string()))?,
            client,
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
        let key = self.cache.as_ref().map(|_| {
            cache::key(&format!(
                "{url}\n{}",
                body.as_ref().map(Value::to_string).unwrap_or_default()
            ))
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(value) = cache.get(key)
        {
            return Ok(value);
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
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.put(key, value.clone());
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };

    use axum::extract::Path;
    use serde_json::json;

    use super::*;

    /// A lookup service answering `/{size}/{id}` with a JSON string of `size` characters;
    /// counts the requests it served.
    async fn lookups() -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/{size}/{id}",
            axum::routing::get(move |Path((size, _id)): Path<(usize, String)>| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, SeqCst);
                    axum::Json(Value::String("x".repeat(size)))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, calls)
    }

    /// An enrich step with `cacheTTL: 1h` whose cache holds at most `max_bytes`.
    fn enricher(url: &str, max_bytes: usize) -> Enricher {
        let spec: EnrichHttp = serde_json::from_value(json!({
            "url": format!("{url}/{{{{ data.size }}}}/{{{{ data.id }}}}"),
            "resultField": "found",
            "cacheTTL": "1h",
        }))
        .unwrap();
        let secrets = Secrets::Mounted {
            dir: "/nonexistent".into(),
        };
        let mut step = Enricher::new(&spec, &secrets, outbound::client().unwrap()).unwrap();
        step.cache = Some(Cache::new(
            Duration::from_secs(3600),
            CACHE_CAPACITY,
            max_bytes,
        ));
        step
    }

    async fn look_up(step: &Enricher, size: usize, id: &str) -> usize {
        let mut event = Event::new("default/bot", "hook", "t", json!({"size": size, "id": id}));
        step.apply(&mut event).await.unwrap();
        event.data["found"].as_str().unwrap().len()
    }

    #[tokio::test]
    async fn the_cache_holds_no_more_bytes_than_its_bound_and_never_an_answer_larger_than_it() {
        let (url, calls) = lookups().await;
        let bound = 64 * 1024;
        let step = enricher(&url, bound);
        let size = || step.cache.as_ref().unwrap().size();
        // 50 distinct answers of 10 KiB: eight times what the cache may hold.
        for id in 0..50 {
            assert_eq!(look_up(&step, 10 * 1024, &id.to_string()).await, 10 * 1024);
            let (_, bytes) = size();
            assert!(
                bytes <= bound,
                "{bytes} bytes cached, over the bound of {bound}"
            );
        }
        let (entries, bytes) = size();
        assert_eq!(
            entries, 6,
            "as many 10 KiB answers as fit in 64 KiB ({bytes} bytes)"
        );
        // The newest answers are still served from the cache, the oldest were dropped.
        let served = calls.load(SeqCst);
        look_up(&step, 10 * 1024, "49").await;
        assert_eq!(calls.load(SeqCst), served, "a cached answer");
        look_up(&step, 10 * 1024, "0").await;
        assert_eq!(
            calls.load(SeqCst),
            served + 1,
            "the oldest answer was dropped"
        );
        // An answer larger than the whole bound is fetched every time and evicts nothing.
        let before = size();
        for _ in 0..2 {
            assert_eq!(look_up(&step, 100 * 1024, "big").await, 100 * 1024);
        }
        assert_eq!(calls.load(SeqCst), served + 3);
        assert_eq!(size(), before);
    }
}
