//! The operator as the tests run it: the real `inputbot-operator` binary as a child process,
//! watching one test namespace (so tests running side by side never share an operator), with
//! its own Lease, metrics port and log file. Killed when dropped.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{kafka_bootstrap, repo_root, setting};

/// A running operator process.
pub struct OperatorProcess {
    child: Option<Child>,
    log: PathBuf,
    /// `host:port` of its `/metrics`.
    pub metrics: String,
    /// The arguments it was started with (to restart it the same way).
    pub args: Vec<String>,
}

/// The operator binary next to the test binaries (`cargo build -p inputbot-operator` puts it
/// there; scripts/test.sh builds it before the suite).
pub fn operator_binary() -> PathBuf {
    if let Some(bin) = OVERRIDE.get() {
        return bin.clone();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/<test> → target/debug/inputbot-operator
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("inputbot-operator");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p inputbot-operator` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

static OVERRIDE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs `bin` instead of the operator next to the test binaries (the benchmark runs a release
/// build). The first call wins.
pub fn set_operator_binary(bin: &str) {
    let _ = OVERRIDE.set(PathBuf::from(bin));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl OperatorProcess {
    /// Starts an operator for `namespace` in admin topic mode against the test broker, with
    /// `extra` flags appended (a later flag wins).
    pub fn start(namespace: &str, lease: &str, extra: &[&str]) -> OperatorProcess {
        let mut args: Vec<String> = [
            "--log-format",
            "text",
            "run",
            "--watch-namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--lease-name",
            lease,
            "--lease-duration",
            "6",
            "--kafka-bootstrap",
            &kafka_bootstrap(),
            "--default-replication-factor",
            "1",
            "--default-partitions",
            "2",
            "--runtime-image",
            "inputbot/inputbot:e2e",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(args)
    }

    /// Starts the operator with exactly these arguments (plus a fresh metrics port).
    pub fn start_with(args: Vec<String>) -> OperatorProcess {
        Self::spawn(args, setting("KUBECONFIG"))
    }

    /// Starts the operator with exactly these arguments, authenticating with `kubeconfig`
    /// (e.g. one impersonating a ServiceAccount, so RBAC decides what it may do).
    pub fn start_with_kubeconfig(
        args: Vec<String>,
        kubeconfig: &std::path::Path,
    ) -> OperatorProcess {
        Self::spawn(args, Some(kubeconfig.display().to_string()))
    }

    fn spawn(args: Vec<String>, kubeconfig: Option<String>) -> OperatorProcess {
        let metrics = format!("127.0.0.1:{}", free_port());
        let dir = std::env::temp_dir().join("inputbot-e2e-operators");
        std::fs::create_dir_all(&dir).expect("a log directory");
        let log = dir.join(format!("operator-{}.log", crate::unique_suffix()));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut cmd = Command::new(operator_binary());
        cmd.args(&args)
            .arg("--metrics-listen")
            .arg(&metrics)
            .current_dir(repo_root())
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file);
        if let Some(kubeconfig) = kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        let child = cmd.spawn().expect("starting inputbot-operator");
        OperatorProcess {
            child: Some(child),
            log,
            metrics,
            args,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no graceful shutdown, no Lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for the exit.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest_get(&format!("http://{}/metrics", self.metrics)).await
    }

    /// The sum of a metric's samples whose line starts with `name` (e.g.
    /// `inputbot_operator_api_writes_total`); `None` when the endpoint does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest_get(&format!("http://{}/metrics", self.metrics)).await?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- operator log {} ----\n{}",
                self.log.display(),
                tail(&self.log(), 80)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A tiny HTTP/1.0 GET over a TCP socket (loopback only; no client library needed).
async fn reqwest_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then(|| head.contains(" 200 "))
        .filter(|ok| *ok)
        .map(|_| body.to_owned())
}
