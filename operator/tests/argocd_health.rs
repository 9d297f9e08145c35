//! The Argo CD health check `deploy/argocd/health.lua`, run by a real Lua 5.1 interpreter
//! (Argo CD's gopher-lua speaks 5.1) against the sample objects of
//! `deploy/argocd/health_test.yaml` — the layout of Argo CD's own resource_customizations
//! tests — and held to the operator's source: a sample for every permanent-failure reason
//! (Degraded) and every coming-up reason (Progressing), and the argocd-cm snippet in
//! docs/install.md equal to the script.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::Value;
use support::{error_labels, progressing_reasons, repo_root};

fn argocd_dir() -> std::path::PathBuf {
    repo_root().join("deploy/argocd")
}

fn script() -> String {
    std::fs::read_to_string(argocd_dir().join("health.lua")).expect("deploy/argocd/health.lua")
}

fn yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// `(status, message)` that the script gives `obj`, as Argo CD runs it: the object as the
/// global `obj`, the chunk's return value the health.
fn health(script: &str, obj: &Value) -> Result<(String, String), String> {
    let lua = Lua::new();
    // JSON null becomes nil, as in Argo CD's conversion of the object.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua
        .to_value_with(obj, options)
        .map_err(|e| format!("the object does not convert to Lua: {e}"))?;
    lua.globals().set("obj", value).map_err(|e| e.to_string())?;
    let hs: Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .map_err(|e| format!("the script fails: {e}"))?;
    let status: String = hs.get("status").map_err(|e| format!("hs.status: {e}"))?;
    let message: String = hs.get("message").map_err(|e| format!("hs.message: {e}"))?;
    Ok((status, message))
}

struct Sample {
    file: String,
    obj: Value,
    status: String,
    message: String,
}

fn samples() -> Vec<Sample> {
    let tests = yaml(&argocd_dir().join("health_test.yaml"));
    tests["tests"]
        .as_array()
        .expect("health_test.yaml: tests")
        .iter()
        .map(|t| {
            let file = t["inputPath"].as_str().expect("inputPath").to_owned();
            Sample {
                obj: yaml(&argocd_dir().join(&file)),
                status: t["healthStatus"]["status"].as_str().expect("status").into(),
                message: t["healthStatus"]["message"]
                    .as_str()
                    .expect("message")
                    .into(),
                file,
            }
        })
        .collect()
}

fn ready_reason(obj: &Value) -> Option<&str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["reason"]
        .as_str()
}

#[test]
fn every_sample_object_gets_the_health_argo_cd_should_show() {
    let script = script();
    let samples = samples();
    assert!(samples.len() >= 10, "only {} samples", samples.len());
    let mut wrong = Vec::new();
    for s in &samples {
        match health(&script, &s.obj) {
            Ok((status, message)) if status == s.status && message == s.message => {}
            Ok((status, message)) => wrong.push(format!(
                "{}: got {status} {message:?}, expected {} {:?}",
                s.file, s.status, s.message
            )),
            Err(e) => wrong.push(format!("{}: {e}", s.file)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_samples_cover_no_status_an_old_generation_ready_and_every_reason_the_operator_writes() {
    let samples = samples();
    let by_reason = |reason: &str| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| ready_reason(&s.obj) == Some(reason))
            .collect()
    };
    assert!(
        samples
            .iter()
            .any(|s| s.obj.get("status").is_none() && s.status == "Progressing"),
        "no sample without a status (Progressing)"
    );
    assert!(
        samples.iter().any(|s| {
            s.obj["status"]["observedGeneration"].as_i64()
                < s.obj["metadata"]["generation"].as_i64()
                && s.status == "Progressing"
        }),
        "no sample with an old observedGeneration (Progressing)"
    );
    assert!(
        by_reason("Ready").iter().any(|s| s.status == "Healthy"),
        "no Ready sample (Healthy)"
    );
    // Permanent failures: the operator waits for a change of the spec — a person must act.
    for label in error_labels() {
        let found = by_reason(&label);
        assert!(
            !found.is_empty(),
            "no sample with Ready reason {label} (an Error::label in operator/src/error.rs)"
        );
        for s in found {
            assert_eq!(s.status, "Degraded", "{}: reason {label}", s.file);
        }
    }
    // Coming up: the operator publishes a Normal Event for these, and so they progress.
    for reason in progressing_reasons() {
        let found = by_reason(&reason);
        assert!(
            !found.is_empty(),
            "no sample with Ready reason {reason} (progressing in operator/src/controller/mod.rs)"
        );
        for s in found {
            assert_eq!(s.status, "Progressing", "{}: reason {reason}", s.file);
        }
    }
    let kinds: BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s.obj["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ActionBinding", "InputBot", "Pipeline"]),
        "samples of every kind"
    );
}

#[test]
fn a_new_failure_reason_is_degraded_and_a_script_error_is_not_hidden() {
    let script = script();
    let mut obj = samples()
        .into_iter()
        .find(|s| s.file.ends_with("invalid_spec.yaml"))
        .expect("the invalid_spec sample")
        .obj;
    obj["status"]["conditions"][0]["reason"] = "SomethingNew".into();
    let (status, message) = health(&script, &obj).expect("the script runs");
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("SomethingNew: "), "{message}");

    // The script really runs: a missing `obj` fails instead of answering something.
    let lua = Lua::new();
    assert!(lua.load(script.as_str()).exec().is_err());
}

#[test]
fn the_argocd_cm_snippet_in_the_install_docs_is_the_script_for_each_kind() {
    let docs = std::fs::read_to_string(repo_root().join("docs/install.md")).expect("install.md");
    let script = script();
    for kind in ["InputBot", "Pipeline", "ActionBinding"] {
        let key = format!("resource.customizations.health.inputbot.dev_{kind}: |");
        let at = docs
            .find(&key)
            .unwrap_or_else(|| panic!("docs/install.md lacks `{key}`"));
        let indent = docs[..at].rsplit('\n').next().expect("a line").len() + 2;
        let block: Vec<&str> = docs[at..]
            .lines()
            .skip(1)
            .take_while(|l| l.is_empty() || l.len() > indent && l[..indent].trim().is_empty())
            .map(|l| if l.is_empty() { l } else { &l[indent..] })
            .collect();
        let want: Vec<&str> = script.trim_end().lines().collect();
        let block = block.join("\n");
        let got: Vec<&str> = block.trim_end().lines().collect();
        if let Some(line) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
            panic!(
                "docs/install.md's {kind} health check differs from deploy/argocd/health.lua at \
                 line {}: {:?} in the docs, {:?} in the file",
                line + 1,
                got.get(line),
                want.get(line)
            );
        }
    }
}
