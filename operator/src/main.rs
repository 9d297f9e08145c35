//! `inputbot-operator`: the controller that turns InputBots, Pipelines and ActionBindings into
//! Deployments, Services, autoscalers and Kafka topics. Thin: parse, start telemetry, dispatch.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use inputbot_operator::{
    render, run,
    settings::{RunSettings, Settings},
};

#[derive(Parser, Debug)]
#[command(name = "inputbot-operator", version, about, args_override_self = true)]
struct Cli {
    /// Log format: `json` in clusters, `text` for people.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json, env = "INPUTBOT_LOG_FORMAT")]
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
    /// Run the controllers (with leader election) until SIGTERM.
    Run {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        run: RunSettings,
    },
    /// Print the objects the operator would create for the resources in FILEs, as YAML — for
    /// review and GitOps diffs. Reads no cluster.
    Render {
        /// YAML files with InputBots, Pipelines and ActionBindings.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Render as if KEDA were installed (lag autoscaling becomes ScaledObjects).
        #[arg(long)]
        keda: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the API reference (Markdown) generated from the CRD schemas.
    ApiDocs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { settings, run } => {
            init_tracing(cli.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::run(settings, run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "the operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Render {
            files,
            namespace,
            keda,
            settings,
        } => match render_files(&files, &namespace, keda, &settings) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::ApiDocs => {
            print!("{}", inputbot_api::crd::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Crds { out_dir } => match crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn render_files(
    files: &[PathBuf],
    namespace: &str,
    keda: bool,
    settings: &Settings,
) -> anyhow::Result<String> {
    let set = inputbot_api::manifest::load_files(files, namespace).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.origin, e.message))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let objects = render::render_files(&set, settings, render::Capabilities { keda })
        .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object).context("writing YAML")?);
    }
    Ok(out)
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        None => print!("{}", inputbot_api::crd::all_yaml()),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in inputbot_api::crd::crds() {
                let path = dir.join(inputbot_api::crd::file_name(&crd));
                std::fs::write(&path, inputbot_api::crd::to_yaml(&crd))
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
