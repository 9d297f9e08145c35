//! The real `helm` binary (`INPUTBOT_HELM`, built by `scripts/tools.sh` and exported by the
//! harness, or `helm` on `PATH` against an external cluster) run against the cluster under
//! test, with its own throwaway configuration, cache and data directories so that no test
//! reads or writes the user's helm setup.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{repo_root, setting, unique_suffix};

/// The chart of the operator.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/inputbot-operator")
}

/// The helm binary: `INPUTBOT_HELM`, else `helm` on `PATH` (external clusters).
pub fn helm_binary() -> String {
    setting("INPUTBOT_HELM").unwrap_or_else(|| {
        let on_path = Command::new("helm").arg("version").output();
        if on_path.is_ok_and(|o| o.status.success()) {
            return "helm".to_owned();
        }
        panic!(
            "INPUTBOT_HELM is not set and there is no `helm` on PATH: no helm to install the \
             chart with. Run `scripts/tools.sh helm` and start the harness (which exports it); \
             see docs/testing.md."
        )
    })
}

/// What a helm command printed.
#[derive(Debug)]
pub struct HelmOutput {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// helm against the cluster in `KUBECONFIG` (or the harness's), in one release namespace.
pub struct Helm {
    binary: String,
    kubeconfig: String,
    namespace: String,
    home: PathBuf,
}

impl Helm {
    /// A helm for releases in `namespace`.
    pub fn new(namespace: &str) -> Helm {
        let kubeconfig = setting("KUBECONFIG").expect("KUBECONFIG of the cluster under test");
        Helm {
            binary: helm_binary(),
            kubeconfig,
            namespace: namespace.to_owned(),
            home: std::env::temp_dir().join(format!("inputbot-e2e-helm-{}", unique_suffix())),
        }
    }

    /// Runs `helm ARGS --kubeconfig … --namespace …` (bounded by `timeout`, after which it
    /// is killed and reported as failed).
    pub fn run(&self, args: &[&str], timeout: Duration) -> HelmOutput {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .args([
                "--kubeconfig",
                &self.kubeconfig,
                "--namespace",
                &self.namespace,
            ])
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run helm ({}): {e}", self.binary));
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(out)) => HelmOutput {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Ok(Err(e)) => panic!("waiting for helm {args:?}: {e}"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                HelmOutput {
                    ok: false,
                    stdout: String::new(),
                    stderr: format!("helm {args:?} did not finish within {timeout:?}"),
                }
            }
        }
    }

    /// Runs helm and panics with its output when it fails; returns stdout.
    pub fn must(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.run(args, timeout);
        assert!(
            out.ok,
            "helm {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
