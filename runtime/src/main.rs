//! `inputbot`: the runtime binary. Thin: parse arguments, start telemetry, hand over to the
//! command (`local` for `run` and `dlq redrive`, `roles::cluster` for `ingest`, `process` and
//! `act`, `validate`, `dlq::inspect`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use inputbot_runtime::{
    bus::{KafkaOptions, KafkaSettings, kafka::dlq as kafka_dlq},
    dlq, local,
    roles::{
        self,
        cluster::{self, ClusterOptions, Role},
        serve::ServerLimits,
    },
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

/// Where `inputbot run` keeps accepted events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BusMode {
    /// A log under the data directory, synced before a webhook is answered.
    Disk,
    /// Memory only.
    Memory,
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
        /// Dead letters, source state and the bus's log are kept here; a run on a directory
        /// a stopped run used continues where it stopped.
        #[arg(long, default_value = ".inputbot", env = "INPUTBOT_DATA_DIR")]
        data_dir: PathBuf,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Where accepted events wait for their stages: `disk` (a 202 means the event is
        /// synced to the log under --data-dir and survives a crash) or `memory` (faster to
        /// start; an accepted event not yet finished is lost if the process dies).
        #[arg(long, value_enum, default_value_t = BusMode::Disk, env = "INPUTBOT_BUS")]
        bus: BusMode,
        /// Most bytes the bus's log may take on disk; past it webhooks are answered 503 until
        /// the stages catch up.
        #[arg(long, default_value_t = 1 << 30, env = "INPUTBOT_BUS_MAX_BYTES")]
        bus_max_bytes: u64,
        #[command(flatten)]
        http: HttpArgs,
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
    /// Run a bot's ingest component on Kafka, as its Deployment does: webhooks, poll and
    /// schedule sources → the raw topic.
    Ingest(RoleArgs),
    /// Run a Pipeline's process component on Kafka: raw topic → steps → output topic.
    Process(RoleArgs),
    /// Run an ActionBinding's act component on Kafka: input topic → action.
    Act(RoleArgs),
    /// Inspect and redrive dead letters of local runs.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// What every cluster role reads: the operator renders exactly these flags. Kafka settings come
/// from `INPUTBOT_KAFKA_*` (see docs/runtime-kafka.md).
#[derive(clap::Args, Debug)]
struct RoleArgs {
    /// The resolved component config the operator mounted (JSON; its `role` must match).
    #[arg(long, default_value = "/etc/inputbot/component.json")]
    config: PathBuf,
    /// Mounted Secrets, as `<dir>/<secret>/<key>` files.
    #[arg(long, default_value = "/var/run/inputbot/secrets")]
    secrets_dir: PathBuf,
    /// Address to serve /healthz, /readyz, /metrics (and webhooks, in ingest) on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Seconds shutdown lets in-flight events finish (keep it below the pod's grace period).
    #[arg(long, default_value_t = 20)]
    drain_timeout: u64,
    /// Where poll sources keep their state.
    #[arg(long, env = "INPUTBOT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    http: HttpArgs,
}

/// Limits of the HTTP server (webhooks, /healthz, /readyz, /metrics), the same for every
/// command that serves; durations such as `10s` or `500ms` (docs/operations.md).
#[derive(clap::Args, Debug)]
struct HttpArgs {
    /// How long a client may take to send a request's line and headers, counted from when the
    /// connection waits for them (so also a keep-alive connection's wait for its next
    /// request); past it the connection is closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration, env = "INPUTBOT_HTTP_HEADER_READ_TIMEOUT")]
    http_header_read_timeout: Duration,
    /// How long a webhook's body may take to arrive after its headers; past it the request is
    /// answered 408.
    #[arg(long, default_value = "30s", value_parser = positive_duration, env = "INPUTBOT_HTTP_REQUEST_TIMEOUT")]
    http_request_timeout: Duration,
    /// How long a keep-alive connection may stay open with no request after its last answer.
    #[arg(long, default_value = "10s", value_parser = positive_duration, env = "INPUTBOT_HTTP_IDLE_TIMEOUT")]
    http_idle_timeout: Duration,
    /// Most connections open at once. At the cap a new connection takes the place of the one
    /// idle the longest (no request in flight); when all have a request in flight, new ones
    /// wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), env = "INPUTBOT_HTTP_MAX_CONNECTIONS")]
    http_max_connections: u32,
}

impl HttpArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_read_timeout: self.http_header_read_timeout,
            request_timeout: self.http_request_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections as usize,
        }
    }
}

/// A duration above zero, as `10s`, `500ms` or `1m`.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("expected a duration above zero, found 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "expected a duration such as 10s or 500ms, found {s:?}: {e}"
        )),
    }
}

async fn run_role(role: Role, args: RoleArgs, format: LogFormat) -> ExitCode {
    telemetry::init(format);
    let settings = match KafkaSettings::from_env(&format!("inputbot-{}", role.as_str())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = ClusterOptions {
        role,
        config: args.config,
        secrets_dir: args.secrets_dir,
        listen: args.listen,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        state_dir: args
            .state_dir
            .unwrap_or_else(|| std::env::temp_dir().join("inputbot-state")),
        kafka: KafkaOptions::default(),
        http: args.http.limits(),
    };
    match cluster::run(&options, settings, roles::signal()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: "inputbot::run", "{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
        #[command(flatten)]
        kafka: KafkaDlqArgs,
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
        #[command(flatten)]
        kafka: KafkaDlqArgs,
        /// Only say what would be put back (Kafka).
        #[arg(long)]
        dry_run: bool,
    },
}

/// The dead-letter topic on Kafka instead of a local run's files (connection from
/// `INPUTBOT_KAFKA_*`, as in the roles).
#[derive(clap::Args, Debug)]
struct KafkaDlqArgs {
    /// A Kafka dead-letter topic, e.g. inputbot.team-a.crm.act.dlq.
    #[arg(long)]
    kafka_topic: Option<String>,
    /// Only records dead-lettered at or after this RFC 3339 time (Kafka).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this error class: status, timeout, connection, validation, … (Kafka).
    #[arg(long)]
    class: Option<String>,
    /// Only this step, action or resource name (Kafka).
    #[arg(long)]
    name: Option<String>,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-12-01T10:00:00Z: {e}"))
}

/// `dlq inspect|redrive --kafka-topic`.
async fn kafka_dlq(
    kafka: KafkaDlqArgs,
    topic: &str,
    filter: Option<String>,
    redrive: Option<(f64, bool)>,
    json: bool,
) -> ExitCode {
    let settings = match KafkaSettings::from_env("inputbot-dlq") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = match filter
        .as_deref()
        .map(|f| inputbot_api::expr::CelExpr::compile(f, inputbot_api::expr::Scope::DeadLetter))
        .transpose()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --filter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selection = kafka_dlq::Selection {
        since: kafka.since,
        class: kafka.class,
        name: kafka.name,
        filter,
    };
    let result = match redrive {
        None => kafka_dlq::inspect(settings, topic, &selection, json)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Some((rate, dry_run)) => kafka_dlq::redrive(settings, topic, &selection, rate, dry_run)
            .await
            .map(|r| {
                println!(
                    "{}: {}, left alone: {}",
                    if dry_run { "would redrive" } else { "redriven" },
                    r.redriven,
                    r.kept
                );
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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

/// mimalloc: glibc's malloc and free were a fifth of the local path's profile
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ingest(args) => run_role(Role::Ingest, args, cli.log_format).await,
        Command::Process(args) => run_role(Role::Process, args, cli.log_format).await,
        Command::Act(args) => run_role(Role::Act, args, cli.log_format).await,
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
            bus,
            bus_max_bytes,
            http,
        } => {
            telemetry::init(cli.log_format);
            let set = match load(&files, &namespace) {
                Ok(set) => set,
                Err(code) => return code,
            };
            let mut options = local::LocalOptions::new(Some(listen), &data_dir);
            options.http = http.limits();
            match (&mut options.log, bus) {
                (Some(log), BusMode::Disk) => log.max_bytes = bus_max_bytes,
                (log, _) => *log = None,
            }
            let engine = match local::Engine::start(set, options).await {
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
                    kafka:
                        kafka @ KafkaDlqArgs {
                            kafka_topic: Some(_),
                            ..
                        },
                    json,
                    ..
                },
        } => {
            let topic = kafka.kafka_topic.clone().unwrap_or_default();
            kafka_dlq(kafka, &topic, None, None, json).await
        }
        Command::Dlq {
            command:
                DlqCommand::Redrive {
                    kafka:
                        kafka @ KafkaDlqArgs {
                            kafka_topic: Some(_),
                            ..
                        },
                    filter,
                    rate,
                    dry_run,
                    ..
                },
        } => {
            telemetry::init(cli.log_format);
            let topic = kafka.kafka_topic.clone().unwrap_or_default();
            kafka_dlq(kafka, &topic, filter, Some((rate, dry_run)), false).await
        }
        Command::Dlq {
            command:
                DlqCommand::Inspect {
                    data_dir,
                    topic,
                    json,
                    ..
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
                    ..
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_flags_default_to_the_servers_own_limits_and_take_short_durations() {
        let Command::Run { http, .. } = Cli::try_parse_from(["inputbot", "run"]).unwrap().command
        else {
            panic!("run");
        };
        assert_eq!(http.limits(), ServerLimits::default());
        let cli = Cli::try_parse_from([
            "inputbot",
            "ingest",
            "--http-header-read-timeout",
            "500ms",
            "--http-max-connections",
            "8",
        ])
        .unwrap();
        let Command::Ingest(args) = cli.command else {
            panic!("ingest");
        };
        let limits = args.http.limits();
        assert_eq!(limits.header_read_timeout, Duration::from_millis(500));
        assert_eq!(limits.max_connections, 8);
        let e = Cli::try_parse_from(["inputbot", "run", "--http-idle-timeout", "0s"]).unwrap_err();
        assert!(e.to_string().contains("above zero"), "{e}");
    }
}
