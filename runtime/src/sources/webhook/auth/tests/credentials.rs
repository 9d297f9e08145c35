//! Bearer tokens and Basic credentials.

use super::*;

#[test]
fn bearer_accepts_the_token_and_rejects_others() {
    let token = "tok-s3cr3t-0123456789";
    let auth = build(
        &WebhookAuth {
            hmac: None,
            bearer: Some(BearerAuth {
                secret_ref: sref("token"),
            }),
            basic: None,
            jwt: None,
            api_key: None,
            none: None,
        },
        &[("token", token.as_bytes())],
    )
    .unwrap();
    let ok = auth
        .verify(
            &h(&[("authorization", &format!("Bearer {token}"))]),
            BODY,
            at(NOW),
        )
        .unwrap();
    assert_eq!(ok.delivery_id, None);
    auth.verify(
        &h(&[("authorization", &format!("bearer  {token}"))]),
        BODY,
        at(NOW),
    )
    .unwrap();

    let wrong = "tok-s3cr3t-0123456788";
    let cases = [
        (h(&[]), "missing_credentials"),
        (h(&[("authorization", token)]), "missing_credentials"),
        (
            h(&[("authorization", "Alphabeticsecret more")]),
            "missing_credentials",
        ),
        (h(&[("authorization", "Bearer")]), "missing_credentials"),
        (
            h(&[("authorization", &format!("Basic {token}"))]),
            "missing_credentials",
        ),
        (
            h(&[("authorization", &format!("Bearer {wrong}"))]),
            "bad_credentials",
        ),
        (
            h(&[("authorization", &format!("Bearer {token}x"))]),
            "bad_credentials",
        ),
    ];
    for (req, reason) in cases {
        let err = auth.verify(&req, BODY, at(NOW)).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_clean(&err, err.to_string(), &[token.to_owned(), wrong.to_owned()]);
    }
    let debug = format!("{auth:?}");
    assert!(
        debug.contains("bearer") && !debug.contains(token),
        "{debug}"
    );
}

#[test]
fn basic_accepts_the_credentials_and_rejects_others() {
    let password = "pa55-s3cr3t-word";
    let auth = build(
        &WebhookAuth {
            hmac: None,
            bearer: None,
            basic: Some(BasicAuth {
                username: "robot".to_owned(),
                password_secret_ref: sref("password"),
            }),
            jwt: None,
            api_key: None,
            none: None,
        },
        &[("password", password.as_bytes())],
    )
    .unwrap();
    let basic = |creds: &str| h(&[("authorization", &format!("Basic {}", BASE64.encode(creds)))]);
    auth.verify(&basic(&format!("robot:{password}")), BODY, at(NOW))
        .unwrap();

    let cases = [
        (basic(&format!("robot:{password}x")), "bad_credentials"),
        (basic(&format!("Robot:{password}")), "bad_credentials"),
        (basic("robot:"), "bad_credentials"),
        (basic(&format!(":{password}")), "bad_credentials"),
        (basic(&format!("robot{password}")), "malformed"),
        (h(&[("authorization", "Basic ***")]), "malformed"),
        (h(&[]), "missing_credentials"),
        (
            h(&[("authorization", &format!("Bearer {password}"))]),
            "missing_credentials",
        ),
    ];
    for (req, reason) in cases {
        let err = auth.verify(&req, BODY, at(NOW)).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
        let status = if reason == "malformed" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(err.status(), status);
        assert_clean(&err, err.to_string(), &[password.to_owned()]);
    }
}
