//! The runtime on the broker's secured listeners (needs the harness's `KAFKA_SASL_BOOTSTRAP`,
//! `KAFKA_SSL_BOOTSTRAP` and their throwaway credentials; see docs/testing.md): the Kafka bus
//! publishes and consumes over SASL/PLAIN, SASL/SCRAM-SHA-256, SASL/SCRAM-SHA-512 and mutual
//! TLS; the three roles as processes, each on another listener, deliver webhooks and dead
//! letters that `inputbot dlq inspect` reads back; and a wrong password, a client certificate
//! of another CA or none at all leave the process unready with a reason that names the cause
//! — and no password ever shows in a log.
//!
//! Topics are created over the plaintext listener, as the operator would create them; every
//! record the runtime writes is read back there too, so a test proves which broker got it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use inputbot_e2e::runtime::{Target, create_topics, inputbot_binary, read_topic};
use inputbot_e2e::stream::{Setup, post_signed, wait_until};
use inputbot_e2e::{HOW_TO_RUN, kafka_bootstrap, setting, unique_suffix};
use inputbot_runtime::bus::{Bus, BusError, Consumer, KafkaBus, KafkaOptions, KafkaSettings};
use inputbot_runtime::event::Event;
use serde_json::{Value, json};

const SECRET: &str = "e2e-webhook-signing-key";
const READY: Duration = Duration::from_secs(30);

/// The tests here start processes or wait out failing handshakes: one at a time on a 2-core
/// machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A harness variable; panics naming it (and how to start the harness) when unset.
fn need(name: &str) -> String {
    setting(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: the secured listeners come from the harness \
             (scripts/harness.sh start exports KAFKA_SASL_BOOTSTRAP, KAFKA_SSL_BOOTSTRAP and \
             their credentials).\n{HOW_TO_RUN}"
        )
    })
}

/// How a client reaches the broker: the `INPUTBOT_KAFKA_*` variables the operator renders.
#[derive(Clone, Debug)]
struct Access {
    /// What the tests call it.
    name: &'static str,
    env: Vec<(&'static str, String)>,
}

impl Access {
    /// SASL over the plaintext SASL listener; `mechanism` is `PLAIN`, `SCRAM-SHA-256` or
    /// `SCRAM-SHA-512`, the harness's user of that mechanism.
    fn sasl(mechanism: &'static str) -> Access {
        let prefix = match mechanism {
            "PLAIN" => "KAFKA_PLAIN",
            "SCRAM-SHA-256" => "KAFKA_SCRAM_SHA_256",
            "SCRAM-SHA-512" => "KAFKA_SCRAM_SHA_512",
            other => panic!("no harness user for {other}"),
        };
        Access {
            name: mechanism,
            env: vec![
                ("INPUTBOT_KAFKA_BOOTSTRAP", need("KAFKA_SASL_BOOTSTRAP")),
                ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".into()),
                ("INPUTBOT_KAFKA_SASL_MECHANISM", mechanism.into()),
                (
                    "INPUTBOT_KAFKA_SASL_USERNAME",
                    need(&format!("{prefix}_USER")),
                ),
                (
                    "INPUTBOT_KAFKA_SASL_PASSWORD",
                    need(&format!("{prefix}_PASSWORD")),
                ),
            ],
        }
    }

    /// TLS with the harness's CA; the client certificate and key of `client` (`CLIENT`,
    /// `ROGUE`: signed by another CA) or none.
    fn tls(client: Option<&str>) -> Access {
        let mut env = vec![
            ("INPUTBOT_KAFKA_BOOTSTRAP", need("KAFKA_SSL_BOOTSTRAP")),
            ("INPUTBOT_KAFKA_SECURITY_PROTOCOL", "SSL".into()),
            ("INPUTBOT_KAFKA_TLS_CA_FILE", need("KAFKA_TLS_CA_FILE")),
        ];
        if let Some(who) = client {
            env.push((
                "INPUTBOT_KAFKA_TLS_CERT_FILE",
                need(&format!("KAFKA_TLS_{who}_CERT_FILE")),
            ));
            env.push((
                "INPUTBOT_KAFKA_TLS_KEY_FILE",
                need(&format!("KAFKA_TLS_{who}_KEY_FILE")),
            ));
        }
        let name = match client {
            Some("CLIENT") => "mutual TLS",
            Some(_) => "TLS with a client certificate of another CA",
            None => "TLS without a client certificate",
        };
        Access { name, env }
    }

    /// The same with another password.
    fn with_password(mut self, password: &str) -> Access {
        for (k, v) in &mut self.env {
            if *k == "INPUTBOT_KAFKA_SASL_PASSWORD" {
                *v = password.to_owned();
            }
        }
        self
    }

    fn get(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    /// The password, if this is SASL.
    fn password(&self) -> Option<String> {
        self.get("INPUTBOT_KAFKA_SASL_PASSWORD")
    }

    /// The settings the runtime reads from this environment.
    fn settings(&self) -> KafkaSettings {
        KafkaSettings::from_lookup(|k| self.get(k), "inputbot-e2e-secure")
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// As `(name, value)` pairs for a child process.
    fn vars(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Every password of the harness's SASL users: none may appear in any log.
fn all_passwords() -> Vec<String> {
    ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        .into_iter()
        .filter_map(|m| Access::sasl(m).password())
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows a SASL password ({} characters):\n{text}",
            s.len()
        );
    }
}

async fn next(consumer: &mut Box<dyn Consumer>) -> inputbot_runtime::bus::Message {
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a message within 30 s")
        .expect("the consumer is open")
}

/// The bus over `access` publishes three events and a consumer group reads them back; the
/// plaintext listener sees the same records.
async fn round_trip(access: &Access) {
    let plaintext = kafka_bootstrap();
    let topic = format!("inputbot.e2e.secure-{}", unique_suffix());
    create_topics(&plaintext, &[(&topic, 1)]).await;
    let bus = KafkaBus::connect(
        access.settings(),
        KafkaOptions::default(),
        std::slice::from_ref(&topic),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: the bus connects: {e}", access.name));
    assert!(
        bus.healthy(),
        "{}: the bus is ready: {:?}",
        access.name,
        bus.unhealthy_reason()
    );
    let mut sent = Vec::new();
    for n in 0..3 {
        let e = Event::new("e2e/bot", "hook", "t", json!({"n": n, "via": access.name}));
        bus.publish(&topic, &e)
            .await
            .unwrap_or_else(|e| panic!("{}: published: {e}", access.name));
        sent.push(e.id);
    }
    let mut consumer = bus
        .subscribe(&topic, &format!("inputbot-e2e-{}", unique_suffix()))
        .unwrap_or_else(|e| panic!("{}: joins the group: {e}", access.name));
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next(&mut consumer).await;
        got.push(m.event.id.clone());
        m.ack();
    }
    consumer.close().await;
    bus.close();
    assert_eq!(got, sent, "{}: consumed in order", access.name);
    let on_broker: Vec<String> = read_topic(&plaintext, &topic)
        .iter()
        .map(|r| r.headers["ce_id"].clone())
        .collect();
    assert_eq!(
        on_broker, sent,
        "{}: the records are on the broker",
        access.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_and_consumes_over_sasl_plain() {
    let _serial = SERIAL.lock().await;
    round_trip(&Access::sasl("PLAIN")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_and_consumes_over_sasl_scram_sha_256() {
    let _serial = SERIAL.lock().await;
    round_trip(&Access::sasl("SCRAM-SHA-256")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_and_consumes_over_sasl_scram_sha_512() {
    let _serial = SERIAL.lock().await;
    round_trip(&Access::sasl("SCRAM-SHA-512")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_and_consumes_over_mutual_tls() {
    let _serial = SERIAL.lock().await;
    round_trip(&Access::tls(Some("CLIENT"))).await;
}

/// Connects over `access`, which the broker must refuse: the bus stays unready, says why
/// (the reason contains one of `expect`, case-insensitively), and `publish` fails at once.
async fn refused(access: &Access, expect: &[&str]) -> String {
    let topic = format!("inputbot.e2e.secure-refused-{}", unique_suffix());
    create_topics(&kafka_bootstrap(), &[(&topic, 1)]).await;
    let bus = KafkaBus::connect(
        access.settings(),
        KafkaOptions::default(),
        std::slice::from_ref(&topic),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: the bus is created: {e}", access.name));
    assert!(!bus.healthy(), "{}: the broker let it in", access.name);
    let why = bus.unhealthy_reason().unwrap_or_default();
    let lower = why.to_ascii_lowercase();
    assert!(
        expect
            .iter()
            .any(|x| lower.contains(&x.to_ascii_lowercase())),
        "{}: the reason names the cause (one of {expect:?}): {why}",
        access.name
    );
    let started = Instant::now();
    let e = Event::new("e2e/bot", "hook", "t", json!({}));
    let err = bus.publish(&topic, &e).await.unwrap_err();
    assert!(matches!(err, BusError::Kafka(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    bus.close();
    assert!(
        read_topic(&kafka_bootstrap(), &topic).is_empty(),
        "{}: nothing was written",
        access.name
    );
    why
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_for_each_mechanism_and_never_shown() {
    let _serial = SERIAL.lock().await;
    let wrong = format!("wrong-{}", unique_suffix());
    let mut secrets = all_passwords();
    secrets.push(wrong.clone());
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let access = Access::sasl(mechanism).with_password(&wrong);
        let why = refused(&access, &["the Kafka broker refused the SASL credentials"]).await;
        assert!(
            why.contains(&format!("for {mechanism}")),
            "{mechanism}: {why}"
        );
        assert!(
            why.contains(&format!(
                "INPUTBOT_KAFKA_SASL_USERNAME={}",
                access
                    .get("INPUTBOT_KAFKA_SASL_USERNAME")
                    .unwrap_or_default()
            )),
            "{mechanism}: {why}"
        );
        assert_no_secret(mechanism, &why, &secrets);
        assert_no_secret(mechanism, &format!("{:?}", access.settings()), &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused() {
    let _serial = SERIAL.lock().await;
    let access = Access::tls(Some("ROGUE"));
    let why = refused(&access, &["the TLS handshake with the Kafka broker failed"]).await;
    let cert = access
        .get("INPUTBOT_KAFKA_TLS_CERT_FILE")
        .unwrap_or_default();
    assert!(why.contains(&cert), "names the certificate it sent: {why}");
    assert!(why.contains("bad certificate"), "the broker's alert: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let _serial = SERIAL.lock().await;
    let why = refused(
        &Access::tls(None),
        &["the TLS handshake with the Kafka broker failed"],
    )
    .await;
    assert!(why.contains("no client certificate"), "{why}");
}

fn bot() -> String {
    r#"
apiVersion: inputbot.dev/v1alpha1
kind: InputBot
metadata: {name: intake}
spec:
  sources:
    - name: gh
      webhook:
        path: /gh
        auth: {hmac: {preset: github, secretRef: {name: creds, key: hmac}}}
---
apiVersion: inputbot.dev/v1alpha1
kind: Pipeline
metadata: {name: flow}
spec:
  botRef: {name: intake}
  steps:
    - name: shape
      transform: {jq: '{n: .n}'}
"#
    .to_owned()
}

fn binding(name: &str, url: &str) -> String {
    format!(
        r#"---
apiVersion: inputbot.dev/v1alpha1
kind: ActionBinding
metadata: {{name: {name}}}
spec:
  pipelineRef: {{name: flow}}
  action:
    http: {{url: "{url}", body: {{jq: '{{ticket: .n}}'}}}}
  delivery:
    retry: {{maxAttempts: 2, initialDelay: 1ms, maxDelay: 5ms, jitter: false}}
    circuitBreaker: {{minRequests: 100000}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_as_processes_each_on_another_secured_listener_deliver_and_dead_letter() {
    let _serial = SERIAL.lock().await;
    let ok = Target::start(200).await;
    let failing = Target::start(500).await;
    let yaml = bot() + &binding("crm", &ok.url("/t")) + &binding("broken", &failing.url("/t"));
    let setup = Setup::new(&yaml, SECRET, 2).await;
    let ingest_access = Access::sasl("SCRAM-SHA-512");
    let process_access = Access::tls(Some("CLIENT"));
    let crm_access = Access::sasl("SCRAM-SHA-256");
    let broken_access = Access::sasl("PLAIN");
    let mut roles = vec![
        setup.start_with("act", "crm", &crm_access.vars()),
        setup.start_with("act", "broken", &broken_access.vars()),
        setup.start_with("process", "flow", &process_access.vars()),
        setup.start_with("ingest", "intake", &ingest_access.vars()),
    ];
    for r in &mut roles {
        r.wait_ready(READY).await;
    }
    let client = reqwest::Client::new();
    let ingest = roles[3].url("/gh");
    for n in 0..10 {
        let r = post_signed(&client, SECRET, &ingest, &json!({"n": n})).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
    let expected: BTreeSet<i64> = (0..10).collect();
    let tickets = |t: &Target, status: u16| -> BTreeSet<i64> {
        t.received()
            .iter()
            .filter(|r| r.status == status)
            .map(|r| {
                serde_json::from_str::<Value>(&r.body).expect("json")["ticket"]
                    .as_i64()
                    .expect("ticket")
            })
            .collect()
    };
    wait_until("10 deliveries over SCRAM-SHA-256", READY, || {
        tickets(&ok, 200).len() >= expected.len()
    })
    .await;
    assert_eq!(tickets(&ok, 200), expected);
    assert_eq!(
        read_topic(&setup.bootstrap, setup.raw_topic()).len(),
        10,
        "ingest wrote every webhook over SCRAM-SHA-512"
    );

    // The failing binding dead-letters over PLAIN; `dlq inspect` reads them over mutual TLS.
    let dlq_topic = setup.binding_dlq("broken");
    let start = Instant::now();
    while read_topic(&setup.bootstrap, &dlq_topic).len() < expected.len() {
        assert!(
            start.elapsed() < READY,
            "dead letters of the failing binding"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = std::process::Command::new(inputbot_binary())
        .args(["dlq", "inspect", "--json", "--kafka-topic", &dlq_topic])
        .envs(process_access.vars())
        .output()
        .expect("inputbot dlq runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dlq inspect over mutual TLS: {stderr}"
    );
    assert_eq!(
        stdout.lines().count(),
        expected.len(),
        "one JSON line per dead letter:\n{stdout}"
    );

    let secrets = all_passwords();
    for r in &mut roles {
        r.terminate(Duration::from_secs(20)).await;
        assert_no_secret(&format!("the {} log", r.role), &r.log_text(), &secrets);
    }
    assert_no_secret("dlq inspect", &format!("{stdout}{stderr}"), &secrets);
    setup.remove();
}

/// Starts ingest over `access`, which the broker refuses: `/readyz` answers 503 for several
/// health checks, a webhook is refused with 503, and the log says why (one of `expect`)
/// without a password.
async fn ingest_refused(access: &Access, expect: &[&str], secrets: &[String]) {
    let setup = Setup::new(&bot(), SECRET, 1).await;
    let mut ingest = setup.start_with("ingest", "intake", &access.vars());
    // Serving, but not ready: the probe keeps the pod out of the Service.
    ingest.wait_status("/readyz", 503, READY).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let r = client
            .get(ingest.url("/readyz"))
            .send()
            .await
            .expect("readyz answers");
        assert_eq!(r.status(), 503, "{}: ready although refused", access.name);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = post_signed(&client, SECRET, &ingest.url("/gh"), &json!({"n": 1})).await;
    assert_eq!(r.status(), 503, "{}: a webhook while refused", access.name);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap_or_default();
    ingest.terminate(Duration::from_secs(20)).await;
    let log = ingest.log_text();
    let lower = log.to_ascii_lowercase();
    assert!(
        expect
            .iter()
            .any(|x| lower.contains(&x.to_ascii_lowercase())),
        "{}: the log names the cause (one of {expect:?}):\n{log}",
        access.name
    );
    assert_no_secret(&format!("{}: the log", access.name), &log, secrets);
    assert_no_secret(&format!("{}: the 503", access.name), &body, secrets);
    // The outside sender learns that nothing was stored, not the bus's internals.
    for internal in ["INPUTBOT_KAFKA", "127.0.0.1", "kafka"] {
        assert!(
            !body
                .to_ascii_lowercase()
                .contains(&internal.to_ascii_lowercase()),
            "{}: the 503 tells the sender {internal:?}: {body}",
            access.name
        );
    }
    assert!(
        read_topic(&setup.bootstrap, setup.raw_topic()).is_empty(),
        "{}: nothing was written",
        access.name
    );
    setup.remove();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_a_wrong_password_stays_unready_answers_503_and_logs_why_but_no_password() {
    let _serial = SERIAL.lock().await;
    let wrong = format!("wrong-{}", unique_suffix());
    let mut secrets = all_passwords();
    secrets.push(wrong.clone());
    ingest_refused(
        &Access::sasl("SCRAM-SHA-512").with_password(&wrong),
        &["kafka bus not ready: the Kafka broker refused the SASL credentials"],
        &secrets,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_a_client_certificate_of_another_ca_stays_unready() {
    let _serial = SERIAL.lock().await;
    ingest_refused(
        &Access::tls(Some("ROGUE")),
        &["kafka bus not ready: the TLS handshake with the Kafka broker failed"],
        &all_passwords(),
    )
    .await;
}
