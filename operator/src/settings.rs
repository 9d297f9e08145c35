//! The operator's settings: flags and environment variables (the Helm chart sets them), shared
//! by `run` and `render` so that `render` prints exactly what a running operator would create.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

/// How Kafka topics are provisioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopicMode {
    /// The Kafka Admin API, with the operator's own Kafka connection.
    Admin,
    /// Strimzi `KafkaTopic` objects, reconciled by Strimzi's topic operator.
    Strimzi,
}

/// Kafka connection settings, handed to the operator's admin client and to every runtime pod.
#[derive(Clone, Debug, Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers (`host:port,…`), as the runtime pods reach them.
    #[arg(
        long = "kafka-bootstrap",
        env = "INPUTBOT_KAFKA_BOOTSTRAP",
        default_value = "kafka:9092"
    )]
    pub bootstrap: String,
    /// Kafka `security.protocol`: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(
        long = "kafka-security-protocol",
        env = "INPUTBOT_KAFKA_SECURITY_PROTOCOL",
        default_value = "PLAINTEXT"
    )]
    pub security_protocol: String,
    /// SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) when the protocol uses SASL.
    #[arg(long = "kafka-sasl-mechanism", env = "INPUTBOT_KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,
    /// Name of a Secret with keys `username` and `password` for SASL. The operator reads its
    /// own copy from its namespace; runtime pods get a Secret of the same name from their
    /// own namespace, as environment variables.
    #[arg(
        long = "kafka-credentials-secret",
        env = "INPUTBOT_KAFKA_CREDENTIALS_SECRET"
    )]
    pub credentials_secret: Option<String>,
    /// SASL username of the operator's own admin client (from the Helm chart's Secret).
    #[arg(
        long = "kafka-sasl-username",
        env = "INPUTBOT_KAFKA_SASL_USERNAME",
        hide_env_values = true
    )]
    pub sasl_username: Option<String>,
    /// SASL password of the operator's own admin client (from the Helm chart's Secret).
    #[arg(
        long = "kafka-sasl-password",
        env = "INPUTBOT_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// Name of a Secret with key `ca.crt` (the CA of the brokers' TLS certificates), mounted
    /// into runtime pods from their namespace.
    #[arg(long = "kafka-tls-ca-secret", env = "INPUTBOT_KAFKA_TLS_CA_SECRET")]
    pub tls_ca_secret: Option<String>,
    /// CA file of the operator's own admin client.
    #[arg(long = "kafka-tls-ca-file", env = "INPUTBOT_KAFKA_TLS_CA_FILE")]
    pub tls_ca_file: Option<String>,
}

impl KafkaSettings {
    /// The client config of the operator's own Kafka connection (admin mode).
    pub fn client_config(&self) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c.set("security.protocol", &self.security_protocol);
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
        c
    }
}

/// Everything that shapes the objects the operator renders and how it runs.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// The runtime image every component runs.
    #[arg(long, env = "INPUTBOT_RUNTIME_IMAGE", default_value = concat!("inputbot/inputbot:", env!("CARGO_PKG_VERSION")))]
    pub runtime_image: String,
    /// Pull policy of the runtime image.
    #[arg(
        long,
        env = "INPUTBOT_RUNTIME_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub runtime_image_pull_policy: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// How topics are provisioned.
    #[arg(long, env = "INPUTBOT_TOPIC_MODE", value_enum, default_value_t = TopicMode::Admin)]
    pub topic_mode: TopicMode,
    /// The Strimzi `Kafka` cluster that KafkaTopics are labelled with (`strimzi.io/cluster`).
    #[arg(long, env = "INPUTBOT_STRIMZI_CLUSTER", default_value = "kafka")]
    pub strimzi_cluster: String,
    /// Namespace of the KafkaTopics (the one Strimzi's topic operator watches); default: the
    /// resource's own namespace.
    #[arg(long, env = "INPUTBOT_STRIMZI_NAMESPACE")]
    pub strimzi_namespace: Option<String>,
    /// Partitions of a topic whose resource does not say.
    #[arg(long, env = "INPUTBOT_DEFAULT_PARTITIONS", default_value_t = inputbot_api::resolve::DEFAULT_PARTITIONS)]
    pub default_partitions: i32,
    /// Replication factor of a topic whose resource does not say.
    #[arg(long, env = "INPUTBOT_DEFAULT_REPLICATION_FACTOR", default_value_t = 3)]
    pub default_replication_factor: i16,
    /// Retention of a topic whose resource does not say.
    #[arg(long, env = "INPUTBOT_DEFAULT_RETENTION", default_value = "7d")]
    pub default_retention: String,
    /// DNS suffix after `<service>.<namespace>.` in the webhook URLs of status: `svc`, or
    /// `svc.cluster.local` for fully qualified names.
    #[arg(long, env = "INPUTBOT_SERVICE_DOMAIN", default_value = "svc")]
    pub service_domain: String,
}

impl Settings {
    /// Settings with every default, as `render` uses them when no flag is given.
    pub fn defaults() -> Settings {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        use clap::Parser as _;
        // The defaults above parse by construction; a failure here is a programming error
        // caught by the unit test `defaults_parse`.
        Wrapper::try_parse_from(["inputbot-operator"])
            .expect("default settings parse")
            .settings
    }
}

/// Settings of `inputbot-operator run` only.
#[derive(Clone, Debug, Args)]
pub struct RunSettings {
    /// Namespaces to watch (repeat the flag); all namespaces when none is given.
    #[arg(
        long = "watch-namespace",
        env = "INPUTBOT_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Reconciles run at once per resource kind.
    #[arg(long, env = "INPUTBOT_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "INPUTBOT_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Take part in leader election (a Lease); off runs the controllers at once.
    #[arg(long, env = "INPUTBOT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "INPUTBOT_LEASE_NAME", default_value = "inputbot-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; default: the pod's namespace (`POD_NAMESPACE`) or `default`.
    #[arg(long, env = "INPUTBOT_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a leader's Lease is valid without renewal; a standby takes over after that.
    #[arg(
        long = "lease-duration",
        env = "INPUTBOT_LEASE_DURATION",
        default_value_t = 12
    )]
    pub lease_duration_seconds: u64,
    /// Identity in the Lease; default: the pod name (`POD_NAME`) or the host name plus pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let s = Settings::defaults();
        assert_eq!(s.topic_mode, TopicMode::Admin);
        assert_eq!(s.default_replication_factor, 3);
    }
}
