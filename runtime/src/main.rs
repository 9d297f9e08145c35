//! `inputbot`: the runtime binary. Thin: parse arguments, dispatch to the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "inputbot",
    version,
    about = "Declarative input bots: run, validate and operate them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check files (as you would `kubectl apply` them) without a cluster: schema, CEL rules,
    /// references, expressions, schemas, cron, durations and names. Exits 1 on any error.
    Validate {
        /// YAML files with InputBots, Pipelines, ActionBindings and Secrets.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Namespace of resources that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files, namespace } => {
            let report = inputbot_runtime::check::check_files(&files, &namespace);
            print!("{}", report.text);
            if report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
