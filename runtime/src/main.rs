//! `inputbot`: the runtime binary. Thin: parse arguments, start telemetry, hand over to the
//! command (`local` for `run` and `dlq redrive`, `validate`, `dlq::inspect`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use inputbot_runtime::{
    dlq, local, roles,
    telemetry::{self, LogFormat},
    validate,
};

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

fn load(
    files: &[PathBuf],
    namespace: &str,
) -> Result<inputbot_api::manifest::ResourceSet, ExitCode> {
    local::load(files, namespace).map_err(|errors| {
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
            let report = validate::validate_files(&files, &namespace);
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
            telemetry::init(cli.log_format);
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
            roles::signal().await;
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
        } => match dlq::inspect::inspect(&data_dir, topic.as_deref(), json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
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
            telemetry::init(cli.log_format);
            let set = match load(&files, &namespace) {
                Ok(set) => set,
                Err(code) => return code,
            };
            let options = dlq::redrive::RedriveOptions {
                topic,
                filter,
                rate,
            };
            match local::redrive(set, &data_dir, &options).await {
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
