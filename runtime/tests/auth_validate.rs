//! `inputbot validate` on broken `jwt`, `apiKey` and `oauth2` configs: each is rejected with
//! exit code 1 and a message naming the field — from the CRD schema, its CEL rules, or the
//! checks that read the Secrets.

use std::process::Command;

const SECRET: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData:
  key: ak_0123456789
  private: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
---
"#;

fn webhook(auth: &str) -> String {
    format!(
        "{SECRET}apiVersion: inputbot.dev/v1alpha1\nkind: InputBot\nmetadata: {{name: b}}\nspec:\n  sources:\n    - name: s\n      webhook: {{path: /s, auth: {auth}}}\n"
    )
}

fn poll(oauth2: &str) -> String {
    format!(
        "{SECRET}apiVersion: inputbot.dev/v1alpha1\nkind: InputBot\nmetadata: {{name: b}}\nspec:\n  sources:\n    - name: s\n      poll: {{url: 'https://feed.test/items', interval: 1m, oauth2: {oauth2}}}\n"
    )
}

fn binding(http: &str) -> String {
    format!(
        "{}---\napiVersion: inputbot.dev/v1alpha1\nkind: ActionBinding\nmetadata: {{name: a}}\nspec:\n  botRef: {{name: b}}\n  action: {{http: {http}}}\n",
        webhook("{none: {}}")
    )
}

fn enrich(http: &str) -> String {
    format!(
        "{}---\napiVersion: inputbot.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  botRef: {{name: b}}\n  steps: [{{enrich: {{http: {http}}}}}]\n",
        webhook("{none: {}}")
    )
}

const OAUTH: &str =
    "tokenUrl: 'https://login.test/token', clientId: c, clientSecretRef: {name: keys, key: key}";

#[test]
fn validate_rejects_broken_jwt_api_key_and_oauth2_configs_naming_the_field() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "jwt: an HMAC algorithm with a JWKS (algorithm confusion)",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], algorithms: [RS256, HS256], jwks: {url: 'https://i.test/jwks'}}}",
            ),
            "spec.sources[0].webhook.auth.jwt: HS256, HS384 and HS512 need sharedSecretRefs",
        ),
        (
            "jwt: alg none",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], algorithms: [none], jwks: {url: 'https://i.test/jwks'}}}",
            ),
            "spec.sources[0].webhook.auth.jwt.algorithms[0]",
        ),
        (
            "jwt: two key sources",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], jwks: {url: 'https://i.test/jwks'}, keySecretRefs: [{name: keys, key: key}]}}",
            ),
            "spec.sources[0].webhook.auth.jwt: set exactly one of jwks, keySecretRefs or sharedSecretRefs",
        ),
        (
            "jwt: no audience",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [], jwks: {url: 'https://i.test/jwks'}}}",
            ),
            "spec.sources[0].webhook.auth.jwt.audience",
        ),
        (
            "jwt: shared secrets without HMAC algorithms",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], sharedSecretRefs: [{name: keys, key: key}]}}",
            ),
            "spec.sources[0].webhook.auth.jwt: sharedSecretRefs need algorithms",
        ),
        (
            "jwt: a private key where a public one belongs",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], keySecretRefs: [{name: keys, key: private}]}}",
            ),
            "spec.sources[0].webhook.auth.jwt.keySecretRefs[0]: holds a PEM private key",
        ),
        (
            "jwt: a clock skew that keeps expired tokens alive",
            webhook(
                "{jwt: {issuer: 'https://i.test', audience: [a], clockSkew: 2h, jwks: {url: 'https://i.test/jwks'}}}",
            ),
            "spec.sources[0].webhook.auth.jwt.clockSkew: expected at most 10m",
        ),
        (
            "apiKey: no keys",
            webhook("{apiKey: {secretRefs: []}}"),
            "spec.sources[0].webhook.auth.apiKey.secretRefs",
        ),
        (
            "apiKey: a header name HTTP does not allow",
            webhook("{apiKey: {header: 'x key', secretRefs: [{name: keys, key: key}]}}"),
            "spec.sources[0].webhook.auth.apiKey.header: expected an HTTP header name",
        ),
        (
            "apiKey: a key the Secret does not have",
            webhook("{apiKey: {secretRefs: [{name: keys, key: nope}]}}"),
            "spec.sources[0].webhook.auth.apiKey.secretRefs[0].key: Secret default/keys has no key \"nope\"",
        ),
        (
            "oauth2: an Authorization header beside it",
            binding(&format!(
                "{{url: 'https://crm.test/t', headers: {{Authorization: {{value: x}}}}, oauth2: {{{OAUTH}}}}}"
            )),
            "spec.action.http.headers[Authorization]: cannot be set together with oauth2",
        ),
        (
            "oauth2: no client id",
            enrich(
                "{url: 'https://crm.test/c', resultField: c, oauth2: {tokenUrl: 'https://login.test/token', clientSecretRef: {name: keys, key: key}}}",
            ),
            "spec.steps[0].enrich.http.oauth2: set exactly one of clientId or clientIdSecretRef",
        ),
        (
            "oauth2: a token URL that is not http(s)",
            poll(
                "{tokenUrl: 'ftp://login.test/token', clientId: c, clientSecretRef: {name: keys, key: key}}",
            ),
            "spec.sources[0].poll.oauth2.tokenUrl",
        ),
        (
            "oauth2: a scope with a space",
            poll(&format!("{{{OAUTH}, scopes: ['read write']}}")),
            "spec.sources[0].poll.oauth2.scopes[0]: expected a scope token",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, yaml, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_inputbot"))
            .args(["validate", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.contains(expected),
            "{what}: expected {expected:?} in:\n{text}"
        );
        assert!(
            !text.contains("ak_0123456789"),
            "{what}: a secret value in:\n{text}"
        );
    }
}
