//! Names derived from resources: Kafka topics, consumer groups and Kubernetes children, and the
//! checks that they fit Kafka's and Kubernetes' limits.

/// Longest Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// The raw topic of a bot: `inputbot.<ns>.<bot>.raw`.
pub fn raw_topic(namespace: &str, bot: &str) -> String {
    format!("inputbot.{namespace}.{bot}.raw")
}

/// The output topic of a pipeline: `inputbot.<ns>.<pipeline>.out`.
pub fn out_topic(namespace: &str, pipeline: &str) -> String {
    format!("inputbot.{namespace}.{pipeline}.out")
}

/// The dead-letter topic of a pipeline: `inputbot.<ns>.<pipeline>.dlq`.
pub fn pipeline_dlq_topic(namespace: &str, pipeline: &str) -> String {
    format!("inputbot.{namespace}.{pipeline}.dlq")
}

/// The dead-letter topic of an action binding: `inputbot.<ns>.<binding>.act.dlq` (distinct from
/// a pipeline's of the same name).
pub fn binding_dlq_topic(namespace: &str, binding: &str) -> String {
    format!("inputbot.{namespace}.{binding}.act.dlq")
}

/// The deduplication window of a bot's raw-topic consumers: `inputbot.<ns>.<bot>.dedupe`, a
/// compacted topic with the raw topic's partitions. Partition `p` holds the window of raw
/// partition `p` (per consumer group), so the member that owns a raw partition rebuilds its
/// window from one partition.
pub fn dedupe_topic(namespace: &str, bot: &str) -> String {
    format!("inputbot.{namespace}.{bot}.dedupe")
}

/// The source state of a bot (poll's seen ids and validators, schedule's last firing):
/// `inputbot.<ns>.<bot>.state`, a compacted topic keyed by source.
pub fn state_topic(namespace: &str, bot: &str) -> String {
    format!("inputbot.{namespace}.{bot}.state")
}

/// Consumer group of a component: `inputbot.<ns>.<name>.<role>`.
pub fn consumer_group(namespace: &str, name: &str, role: &str) -> String {
    format!("inputbot.{namespace}.{name}.{role}")
}

/// Name of a component's Deployment and Service: `<name>-<role>`.
pub fn child_name(name: &str, role: &str) -> String {
    format!("{name}-{role}")
}

/// Checks a Kafka topic name: at most 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err(format!("expected a Kafka topic name, found {topic:?}"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "Kafka topic {topic:?} is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Kafka topic {topic:?} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks an RFC 1035 label (Service names): at most 63 lower-case letters, digits and `-`,
/// starting with a letter and ending with a letter or digit.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected at most 63 lower-case letters, digits and '-', starting with a letter and ending with a letter or digit, found {name:?}"
        ))
    }
}

/// Checks an RFC 1123 subdomain (Secret names): at most 253 characters, dot-separated
/// lower-case alphanumeric labels that may contain `-`.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253), found {name:?}"
        ))
    }
}

/// Checks a Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub fn check_secret_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a Secret key of letters, digits, '-', '.' and '_', found {key:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_naming_contract() {
        assert_eq!(raw_topic("team-a", "intake"), "inputbot.team-a.intake.raw");
        assert_eq!(out_topic("team-a", "triage"), "inputbot.team-a.triage.out");
        assert_eq!(
            pipeline_dlq_topic("team-a", "triage"),
            "inputbot.team-a.triage.dlq"
        );
        assert_eq!(
            binding_dlq_topic("team-a", "crm"),
            "inputbot.team-a.crm.act.dlq"
        );
        assert_eq!(
            dedupe_topic("team-a", "intake"),
            "inputbot.team-a.intake.dedupe"
        );
        assert_eq!(
            state_topic("team-a", "intake"),
            "inputbot.team-a.intake.state"
        );
    }

    #[test]
    fn rejects_topic_names_kafka_refuses() {
        assert!(check_topic(&"a".repeat(249)).is_ok());
        assert!(
            check_topic(&"a".repeat(250))
                .unwrap_err()
                .contains("at most 249")
        );
        assert!(check_topic("a/b").unwrap_err().contains("'/'"));
        assert!(check_topic("..").is_err());
    }

    #[test]
    fn checks_kubernetes_names() {
        assert!(check_dns_label("intake-ingest").is_ok());
        assert!(check_dns_label("1intake").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_subdomain("my.secret-1").is_ok());
        assert!(check_dns_subdomain("My_Secret").is_err());
        assert!(check_secret_key("signing_key.v1").is_ok());
        assert!(check_secret_key("a/b").is_err());
    }
}
