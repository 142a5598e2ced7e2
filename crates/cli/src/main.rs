//! The `flywheel` binary: parses configuration, then runs one command.

mod bench;
mod config;
mod export;
mod generate;
mod migrate;
mod users;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::{LogFormat, ServeArgs};

/// mimalloc instead of the system allocator: capture allocates many small, short-lived JSON values, and glibc's
/// malloc spent a third of the ingest profile (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flywheel: a self-hosted product-led-growth platform (event capture, identity, analytics, flags, growth loops).
#[derive(Debug, Parser)]
#[command(name = "flywheel", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: embedded storage (SQLite metadata + Flywheel's event engine) by default, or one node of a
    /// scaled-out deployment with --metadata-url (PostgreSQL) and --events-url (ClickHouse): docs/scale-out.md.
    Serve(Box<ServeArgs>),
    /// Create a data directory with a default organization and project, and print its keys.
    Init(InitArgs),
    /// Benchmarks that print numbers (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a deterministic synthetic SaaS history (visits, sign-ups, merges, activation, invitations, trials,
    /// upgrades, churn, companies) into a data directory's event log. Stop the server first; it applies persons
    /// and merges when it next starts.
    Generate(generate::GenerateArgs),
    /// Write one project's events to a Parquet file with persons resolved (merges applied) and chosen person
    /// properties as columns. Stop the server first.
    ExportEvents(export::ExportArgs),
    /// Copy an embedded deployment (a data directory: SQLite metadata, intake log) into PostgreSQL and ClickHouse,
    /// for running several nodes (docs/scale-out.md). Stop the server first. Resumable; ends with a verification
    /// count of rows and events on both sides (exit status 1 when they differ).
    Migrate(migrate::MigrateArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (the one served at /api/v1/openapi.json).
    Openapi,
    /// The people who sign in: list them, reset a password.
    #[command(subcommand)]
    Users(users::UsersCommand),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Data directory to create (must not hold an initialised Flywheel yet).
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./flywheel-data")]
    data_dir: std::path::PathBuf,
    /// Initialise a shared PostgreSQL metadata database instead of the data directory's SQLite file (the first
    /// node of a scaled-out deployment; docs/scale-out.md).
    #[arg(long, env = "FLYWHEEL_METADATA_URL")]
    metadata_url: Option<String>,
    /// Print the result as JSON (project_id, project_api_key, personal_api_key, …) for scripts.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Init(args) => init(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::ExportEvents(args) => export::run(args),
        Command::Users(cmd) => users::run(cmd),
        Command::Migrate(args) => migrate::run(args),
        Command::Openapi => serde_json::to_string_pretty(&flywheel_server::openapi::document())
            .map(|text| println!("{text}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut config = flywheel_server::Config::for_tests(args.data_dir.clone());
        config.metadata_url = args.metadata_url.clone();
        let store = flywheel_server::open_store(&config).await?;
        let Some(boot) = flywheel_server::bootstrap_if_empty(&store).await? else {
            anyhow::bail!(
                "{} is already initialised; its keys were printed when it was created (keys are stored hashed)",
                match &args.metadata_url {
                    Some(_) => "the metadata database".to_owned(),
                    None => args.data_dir.display().to_string(),
                }
            );
        };
        store.close().await;
        let mut out = std::io::stdout().lock();
        if args.json {
            let value = serde_json::json!({
                "data_dir": args.data_dir,
                "organization_id": boot.organization_id,
                "project_id": boot.project_id,
                "project_api_key": boot.project_api_key,
                "personal_api_key": boot.personal_api_key,
            });
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{}", banner(&boot, None))?;
        }
        Ok(())
    })
}

fn banner(boot: &flywheel_store::Bootstrap, url: Option<&str>) -> String {
    let mut text = String::from("\nFlywheel initialised a new data directory. Save these keys now: they are shown once.\n\n");
    if let Some(url) = url {
        text.push_str(&format!("  URL               {url}\n"));
    }
    text.push_str(&format!(
        "  project id        {}\n  project API key   {}   (public: SDKs capture and evaluate flags with it)\n  personal API key  {}   (secret: Authorization: Bearer … for /api/v1)\n",
        boot.project_id, boot.project_api_key, boot.personal_api_key
    ));
    text.push_str("\n  Make the first owner (to sign in): POST /api/v1/auth/setup with the personal API key and\n  {\"email\", \"password\"} (see README).\n");
    text
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    init_logging(settings.log_format, &settings.log_level)?;
    let config = settings.server_config();
    runtime()?.block_on(async move {
        // Installed before the server logs that it is ready: a TERM right after that line is a clean stop.
        let stop = shutdown_signal();
        let store = flywheel_server::open_store(&config).await?;
        let boot = flywheel_server::bootstrap_if_empty(&store).await?;
        let server = flywheel_server::Server::start_with_store(config, store).await?;
        if let Some(boot) = boot {
            // Printed once, to the terminal, not through the log pipeline.
            eprintln!(
                "{}",
                banner(&boot, Some(&format!("http://{}", server.local_addr)))
            );
        }
        stop.await;
        tracing::info!("shutting down: draining requests and committing batches");
        server.shutdown().await?;
        tracing::info!("stopped cleanly");
        Ok(())
    })
}

/// Listens for SIGINT and SIGTERM from now on (a signal that arrives while the server starts is kept, not fatal);
/// the returned future resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).with_context(|| {
        format!("invalid log level `{level}` (e.g. info, debug, flywheel_server=debug)")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
