//! The `previewd` command: configuration, the command line and wiring. Business logic lives in the
//! library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use previewd::{Application, Config, envs, offline, reap};

#[derive(Debug, Parser)]
#[command(name = "previewd", version, about = "Short-lived AWS environments for every Git branch.")]
struct Cli {
    /// The configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "PREVIEWD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// How logs are written to standard error: `text` for people, `json` (one object a line) for a log
    /// pipeline.
    #[arg(long, global = true, env = "PREVIEWD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How much previewd itself logs; its libraries log warnings and errors only. `RUST_LOG`, when set,
    /// replaces both (tracing's directives, such as `debug` or `info,previewd_reconciler=debug`).
    #[arg(long, global = true, env = "PREVIEWD_LOG_LEVEL", default_value = "info",
        value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: webhooks, reconciler, dashboard.
    Serve,
    /// Print a branch's rendered template (JSON), with neither AWS nor GitHub.
    Render(offline::RenderArgs),
    /// Print every setting of a branch's environment, its value and the layer that set it.
    Explain(offline::ExplainArgs),
    /// One reaper pass now: print each decision and its reason; exit non-zero when it refused or failed.
    Reap(reap::ReapArgs),
    /// Look at and act on environments through a running previewd's API.
    Envs(envs::EnvsArgs),
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
        Command::Serve => {
            init_tracing(cli.log_format, &cli.log_level);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(serve(&config))?;
        }
        Command::Render(args) => {
            let mut notes = Vec::new();
            offline::render(&config, &args, &mut out, &mut notes)?;
            for note in notes {
                eprintln!("note: {note}");
            }
        }
        Command::Explain(args) => offline::explain(&config, &args, &mut out)?,
        Command::Envs(args) => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(envs::envs(&args, config.dashboard_token.as_ref(), &mut out))?;
        }
        Command::Reap(args) => {
            init_tracing(cli.log_format, &cli.log_level);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let clean = runtime.block_on(async {
                let aws = previewd_cloud::Aws::from_env().await;
                reap::reap(&config, aws, &args, &mut out).await
            })?;
            print!("{out}");
            if !clean {
                anyhow::bail!("the reaper pass refused or failed: nothing was removed where it could not judge");
            }
            return Ok(());
        }
    }
    print!("{out}");
    Ok(())
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    // previewd's crates are all named `previewd…`; a directive's target matches by prefix.
    // Libraries say warnings and errors, never more than previewd itself.
    let libraries = if level == "error" { "error" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(format!("{libraries},previewd={level}")));
    // Never colours: the safe writer would write their escape codes out as text, and a file or a log
    // pipeline wants none.
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let json = matches!(format, LogFormat::Json);
    let safe = previewd::logs::SafeLines::new(std::io::stderr, json);
    match format {
        LogFormat::Text => logs.with_writer(safe).init(),
        // Each line carries its span's fields (a reconcile's repo, branch, env and stack).
        LogFormat::Json => logs.with_writer(safe).json().with_current_span(true).with_span_list(false).init(),
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.addr(), "serving: webhooks at /webhooks/github, dashboard at /");
    println!("previewd listening on http://{}", app.addr());
    shutdown_signal().await;
    tracing::info!("shutting down: no new work; finishing reconciles under way");
    match tokio::time::timeout(SHUTDOWN_LIMIT, app.stop()).await {
        Ok(stopped) => stopped,
        Err(_) => {
            // What a step left unfinished is recorded in AWS and the store: the next start resumes it.
            tracing::warn!(limit = ?SHUTDOWN_LIMIT, "reconciles still under way at the limit: abandoned");
            Ok(())
        }
    }
}

/// After SIGTERM previewd exits within this long (ECS and systemd allow 60 s before SIGKILL).
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
