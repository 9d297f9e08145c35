//! Every webhook auth scheme over real HTTP through the running bot: a valid request is
//! accepted, a tampered or expired one is refused with the right status, and a repeat of an
//! accepted one is answered `202` as a duplicate. Signing
//! here is written from the senders' documentation, independently of the runtime's code.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;
use support::*;

const KEY: &str = "preset-secret";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn mac(key: &[u8], content: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(content);
    m.finalize().into_bytes().to_vec()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Headers a sender of `preset` would send for `body` at time `ts` with delivery id `id`.
fn sign(preset: &str, body: &[u8], ts: u64, id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        h.insert(k, v.parse().unwrap());
    };
    match preset {
        "github" => {
            set(
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(mac(KEY.as_bytes(), body))),
            );
            set("x-github-delivery", id.to_owned());
        }
        "stripe" => {
            let signed = [format!("{ts}.").as_bytes(), body].concat();
            set(
                "stripe-signature",
                format!("t={ts},v1={}", hex::encode(mac(KEY.as_bytes(), &signed))),
            );
        }
        "slack" => {
            let signed = [format!("v0:{ts}:").as_bytes(), body].concat();
            set(
                "x-slack-signature",
                format!("v0={}", hex::encode(mac(KEY.as_bytes(), &signed))),
            );
            set("x-slack-request-timestamp", ts.to_string());
        }
        "shopify" => {
            set(
                "x-shopify-hmac-sha256",
                B64.encode(mac(KEY.as_bytes(), body)),
            );
            set("x-shopify-webhook-id", id.to_owned());
        }
        "standard-webhooks" => {
            let key = B64.decode(WHSEC.trim_start_matches("whsec_")).unwrap();
            let signed = [format!("{id}.{ts}.").as_bytes(), body].concat();
            set(
                "webhook-signature",
                format!("v1,{}", B64.encode(mac(&key, &signed))),
            );
            set("webhook-id", id.to_owned());
            set("webhook-timestamp", ts.to_string());
        }
        "generic" => {
            let signed = [format!("{ts}.").as_bytes(), body].concat();
            set(
                "x-signature",
                format!("sha256={}", hex::encode(mac(KEY.as_bytes(), &signed))),
            );
            set("x-timestamp", ts.to_string());
            set("x-delivery", id.to_owned());
        }
        "bearer" => set("authorization", format!("Bearer {KEY}")),
        "basic" => set(
            "authorization",
            format!("Basic {}", B64.encode(format!("bot:{KEY}"))),
        ),
        other => panic!("unknown preset {other}"),
    }
    h
}

const BOT: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {key: preset-secret, whsec: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: presets}
spec:
  sources:
    - {name: github, webhook: {path: /github, auth: {hmac: {preset: github, secretRef: {name: keys, key: key}}}}}
    - {name: stripe, webhook: {path: /stripe, auth: {hmac: {preset: stripe, secretRef: {name: keys, key: key}}}}}
    - {name: slack, webhook: {path: /slack, auth: {hmac: {preset: slack, secretRef: {name: keys, key: key}}}}}
    - {name: shopify, webhook: {path: /shopify, auth: {hmac: {preset: shopify, secretRef: {name: keys, key: key}}}}}
    - {name: standard-webhooks, webhook: {path: /standard-webhooks, auth: {hmac: {preset: standard-webhooks, secretRef: {name: keys, key: whsec}}}}}
    - name: generic
      webhook:
        path: /generic
        auth: {hmac: {preset: generic, header: X-Signature, prefix: "sha256=", timestampHeader: X-Timestamp, deliveryIdHeader: X-Delivery, secretRef: {name: keys, key: key}}}
    - {name: bearer, webhook: {path: /bearer, auth: {bearer: {secretRef: {name: keys, key: key}}}}}
    - {name: basic, webhook: {path: /basic, auth: {basic: {username: bot, passwordSecretRef: {name: keys, key: key}}}}}
"#;

async fn post(url: &str, headers: HeaderMap, body: &[u8]) -> u16 {
    client()
        .post(url)
        .headers(headers)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_scheme_accepts_valid_and_refuses_tampered_expired_and_replayed_requests() {
    let (engine, _dir) = start(BOT).await;
    let base = format!("http://{}", engine.addr().unwrap());
    let body = br#"{"order": 1}"#;
    let tampered = br#"{"order": 2}"#;
    let timestamped = ["stripe", "slack", "standard-webhooks", "generic"];
    let replay_protected = [
        "github",
        "stripe",
        "slack",
        "shopify",
        "standard-webhooks",
        "generic",
    ];
    let mut failures = Vec::new();
    for (n, preset) in [
        "github",
        "stripe",
        "slack",
        "shopify",
        "standard-webhooks",
        "generic",
        "bearer",
        "basic",
    ]
    .into_iter()
    .enumerate()
    {
        let url = format!("{base}/{preset}");
        let id = format!("msg_{n}_valid");
        let ts = now();
        let mut check = |what: &str, got: u16, want: u16| {
            if got != want {
                failures.push(format!("{preset}: {what}: got {got}, want {want}"));
            }
        };
        check(
            "valid",
            post(&url, sign(preset, body, ts, &id), body).await,
            202,
        );
        if replay_protected.contains(&preset) {
            // A repeat of an accepted delivery is answered as a duplicate, not published.
            check(
                "replayed",
                post(&url, sign(preset, body, ts, &id), body).await,
                202,
            );
            check(
                "tampered",
                post(
                    &url,
                    sign(preset, body, ts, &format!("msg_{n}_t")),
                    tampered,
                )
                .await,
                401,
            );
        }
        if timestamped.contains(&preset) {
            check(
                "expired",
                post(
                    &url,
                    sign(preset, body, ts - 3600, &format!("msg_{n}_old")),
                    body,
                )
                .await,
                401,
            );
        }
        let mut wrong = sign(preset, body, ts, &format!("msg_{n}_w"));
        for (_, v) in wrong.iter_mut() {
            let mut s = v.to_str().unwrap().to_owned();
            // Corrupt the last character of every header: signatures and tokens no longer match.
            let last = s.pop().unwrap();
            s.push(if last == 'A' { 'B' } else { 'A' });
            *v = s.parse().unwrap();
        }
        let got = post(&url, wrong, body).await;
        if !(got == 401 || got == 400) {
            failures.push(format!(
                "{preset}: wrong credentials: got {got}, want 401 or 400"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_401_names_the_scheme_to_use_in_www_authenticate() {
    let (engine, _dir) = start(BOT).await;
    let base = format!("http://{}", engine.addr().unwrap());
    for (path, want) in [
        ("bearer", "Bearer realm=\"inputbot\""),
        ("basic", "Basic realm=\"inputbot\", charset=\"UTF-8\""),
        ("github", "Signature realm=\"inputbot\""),
    ] {
        let r = client()
            .post(format!("{base}/{path}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some(want),
            "{path}"
        );
    }
    engine.shutdown().await;
}
