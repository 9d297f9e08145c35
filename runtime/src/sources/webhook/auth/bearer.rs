//! Bearer tokens: `Authorization: Bearer <token>`, compared as SHA-256 digests in constant
//! time (the configured token is kept only as its digest).

use http::header::HeaderMap;
use subtle::ConstantTimeEq;

use super::{AuthError, Verified, authorization, sha256};

/// The digest of the configured token.
pub(super) struct Bearer {
    token_digest: [u8; 32],
}

impl Bearer {
    pub(super) fn new(token: &[u8]) -> Self {
        Self {
            token_digest: sha256(token),
        }
    }

    pub(super) fn verify(&self, headers: &HeaderMap) -> Result<Verified, AuthError> {
        let token = authorization(headers, "Bearer", "a Bearer token")?;
        let ok = sha256(token.as_bytes()).ct_eq(&self.token_digest);
        if bool::from(ok) {
            Ok(Verified::default())
        } else {
            Err(AuthError::BadCredentials {
                what: "the bearer token",
            })
        }
    }
}
