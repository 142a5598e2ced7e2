//! `flywheel export-events`: one project's events as a Parquet file with persons resolved (identity merges
//! applied), for other engines (the insights benchmark loads it into ClickHouse and DuckDB) and for analysts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Data directory. No server may be running on it (the intake log has a single user).
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./flywheel-data")]
    data_dir: PathBuf,
    /// Project to export. Default: the data directory's first project.
    #[arg(long)]
    project_id: Option<i64>,
    /// Output Parquet file (overwritten).
    #[arg(long)]
    out: PathBuf,
    /// A person property to add as a column (the person's current value, as text); repeatable.
    #[arg(long = "person-property")]
    person_properties: Vec<String>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::runtime()?.block_on(async move {
        let config = flywheel_server::Config::for_tests(args.data_dir.clone());
        if !config.metadata_path().exists() {
            bail!("{} is not a Flywheel data directory (no metadata.db)", args.data_dir.display());
        }
        let intake_config = flywheel_engine::IntakeConfig::new(config.wal_dir());
        let opened = tokio::task::spawn_blocking(move || flywheel_engine::Intake::open(intake_config)).await?;
        let (intake, _) = match opened {
            Ok(opened) => opened,
            Err(flywheel_engine::EngineError::AlreadyOpen(_)) => bail!(
                "{} is in use by a running flywheel server: stop it first",
                args.data_dir.display()
            ),
            Err(err) => return Err(anyhow::Error::new(err).context("cannot open the event intake log")),
        };
        let store = flywheel_server::open_store(&config).await?;
        let project_id = match args.project_id {
            Some(id) => id,
            None => store
                .first_project()
                .await?
                .context("the data directory has no project")?,
        };
        let identity_lsn = store.checkpoint(flywheel_server::identity::CONSUMER).await?;
        if identity_lsn < intake.committed_lsn() {
            eprintln!(
                "warning: identity has not applied the newest events yet (start the server once and stop it); \
                 their new distinct ids are exported as persons of their own"
            );
        }
        let dir = config.columnar_dir();
        let tables = tokio::task::spawn_blocking(move || flywheel_engine::table::EventTables::open(&dir))
            .await?
            .context("cannot open the columnar segments")?;
        flywheel_server::events_table::load_identity(&store, &tables).await?;
        let target = intake.committed_lsn();
        loop {
            let from = tables.appended_lsn();
            if from >= target {
                break;
            }
            let reached = flywheel_server::events_table::append_chunk(&intake, &tables, from, target)?;
            if reached == from {
                break;
            }
        }
        let Some(snap) = tables.snapshot(project_id) else {
            bail!("project {project_id} has no events");
        };
        let mut columns = Vec::new();
        for key in &args.person_properties {
            let mut by_id = std::collections::HashMap::new();
            store
                .for_each_person_property(project_id, key, |id, v| {
                    let text = match v {
                        serde_json::Value::Null => return,
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    by_id.insert(id, text);
                })
                .await?;
            let values: Vec<Option<String>> =
                snap.person_ids.iter().map(|id| by_id.get(id).cloned()).collect();
            columns.push((key.clone(), values));
        }
        let out = args.out.clone();
        let rows = tokio::task::spawn_blocking(move || {
            flywheel_engine::table::export_parquet(&snap, &out, &columns)
        })
        .await??;
        intake.shutdown().await.context("closing the intake log")?;
        let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
        let seconds = started.elapsed().as_secs_f64();
        if args.json {
            println!(
                "{}",
                serde_json::json!({"project_id": project_id, "rows": rows, "bytes": bytes, "seconds": seconds, "out": args.out})
            );
        } else {
            eprintln!(
                "exported {rows} events of project {project_id} to {} ({bytes} bytes) in {seconds:.1} s",
                args.out.display()
            );
        }
        Ok(())
    })
}
