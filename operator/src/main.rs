//! `inputbot-operator`: the controller that turns InputBots, Pipelines and ActionBindings into
//! Deployments, Services, autoscalers and Kafka topics.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "inputbot-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the API reference (Markdown) generated from the CRD schemas.
    ApiDocs,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ApiDocs => print!("{}", inputbot_api::crd::reference_markdown()),
        Command::Crds { out_dir: None } => print!("{}", inputbot_api::crd::all_yaml()),
        Command::Crds { out_dir: Some(dir) } => {
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
