//! The cluster roles' command line, as the operator renders it (`inputbot <role> --config …
//! --secrets-dir … --listen …`), for the refusals that need no broker: a config of another
//! role, a missing file, and missing Kafka settings. The roles on a real broker are tested in
//! `tests/e2e/tests/runtime_kafka_*.rs`.

use std::process::Command;

fn inputbot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inputbot"))
}

const INGEST: &str = r#"{"role":"ingest","bot":{"kind":"InputBot","namespace":"ns","name":"b"},"topic":"inputbot.ns.b.raw","sources":[]}"#;

#[test]
fn a_role_refuses_to_start_on_the_config_of_another_role() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("component.json");
    std::fs::write(&config, INGEST).unwrap();
    let out = inputbot()
        .args(["--log-format", "json", "process", "--config"])
        .arg(&config)
        .arg("--secrets-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("INPUTBOT_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config of the ingest role") && stderr.contains("`inputbot process`"),
        "{stderr}"
    );
}

#[test]
fn a_role_names_its_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = inputbot()
        .args(["act", "--config"])
        .arg(dir.path().join("absent.json"))
        .args(["--listen", "127.0.0.1:0"])
        .env("INPUTBOT_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent.json"), "{stderr}");
}

#[test]
fn a_role_without_kafka_settings_says_which_variable_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("component.json");
    std::fs::write(&config, INGEST).unwrap();
    let out = inputbot()
        .args(["ingest", "--config"])
        .arg(&config)
        .env_remove("INPUTBOT_KAFKA_BOOTSTRAP")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INPUTBOT_KAFKA_BOOTSTRAP"), "{stderr}");
}
