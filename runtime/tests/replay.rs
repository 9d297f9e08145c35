//! Replays as a sender and an attacker make them, against a running bot: a captured signed
//! request resent with a new delivery id is not published again, and a sender's genuine retry
//! of an accepted delivery is answered `202`, not an error.

mod support;

use std::time::Duration;

use support::*;

const SECRET: &str = "replay-secret";

fn bot(target: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{hmac: {SECRET}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {{name: hooks}}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {{hmac: {{preset: github, secretRef: {{name: creds, key: hmac}}}}}}
    - name: shop
      webhook:
        path: /shop
        auth: {{hmac: {{preset: shopify, secretRef: {{name: creds, key: hmac}}}}}}
{}"#,
        pass_through("hooks", &format!("{{http: {{url: '{target}'}}}}"), "")
    )
}

fn shopify_signature(body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_signed_request_resent_with_a_new_delivery_id_is_published_once_and_a_retry_gets_202() {
    let target = Target::start(Behaviour::Ok).await;
    let (engine, _dir) = start(&bot(&target.url("/out"))).await;
    let base = format!("http://{}", engine.addr().unwrap());
    let body = br#"{"order": 1}"#.to_vec();
    let send = |path: &str, id_header: &str, sig_header: &str, sig: String, id: &str| {
        client()
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header(id_header, id)
            .header(sig_header, sig)
            .body(body.clone())
            .send()
    };
    for (path, id_header, sig_header, sig) in [
        (
            "/gh",
            "x-github-delivery",
            "x-hub-signature-256",
            github_signature(SECRET, &body),
        ),
        (
            "/shop",
            "x-shopify-webhook-id",
            "x-shopify-hmac-sha256",
            shopify_signature(&body),
        ),
    ] {
        let first = send(path, id_header, sig_header, sig.clone(), "d-1")
            .await
            .unwrap();
        assert_eq!(first.status(), 202, "{path}");
        assert!(engine.settle(Duration::from_secs(10)).await);
        // The sender's retry of the same delivery: a success, not a 409.
        let retry = send(path, id_header, sig_header, sig.clone(), "d-1")
            .await
            .unwrap();
        assert_eq!(retry.status(), 202, "{path}: retry");
        let answer: serde_json::Value = retry.json().await.unwrap();
        assert_eq!(answer["duplicate"], true, "{path}: {answer}");
        // A captured request resent with a fresh, unsigned delivery id: still the same one.
        let resent = send(path, id_header, sig_header, sig, "d-2").await.unwrap();
        assert_eq!(resent.status(), 202, "{path}: resent");
        assert!(engine.settle(Duration::from_secs(10)).await);
    }
    assert_eq!(
        target.delivered_ids().len(),
        2,
        "each delivery is published once"
    );
    engine.shutdown().await;
}
