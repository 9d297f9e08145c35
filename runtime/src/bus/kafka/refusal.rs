//! Why the brokers refuse this client, as librdkafka's error callback reports it: SASL
//! authentication failed, or the TLS handshake did. A refused connection makes a metadata
//! request fail with a bare `BrokerTransportFailure`, which reads like a broker that is down; the
//! health check ([`super::KafkaBus`]) puts the refusal in its reason instead, naming what the
//! settings expected (mechanism and user, CA and client certificate) and what the broker said.
//! Nothing here ever holds the password: librdkafka's messages do not carry it.
//!
//! ```text
//!  error callback (producer) ─▶ classify ─▶ the latest refusal (or none: a broker down)
//!  health check: metadata failed ─▶ refusal? ─▶ describe(settings) : "does not answer: …"
//! ```

use std::sync::{Arc, Mutex};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaSettings;

/// How a broker refused the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// SASL authentication failed: unknown user, wrong password or a mechanism the user has no
    /// credentials for.
    Authentication(String),
    /// The TLS handshake failed: the broker refused the client certificate (another CA, or
    /// none), or the broker's certificate did not verify.
    Tls(String),
}

impl Refusal {
    /// Classifies an error of librdkafka's error callback; `None` for what is no refusal (a
    /// broker that is down, a timeout), which then replaces an older refusal.
    pub fn classify(error: &KafkaError, reason: &str) -> Option<Refusal> {
        let detail = trim(reason);
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => Some(Refusal::Authentication(detail)),
            Some(RDKafkaErrorCode::SSL) => Some(Refusal::Tls(detail)),
            // A TLS alert from the broker arrives as a transport failure ("Receive failed:
            // …:SSL routines::…"); librdkafka spells OpenSSL's errors with "SSL".
            _ if reason.contains("SSL") => Some(Refusal::Tls(detail)),
            _ => None,
        }
    }

    /// What a person reads in the log and the readiness reason: what the settings expected
    /// and what the broker answered (never shown to webhook senders).
    pub fn describe(&self, settings: &KafkaSettings) -> String {
        match self {
            Refusal::Authentication(found) => format!(
                "the Kafka broker refused the SASL credentials: expected a user the broker knows for {} \
                 with its password (INPUTBOT_KAFKA_SASL_USERNAME={}, INPUTBOT_KAFKA_SASL_PASSWORD), found: {found}",
                settings.sasl_mechanism.as_deref().unwrap_or("no mechanism"),
                settings.sasl_username.as_deref().unwrap_or("<unset>"),
            ),
            Refusal::Tls(found) => {
                let client = match &settings.tls_cert_file {
                    Some(cert) => format!(
                        "the client certificate INPUTBOT_KAFKA_TLS_CERT_FILE={cert} signed by a CA it trusts"
                    ),
                    None => {
                        "no client certificate (INPUTBOT_KAFKA_TLS_CERT_FILE is not set: a broker \
                             requiring one refuses)"
                            .to_owned()
                    }
                };
                let ca = match &settings.tls_ca_file {
                    Some(ca) => format!("INPUTBOT_KAFKA_TLS_CA_FILE={ca}"),
                    None => "the system CAs (INPUTBOT_KAFKA_TLS_CA_FILE is not set)".to_owned(),
                };
                format!(
                    "the TLS handshake with the Kafka broker failed: expected the broker to accept {client}, \
                     and its certificate to verify against {ca}, found: {found}"
                )
            }
        }
    }
}

/// The latest error's refusal, shared by a client's context (its error callback records) and
/// the health check (which reads, and clears it once the broker answers).
#[derive(Clone, Debug, Default)]
pub struct LatestRefusal(Arc<Mutex<Option<Refusal>>>);

impl LatestRefusal {
    /// Records what an error of the callback says: a refusal, or none (a later error of
    /// another kind, e.g. a broker that went down, replaces an older refusal). "All brokers
    /// are down" follows every failed connection, refused or not, and says nothing of why:
    /// it changes nothing.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Refusal::classify(error, reason);
    }

    /// The refusal of the latest error, if it was one.
    pub fn get(&self) -> Option<Refusal> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets it (the broker answered).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// librdkafka's reason without its varying tail ("(after 3ms in state AUTH_REQ, 1 identical
/// error(s) suppressed)"), so that one cause gives one stable reason (and one log line).
fn trim(reason: &str) -> String {
    let reason = reason.trim();
    match reason.rfind(" (after ") {
        Some(i) if reason.ends_with(')') => reason[..i].to_owned(),
        _ => reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings::from_lookup(
            |k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            },
            "t",
        )
        .unwrap()
    }

    #[test]
    fn a_sasl_failure_names_mechanism_and_user_but_not_the_password() {
        let e = KafkaError::Global(RDKafkaErrorCode::Authentication);
        let r = Refusal::classify(
            &e,
            "sasl_plaintext://k:9093/bootstrap: SASL authentication error: Authentication failed during \
             authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 332ms in \
             state AUTH_REQ, 1 identical error(s) suppressed)",
        )
        .unwrap();
        assert!(
            matches!(&r, Refusal::Authentication(d) if d.ends_with("SCRAM-SHA-512")),
            "{r:?}"
        );
        let s = settings(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9093"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("INPUTBOT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("INPUTBOT_KAFKA_SASL_USERNAME", "bot"),
            ("INPUTBOT_KAFKA_SASL_PASSWORD", "hunter2"),
        ]);
        let text = r.describe(&s);
        assert!(text.contains("refused the SASL credentials"), "{text}");
        assert!(text.contains("for SCRAM-SHA-512"), "{text}");
        assert!(text.contains("INPUTBOT_KAFKA_SASL_USERNAME=bot"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("after 332ms"), "{text}");
    }

    #[test]
    fn a_tls_alert_is_a_tls_refusal_naming_the_certificate_or_its_absence() {
        let e = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        let r = Refusal::classify(
            &e,
            "ssl://k:9094/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad \
             certificate: SSL alert number 42 (after 1ms in state APIVERSION_QUERY)",
        )
        .unwrap();
        assert!(matches!(r, Refusal::Tls(_)), "{r:?}");
        let with = settings(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9094"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("INPUTBOT_KAFKA_TLS_CA_FILE", "/ca.crt"),
            ("INPUTBOT_KAFKA_TLS_CERT_FILE", "/c.crt"),
            ("INPUTBOT_KAFKA_TLS_KEY_FILE", "/c.key"),
        ]);
        let text = r.describe(&with);
        assert!(
            text.contains("INPUTBOT_KAFKA_TLS_CERT_FILE=/c.crt"),
            "{text}"
        );
        assert!(
            text.contains("INPUTBOT_KAFKA_TLS_CA_FILE=/ca.crt"),
            "{text}"
        );
        assert!(text.contains("bad certificate"), "{text}");
        let without = settings(&[
            ("INPUTBOT_KAFKA_BOOTSTRAP", "k:9094"),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "ssl"),
        ]);
        let text = r.describe(&without);
        assert!(text.contains("no client certificate"), "{text}");
        assert!(text.contains("the system CAs"), "{text}");
    }

    #[test]
    fn a_broker_that_is_down_is_no_refusal() {
        let e = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(
            Refusal::classify(
                &e,
                "ssl://k:9094/bootstrap: Connect to ipv4#127.0.0.1:9094 failed: Connection refused"
            ),
            None
        );
        let e = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(Refusal::classify(&e, "1/1 brokers are down"), None);
    }

    #[test]
    fn the_latest_refusal_survives_all_brokers_down_but_not_a_broker_that_went_away() {
        let latest = LatestRefusal::default();
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        latest.record(
            &auth,
            "k:9093/bootstrap: SASL authentication error: Authentication failed",
        );
        latest.record(&down, "1/1 brokers are down");
        assert!(matches!(latest.get(), Some(Refusal::Authentication(_))));
        latest.record(
            &transport,
            "k:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused",
        );
        assert_eq!(latest.get(), None);
        latest.record(&auth, "again");
        latest.clear();
        assert_eq!(latest.get(), None);
    }
}
