//! Connection settings shared by every Kafka client of the runtime (producer, consumers, the
//! health probe and the DLQ tools): bootstrap servers, client id, TLS and SASL, read once from
//! the environment the operator renders. Secret values (the SASL password) are never logged:
//! [`KafkaSettings`]'s `Debug` redacts them.
//!
//! | variable | librdkafka property |
//! |---|---|
//! | `INPUTBOT_KAFKA_BOOTSTRAP` | `bootstrap.servers` (required) |
//! | `INPUTBOT_KAFKA_SECURITY_PROTOCOL` | `security.protocol` (default `plaintext`) |
//! | `INPUTBOT_KAFKA_SASL_MECHANISM` | `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) |
//! | `INPUTBOT_KAFKA_SASL_USERNAME`, `…_PASSWORD` | `sasl.username`, `sasl.password` |
//! | `INPUTBOT_KAFKA_TLS_CA_FILE` | `ssl.ca.location` |
//! | `INPUTBOT_KAFKA_TLS_CERT_FILE`, `…_KEY_FILE` | `ssl.certificate.location`, `ssl.key.location` |
//! | `POD_NAME` | `client.id` (else `inputbot-<role>`) |
//! | `INPUTBOT_KAFKA_DEBUG` | `debug` (librdkafka's debug contexts, e.g. `broker,metadata`; its lines are logged at `debug` on `inputbot::bus`) |

use rdkafka::ClientConfig;

/// Why the Kafka settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is unset or empty.
    #[error(
        "{0} is not set: the operator sets it on every runtime Deployment (the Kafka bootstrap servers, host:port[,host:port…])"
    )]
    Missing(&'static str),
    /// A variable has a value the runtime does not know.
    #[error("{var}={value:?}: expected one of {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value (never a secret's).
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// SASL was asked for without credentials, or the other way round.
    #[error("{0}")]
    Inconsistent(String),
}

/// How every Kafka client of this process connects.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub bootstrap: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (lower case).
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user.
    pub sasl_username: Option<String>,
    /// SASL password (redacted in `Debug`).
    pub sasl_password: Option<String>,
    /// CA bundle (PEM) to verify the brokers.
    pub tls_ca_file: Option<String>,
    /// Client certificate (PEM), for mutual TLS.
    pub tls_cert_file: Option<String>,
    /// Client key (PEM), for mutual TLS.
    pub tls_key_file: Option<String>,
    /// `client.id`: the pod's name, so brokers' logs and quotas name the pod.
    pub client_id: String,
    /// librdkafka's `debug` contexts (to diagnose a client), if any.
    pub debug: Option<String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_ca_file", &self.tls_ca_file)
            .field("client_id", &self.client_id)
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

const PROTOCOLS: &str = "plaintext, ssl, sasl_plaintext, sasl_ssl";
const MECHANISMS: &str = "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512";

impl KafkaSettings {
    /// Plain-text settings for `bootstrap` (tests, tools).
    pub fn plaintext(bootstrap: &str, client_id: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            security_protocol: "plaintext".to_owned(),
            client_id: client_id.to_owned(),
            ..Self::default()
        }
    }

    /// Reads the settings from the process environment (see the module docs).
    pub fn from_env(default_client_id: &str) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok(), default_client_id)
    }

    /// Reads the settings through `var` (the environment, or a map in tests).
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
        default_client_id: &str,
    ) -> Result<Self, SettingsError> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bootstrap = get("INPUTBOT_KAFKA_BOOTSTRAP")
            .ok_or(SettingsError::Missing("INPUTBOT_KAFKA_BOOTSTRAP"))?;
        let security_protocol = get("INPUTBOT_KAFKA_SECURITY_PROTOCOL")
            .unwrap_or_else(|| "plaintext".to_owned())
            .to_ascii_lowercase();
        if !PROTOCOLS.split(", ").any(|p| p == security_protocol) {
            return Err(SettingsError::Invalid {
                var: "INPUTBOT_KAFKA_SECURITY_PROTOCOL",
                value: security_protocol,
                expected: PROTOCOLS,
            });
        }
        let sasl_mechanism = get("INPUTBOT_KAFKA_SASL_MECHANISM").map(|m| m.to_ascii_uppercase());
        if let Some(m) = &sasl_mechanism
            && !MECHANISMS.split(", ").any(|x| x == m)
        {
            return Err(SettingsError::Invalid {
                var: "INPUTBOT_KAFKA_SASL_MECHANISM",
                value: m.clone(),
                expected: MECHANISMS,
            });
        }
        let sasl = security_protocol.starts_with("sasl_");
        if sasl && sasl_mechanism.is_none() {
            return Err(SettingsError::Inconsistent(format!(
                "INPUTBOT_KAFKA_SECURITY_PROTOCOL={security_protocol} needs INPUTBOT_KAFKA_SASL_MECHANISM ({MECHANISMS})"
            )));
        }
        let sasl_username = get("INPUTBOT_KAFKA_SASL_USERNAME");
        let sasl_password = var("INPUTBOT_KAFKA_SASL_PASSWORD").filter(|v| !v.is_empty());
        if sasl && (sasl_username.is_none() || sasl_password.is_none()) {
            return Err(SettingsError::Inconsistent(format!(
                "INPUTBOT_KAFKA_SECURITY_PROTOCOL={security_protocol} needs INPUTBOT_KAFKA_SASL_USERNAME and INPUTBOT_KAFKA_SASL_PASSWORD"
            )));
        }
        let tls_cert_file = get("INPUTBOT_KAFKA_TLS_CERT_FILE");
        let tls_key_file = get("INPUTBOT_KAFKA_TLS_KEY_FILE");
        if tls_cert_file.is_some() != tls_key_file.is_some() {
            let (set, unset) = if tls_cert_file.is_some() {
                (
                    "INPUTBOT_KAFKA_TLS_CERT_FILE",
                    "INPUTBOT_KAFKA_TLS_KEY_FILE",
                )
            } else {
                (
                    "INPUTBOT_KAFKA_TLS_KEY_FILE",
                    "INPUTBOT_KAFKA_TLS_CERT_FILE",
                )
            };
            return Err(SettingsError::Inconsistent(format!(
                "{set} is set but {unset} is not: mutual TLS needs the client certificate and its key"
            )));
        }
        Ok(Self {
            bootstrap,
            security_protocol,
            sasl_mechanism: sasl_mechanism.filter(|_| sasl),
            sasl_username: sasl_username.filter(|_| sasl),
            sasl_password: sasl_password.filter(|_| sasl),
            tls_ca_file: get("INPUTBOT_KAFKA_TLS_CA_FILE"),
            tls_cert_file,
            tls_key_file,
            client_id: get("POD_NAME").unwrap_or_else(|| default_client_id.to_owned()),
            debug: get("INPUTBOT_KAFKA_DEBUG"),
        })
    }

    /// A librdkafka config with the connection settings only; each client adds its own.
    /// Topics are never created by the runtime (the operator provisions them).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            .set("security.protocol", &self.security_protocol)
            .set("allow.auto.create.topics", "false")
            // librdkafka logs through the `log` crate, which this binary does not route.
            .set("log_level", "3");
        if let Some(d) = &self.debug {
            c.set("debug", d).set("log_level", "7");
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p);
        }
        if let Some(ca) = &self.tls_ca_file {
            c.set("ssl.ca.location", ca);
        }
        if let Some(cert) = &self.tls_cert_file {
            c.set("ssl.certificate.location", cert);
        }
        if let Some(key) = &self.tls_key_file {
            c.set("ssl.key.location", key);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<KafkaSettings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        KafkaSettings::from_lookup(|k| map.get(k).cloned(), "inputbot-test")
    }

    #[test]
    fn reads_plaintext_settings_and_names_the_pod() {
        let s = from(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9092"),
            ("POD_NAME", "bot-ingest-abc"),
        ])
        .unwrap();
        assert_eq!(s.bootstrap, "k:9092");
        assert_eq!(s.security_protocol, "plaintext");
        assert_eq!(s.client_id, "bot-ingest-abc");
        let c = s.client_config();
        assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(c.get("sasl.mechanism"), None);
    }

    #[test]
    fn refuses_to_start_without_bootstrap_servers() {
        let e = from(&[]).unwrap_err();
        assert!(e.to_string().contains("INPUTBOT_KAFKA_BOOTSTRAP"), "{e}");
    }

    #[test]
    fn sasl_needs_a_mechanism_and_credentials_and_never_prints_the_password() {
        let base = [
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9093"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ];
        assert!(
            from(&base)
                .unwrap_err()
                .to_string()
                .contains("SASL_MECHANISM")
        );
        let mut vars = base.to_vec();
        vars.push(("INPUTBOT_KAFKA_SASL_MECHANISM", "scram-sha-512"));
        assert!(from(&vars).unwrap_err().to_string().contains("USERNAME"));
        vars.push(("INPUTBOT_KAFKA_SASL_USERNAME", "bot"));
        vars.push(("INPUTBOT_KAFKA_SASL_PASSWORD", "hunter2"));
        vars.push(("INPUTBOT_KAFKA_TLS_CA_FILE", "/ca/ca.crt"));
        let s = from(&vars).unwrap();
        let c = s.client_config();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca/ca.crt"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_other_way_round() {
        let base = [
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9094"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "ssl"),
        ];
        let mut vars = base.to_vec();
        vars.push(("INPUTBOT_KAFKA_TLS_CERT_FILE", "/tls/client.crt"));
        let e = from(&vars).unwrap_err();
        assert!(
            e.to_string().contains("INPUTBOT_KAFKA_TLS_KEY_FILE is not"),
            "{e}"
        );
        let mut vars = base.to_vec();
        vars.push(("INPUTBOT_KAFKA_TLS_KEY_FILE", "/tls/client.key"));
        let e = from(&vars).unwrap_err();
        assert!(
            e.to_string()
                .contains("INPUTBOT_KAFKA_TLS_CERT_FILE is not"),
            "{e}"
        );
        vars.push(("INPUTBOT_KAFKA_TLS_CERT_FILE", "/tls/client.crt"));
        let c = from(&vars).unwrap().client_config();
        assert_eq!(c.get("ssl.certificate.location"), Some("/tls/client.crt"));
        assert_eq!(c.get("ssl.key.location"), Some("/tls/client.key"));
    }

    #[test]
    fn rejects_unknown_protocols_and_mechanisms() {
        let e = from(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9092"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "tls"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("sasl_ssl"), "{e}");
        let e = from(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9092"),
            ("INPUTBOT_KAFKA_SASL_MECHANISM", "GSSAPI"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("SCRAM-SHA-256"), "{e}");
    }
}
