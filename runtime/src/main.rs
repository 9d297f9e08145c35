//! `inputbot`: the runtime binary. Thin: parse arguments, start logging, dispatch.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use inputbot_api::manifest;
use inputbot_runtime::{check, dlq, local};

/// The bot `inputbot run` starts when no file is given: examples/quickstart.yaml.
const QUICKSTART: &str = include_str!("../../examples/quickstart.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "inputbot",
    version,
    about = "Declarative input bots: run, validate and operate them"
)]
struct Cli {
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole bot locally, in one process, on the embedded bus: no cluster, no Kafka.
    /// Without -f it runs the built-in quickstart bot (examples/quickstart.yaml).
    Run {
        /// YAML files with InputBots, Pipelines, ActionBindings and Secrets.
        #[arg(short = 'f', long = "file", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Address to serve webhooks, /healthz, /readyz and /metrics on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "INPUTBOT_LISTEN")]
        listen: SocketAddr,
        /// Dead letters and source state are kept here.
        #[arg(long, default_value = ".inputbot", env = "INPUTBOT_DATA_DIR")]
        data_dir: PathBuf,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Check files (as you would `kubectl apply` them) without a cluster: schema, CEL rules,
    /// references, expressions, JSON Schemas, cron, durations and names. Exits 1 on any error.
    Validate {
        /// YAML files with InputBots, Pipelines, ActionBindings and Secrets.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Inspect and redrive dead letters of local runs.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// List dead letters: when, which event, where it failed, and why.
    Inspect {
        /// Data directory of the run.
        #[arg(long, default_value = ".inputbot", env = "INPUTBOT_DATA_DIR")]
        data_dir: PathBuf,
        /// Only this dead-letter topic, e.g. inputbot.default.crm.act.dlq.
        #[arg(long)]
        topic: Option<String>,
        /// Print the records as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back to the stage that failed them (rate-limited); those that go
    /// through are removed, those that fail again stay.
    Redrive {
        /// The bot's files (the same as for `inputbot run`).
        #[arg(short = 'f', long = "file", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Data directory of the run.
        #[arg(long, default_value = ".inputbot", env = "INPUTBOT_DATA_DIR")]
        data_dir: PathBuf,
        /// Only this dead-letter topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only records for which this CEL condition holds (over data, event, labels, error),
        /// e.g. 'error.status == 503'.
        #[arg(long)]
        filter: Option<String>,
        /// Records per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("INPUTBOT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout is the log action's (and `dlq inspect`'s) output.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(false)
            .compact()
            .init(),
        LogFormat::Json => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
}

fn load(files: &[PathBuf], namespace: &str) -> Result<manifest::ResourceSet, ExitCode> {
    let loaded = if files.is_empty() {
        let mut set = manifest::ResourceSet::default();
        manifest::load_str(
            &mut set,
            "examples/quickstart.yaml (built in)",
            QUICKSTART,
            namespace,
        )
        .map(|()| set)
    } else {
        manifest::load_files(files, namespace)
    };
    loaded.map_err(|errors| {
        for e in errors {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files, namespace } => {
            let report = check::check_files(&files, &namespace);
            print!("{}", report.text);
            if report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run {
            files,
            listen,
            data_dir,
            namespace,
        } => {
            init_logging(cli.log_format);
            let set = match load(&files, &namespace) {
                Ok(set) => set,
                Err(code) => return code,
            };
            let engine =
                match local::Engine::start(set, local::LocalOptions::new(Some(listen), &data_dir))
                    .await
                {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            tracing::info!(target: "inputbot::run", "running on http://{} (dead letters in {}); Ctrl-C to stop",
                engine.addr().map(|a| a.to_string()).unwrap_or_default(), data_dir.join("dlq").display());
            shutdown_signal().await;
            tracing::info!(target: "inputbot::run", "shutting down: finishing accepted events");
            let report = engine.shutdown().await;
            tracing::info!(target: "inputbot::run", drained = report.drained, outstanding = report.outstanding, "stopped");
            ExitCode::SUCCESS
        }
        Command::Dlq {
            command:
                DlqCommand::Inspect {
                    data_dir,
                    topic,
                    json,
                },
        } => inspect(&data_dir, topic.as_deref(), json),
        Command::Dlq {
            command:
                DlqCommand::Redrive {
                    files,
                    data_dir,
                    topic,
                    filter,
                    rate,
                    namespace,
                },
        } => {
            init_logging(cli.log_format);
            let set = match load(&files, &namespace) {
                Ok(set) => set,
                Err(code) => return code,
            };
            match local::redrive(
                set,
                &data_dir,
                &local::RedriveOptions {
                    topic,
                    filter,
                    rate,
                },
            )
            .await
            {
                Ok(r) => {
                    println!(
                        "redriven: {}, dead-lettered again: {}, left alone: {}",
                        r.redriven, r.failed_again, r.kept
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn inspect(data_dir: &std::path::Path, topic: Option<&str>, json: bool) -> ExitCode {
    let files = dlq::files(&data_dir.join("dlq"));
    let mut total = 0;
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if topic.is_some_and(|t| t != name) {
            continue;
        }
        let records = match dlq::read(&path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        total += records.len();
        if json {
            for r in &records {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
            continue;
        }
        println!(
            "{name}: {} dead letter{}",
            records.len(),
            if records.len() == 1 { "" } else { "s" }
        );
        for r in &records {
            println!(
                "  {}  event {}  {} {} {}  {}{} after {} attempt{}: {}",
                r.dead_lettered_at.format("%Y-%m-%d %H:%M:%S"),
                r.event.id,
                r.failed_at.resource,
                r.failed_at.stage,
                r.failed_at.name,
                r.error.class,
                r.error.status.map(|s| format!(" {s}")).unwrap_or_default(),
                r.error.attempts,
                if r.error.attempts == 1 { "" } else { "s" },
                r.error.message
            );
        }
    }
    if !json && total == 0 {
        println!("no dead letters in {}", data_dir.join("dlq").display());
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
