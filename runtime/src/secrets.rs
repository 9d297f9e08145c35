//! Secret values, resolved from a reference. In a cluster the operator mounts each referenced
//! Secret as files (`<dir>/<name>/<key>`); locally they come from Secret manifests in the given
//! files. Values are handed to the component that needs them and never logged.

use std::{path::PathBuf, sync::Arc};

use inputbot_api::{common::SecretKeyRef, manifest::ResourceSet};

/// Why a Secret value could not be read. Names the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not in the files given to `inputbot run`.
    #[error("Secret {namespace}/{name} key {key:?} is not among the given files")]
    NotInFiles {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// The mounted file could not be read.
    #[error("cannot read Secret {name} key {key:?} from {path}: {source}")]
    Mounted {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why a field of a spec cannot be used when a component is built: its value, or the Secret
/// it references. Names the field (and the Secret and key), never a value.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// A field has a value the runtime cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `http.url` or `http.headers.Authorization`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A referenced Secret value could not be read.
    #[error("{field}: {error}")]
    Secret {
        /// The field holding the reference, e.g. `slack.webhookSecretRef`.
        field: String,
        /// Why it could not be read (names the Secret and key only).
        error: SecretError,
    },
}

impl FieldError {
    /// [`FieldError::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Resolves Secret references of one namespace.
#[derive(Clone)]
pub enum Secrets {
    /// From Secret manifests (local runs).
    Manifests {
        /// The loaded files.
        set: Arc<ResourceSet>,
        /// Namespace of the component.
        namespace: String,
    },
    /// From files mounted by the operator.
    Mounted {
        /// Directory holding `<secret>/<key>` files.
        dir: PathBuf,
    },
}

/// Where the Secrets of every namespace come from: what a role holds, handing each component
/// the [`Secrets`] of its namespace.
#[derive(Clone)]
pub enum SecretStore {
    /// From Secret manifests in the given files (local runs).
    Manifests(Arc<ResourceSet>),
    /// From files mounted by the operator (`<dir>/<secret>/<key>`).
    Mounted(PathBuf),
}

impl SecretStore {
    /// The Secrets of one namespace.
    pub fn namespace(&self, namespace: &str) -> Secrets {
        match self {
            SecretStore::Manifests(set) => Secrets::Manifests {
                set: set.clone(),
                namespace: namespace.to_owned(),
            },
            SecretStore::Mounted(dir) => Secrets::Mounted { dir: dir.clone() },
        }
    }
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretStore::Manifests(_) => f.write_str("SecretStore::Manifests"),
            SecretStore::Mounted(dir) => write!(f, "SecretStore::Mounted({})", dir.display()),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secrets::Manifests { namespace, .. } => write!(f, "Secrets::Manifests({namespace})"),
            Secrets::Mounted { dir } => write!(f, "Secrets::Mounted({})", dir.display()),
        }
    }
}

impl Secrets {
    /// The value of a reference.
    pub fn get(&self, r: &SecretKeyRef) -> Result<Vec<u8>, SecretError> {
        match self {
            Secrets::Manifests { set, namespace } => set
                .secret_value(namespace, &r.name, &r.key)
                .ok_or_else(|| SecretError::NotInFiles {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                    key: r.key.clone(),
                }),
            Secrets::Mounted { dir } => {
                let path = dir.join(&r.name).join(&r.key);
                std::fs::read(&path).map_err(|source| SecretError::Mounted {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }

    /// The value as UTF-8 text, trimmed of a trailing newline (as `kubectl create secret
    /// --from-file` often leaves one).
    pub fn get_string(&self, r: &SecretKeyRef) -> Result<String, SecretError> {
        let bytes = self.get(r)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.trim_end_matches(['\n', '\r']).to_owned())
    }

    /// `Secret ns/name key "k"` (the namespace when known): how messages name a reference.
    pub fn label(&self, r: &SecretKeyRef) -> String {
        match self {
            Secrets::Manifests { namespace, .. } => {
                format!("Secret {namespace}/{} key {:?}", r.name, r.key)
            }
            Secrets::Mounted { .. } => format!("Secret {} key {:?}", r.name, r.key),
        }
    }

    /// A closure form for constructors that take `&dyn Fn(&SecretKeyRef) -> Result<Vec<u8>, String>`.
    pub fn resolver(&self) -> impl Fn(&SecretKeyRef) -> Result<Vec<u8>, String> + '_ {
        move |r| self.get(r).map_err(|e| e.to_string())
    }
}
