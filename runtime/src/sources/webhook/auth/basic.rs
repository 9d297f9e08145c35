//! Basic credentials: `Authorization: Basic base64(user:password)`, user name and password
//! compared as SHA-256 digests in constant time, both always.

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderMap};
use subtle::ConstantTimeEq;

use super::{AuthError, BASE64, Verified, authorization, sha256};

/// The digests of the configured user name and password.
pub(super) struct Basic {
    username_digest: [u8; 32],
    password_digest: [u8; 32],
}

impl Basic {
    pub(super) fn new(username: &str, password: &[u8]) -> Self {
        Self {
            username_digest: sha256(username.as_bytes()),
            password_digest: sha256(password),
        }
    }

    pub(super) fn verify(&self, headers: &HeaderMap) -> Result<Verified, AuthError> {
        let encoded = authorization(headers, "Basic", "Basic credentials")?;
        let malformed = |found: &str| AuthError::Malformed {
            header: AUTHORIZATION.as_str().to_owned(),
            expected: "Basic followed by base64 of user:password".to_owned(),
            found: found.to_owned(),
        };
        let decoded = BASE64
            .decode(encoded.trim())
            .map_err(|_| malformed("credentials that are not valid base64"))?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| malformed("decoded credentials without a colon"))?;
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        let ok =
            sha256(user).ct_eq(&self.username_digest) & sha256(pass).ct_eq(&self.password_digest);
        if bool::from(ok) {
            Ok(Verified::default())
        } else {
            Err(AuthError::BadCredentials {
                what: "the user name or password",
            })
        }
    }
}
