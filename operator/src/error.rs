//! The one error type of a reconcile. Each variant has a stable label (metrics, event reasons)
//! and says whether retrying can help: [`Error::is_permanent`] drives the controllers'
//! `error_policy` — permanent errors set a condition and a Warning event and wait for the
//! resource to change; transient ones requeue with backoff.

use crate::{render::PlanError, topics::TopicError};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec fails validation (names the fields).
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] PlanError),
    /// A referenced resource does not exist (yet).
    #[error("{field}: {kind} {namespace}/{name} not found")]
    MissingReference {
        /// The referring field, e.g. `spec.botRef`.
        field: &'static str,
        /// Kind of the missing resource.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, e.g. `apply Deployment team-a/intake-ingest`.
        action: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Topic provisioning failed.
    #[error("topics: {0}")]
    Topics(#[source] TopicError),
    /// The object could not be read as its type (a malformed object that slipped past the
    /// schema).
    #[error("the object cannot be read: {0}")]
    Malformed(String),
}

impl Error {
    /// A stable, low-cardinality label: metrics and event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingReference { .. } => "ReferenceNotFound",
            Error::Kube { .. } => "KubernetesApiError",
            Error::Topics(_) => "TopicProvisioningFailed",
            Error::Malformed(_) => "MalformedObject",
        }
    }

    /// Whether the same input fails again: wait for a change instead of retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::Malformed(_) => true,
            // The reference is watched: its creation triggers a reconcile.
            Error::MissingReference { .. } => true,
            Error::Kube { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 400 || s.code == 422)
            }
            Error::Topics(e) => e.is_permanent(),
        }
    }

    /// Wraps a Kubernetes error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

/// A reconcile's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn invalid_specs_and_missing_references_wait_for_a_change() {
        let missing = Error::MissingReference {
            field: "spec.botRef",
            kind: "InputBot",
            namespace: "ns".into(),
            name: "bot".into(),
        };
        assert!(missing.is_permanent());
        assert_eq!(missing.label(), "ReferenceNotFound");
        assert_eq!(
            missing.to_string(),
            "spec.botRef: InputBot ns/bot not found"
        );
        assert!(Error::InvalidSpec(crate::render::PlanError::Invalid(vec![])).is_permanent());
    }

    #[test]
    fn api_server_outages_and_conflicts_are_retried() {
        for code in [409, 429, 500, 503] {
            assert!(!Error::kube("apply")(api(code)).is_permanent(), "{code}");
        }
        for code in [400, 422] {
            assert!(Error::kube("apply")(api(code)).is_permanent(), "{code}");
        }
    }
}
