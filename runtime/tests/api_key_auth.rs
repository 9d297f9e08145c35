//! `apiKey` webhook auth through the running bot: either of two configured keys (rotation) is
//! accepted and CEL sees which one (`auth.key`); a wrong or missing key gets `401`; a key in
//! the query string counts only where the source opts in.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const CURRENT: &str = "ak_live_current_0123456789";
const NEXT: &str = "ak_live_next_9876543210";

fn bot(target: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{current: {CURRENT}, next: {NEXT}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: intake}}
spec:
  sources:
    - name: header-only
      webhook:
        path: /header
        auth: {{apiKey: {{secretRefs: [{{name: keys, key: current}}, {{name: keys, key: next}}]}}}}
    - name: query-too
      webhook:
        path: /query
        auth:
          apiKey:
            header: X-Partner-Key
            queryParameter: api_key
            secretRefs: [{{name: keys, key: current}}]
{}"#,
        pass_through(
            "intake",
            &format!(
                "{{http: {{url: '{target}', body: {{template: '{{{{ event.botsource }}}} {{{{ auth.scheme }}}} {{{{ auth.key }}}}'}}}}}}"
            ),
            "{retry: {maxAttempts: 1}}",
        )
    )
}

async fn post(url: &str, header: Option<(&str, &str)>) -> (u16, String) {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .body("{}");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["reason"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn either_rotated_key_passes_and_wrong_missing_or_unasked_query_keys_get_401() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/in"))).await;
    let base = format!("http://{}", engine.addr().unwrap());
    let header = format!("{base}/header");
    let query = format!("{base}/query");

    assert_eq!(
        post(&header, Some(("x-api-key", CURRENT))).await,
        (202, String::new())
    );
    assert_eq!(
        post(&header, Some(("X-API-Key", NEXT))).await,
        (202, String::new())
    );
    assert_eq!(
        post(&header, Some(("x-api-key", "ak_live_wrong"))).await,
        (401, "bad_credentials".into())
    );
    // A prefix of a real key is no key.
    assert_eq!(
        post(&header, Some(("x-api-key", &CURRENT[..10]))).await,
        (401, "bad_credentials".into())
    );
    assert_eq!(
        post(&header, None).await,
        (401, "missing_credentials".into())
    );
    // The key in another header than the configured one does not count.
    assert_eq!(
        post(&header, Some(("authorization", CURRENT))).await,
        (401, "missing_credentials".into())
    );
    // This source did not opt in to query keys.
    assert_eq!(
        post(&format!("{header}?api_key={CURRENT}"), None).await,
        (401, "missing_credentials".into())
    );
    // This one did.
    assert_eq!(
        post(&format!("{query}?api_key={CURRENT}"), None).await,
        (202, String::new())
    );
    assert_eq!(
        post(&format!("{query}?api_key={NEXT}"), None).await,
        (401, "bad_credentials".into()),
        "only the keys of this source count"
    );
    assert_eq!(
        post(&query, Some(("x-partner-key", CURRENT))).await,
        (202, String::new())
    );
    assert!(engine.settle(Duration::from_secs(10)).await);
    let mut bodies: Vec<String> = target.received().into_iter().map(|r| r.body).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "header-only apiKey keys/current",
            "header-only apiKey keys/next",
            "query-too apiKey keys/current",
            "query-too apiKey keys/current",
        ]
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(CURRENT) && !metrics.contains(NEXT));
    engine.shutdown().await;
}
