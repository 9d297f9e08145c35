//! The outbound HTTP policy of a running bot: a redirect to another origin is not followed
//! (so secret headers never reach it), and a URL template hole cannot move in the path.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{HeaderMap, StatusCode, Uri};
use support::*;

const KEY: &str = "key-0123456789";

/// A server on 127.0.0.1 that records (path, x-api-key) and answers `reply(path)`.
async fn recorder(
    reply: impl Fn(&str) -> (StatusCode, HeaderMap) + Clone + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let record = record.clone();
        let reply = reply.clone();
        async move {
            let key = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push((uri.path().to_owned(), key));
            reply(uri.path())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("127.0.0.1:{}", addr.port()), seen)
}

fn bot(url: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: api}}
stringData: {{key: {KEY}}}
{}{}"#,
        open_webhook("open"),
        pass_through(
            "open",
            &format!(
                "{{http: {{url: '{url}', headers: {{X-Api-Key: {{secretRef: {{name: api, key: key}}}}}}}}}}"
            ),
            "{retry: {maxAttempts: 1}}",
        )
    )
}

async fn send(yaml: &str, body: &str) -> tempfile::TempDir {
    let (engine, dir) = start(yaml).await;
    let url = format!("http://{}/hook", engine.addr().unwrap());
    let status = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    assert!(engine.settle(Duration::from_secs(10)).await);
    engine.shutdown().await;
    dir
}

fn dead_letters(dir: &tempfile::TempDir) -> Vec<inputbot_runtime::dlq::DeadLetter> {
    inputbot_runtime::dlq::read(&dir.path().join("dlq/inputbot.default.out.act.dlq.jsonl")).unwrap()
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_and_never_gets_the_secret_header() {
    let (elsewhere, stolen) = recorder(|_| (StatusCode::OK, HeaderMap::new())).await;
    // The same server by another name is another origin.
    let elsewhere = elsewhere.replace("127.0.0.1", "localhost");
    let target = format!("http://{elsewhere}/steal");
    let (first, seen) = recorder(move |_| {
        let mut h = HeaderMap::new();
        h.insert("location", target.parse().unwrap());
        (StatusCode::TEMPORARY_REDIRECT, h)
    })
    .await;
    let dir = send(&bot(&format!("http://{first}/hook")), r#"{"n": 1}"#).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].1.as_deref(), Some(KEY));
    assert!(
        stolen.lock().unwrap().is_empty(),
        "followed to {:?}",
        stolen.lock().unwrap()
    );
    let dead = dead_letters(&dir);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error.status, Some(307), "{:?}", dead[0].error);
}

#[tokio::test]
async fn a_redirect_on_the_same_origin_is_followed() {
    let (addr, seen) = recorder(|path| {
        let mut h = HeaderMap::new();
        if path == "/old" {
            h.insert("location", "/new".parse().unwrap());
            (StatusCode::PERMANENT_REDIRECT, h)
        } else {
            (StatusCode::OK, h)
        }
    })
    .await;
    let dir = send(&bot(&format!("http://{addr}/old")), r#"{"n": 1}"#).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1], ("/new".to_owned(), Some(KEY.to_owned())));
    assert!(dead_letters(&dir).is_empty());
}

#[tokio::test]
async fn a_template_hole_of_dot_dot_cannot_move_up_the_path() {
    let (addr, seen) = recorder(|_| (StatusCode::OK, HeaderMap::new())).await;
    let url = format!("http://{addr}/items/{{{{ data.id }}}}/notes");
    let dir = send(&bot(&url), r#"{"id": ".."}"#).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    let dead = dead_letters(&dir);
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error.message.contains("path"),
        "{:?}",
        dead[0].error
    );
}
