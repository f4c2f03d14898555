//! The `previewd` command: configuration, the command line and wiring. Business logic lives in the
//! library crates.

mod config;
mod offline;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "previewd", version, about = "Short-lived AWS environments for every Git branch.")]
struct Cli {
    /// The configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "PREVIEWD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a branch's rendered template (JSON), with neither AWS nor GitHub.
    Render(offline::RenderArgs),
    /// Print every setting of a branch's environment, its value and the layer that set it.
    Explain(offline::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), |name| std::env::var(name).ok())?;
    let mut out = String::new();
    match cli.command {
        Command::Render(args) => {
            let mut notes = Vec::new();
            offline::render(&config, &args, &mut out, &mut notes)?;
            for note in notes {
                eprintln!("note: {note}");
            }
        }
        Command::Explain(args) => offline::explain(&config, &args, &mut out)?,
    }
    print!("{out}");
    Ok(())
}
