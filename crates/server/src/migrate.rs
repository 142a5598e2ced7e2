//! `flywheel migrate`: an embedded deployment (a data directory) copied into PostgreSQL and ClickHouse, so that a
//! node started on those backends with the same data directory carries on (docs/scale-out.md, "Migrating an
//! embedded deployment").
//!
//! 1. **Checks** before anything is written: the data directory holds a Flywheel (`metadata.db`), no server runs
//!    on it (its intake log opens), identity has applied the whole log, PostgreSQL and ClickHouse answer, and no
//!    PostgreSQL table holds more rows than its SQLite twin.
//! 2. **Metadata** ([`flywheel_store::transfer`]): every table, parents first, ids verbatim, in chunks that a
//!    second run skips (rows already there are compared, never written twice); then the identity sequences. The
//!    consumer checkpoints become the node's (`consumer@<node-id>`, the id in `<data>/node-id`, made here when
//!    missing): the node resumes its log where the embedded server stopped.
//! 3. **Events** ([`clickhouse_ship::ship_log`]): the intake log shipped with the node's own shipper, exactly once
//!    with the person mapping; a second run resumes after the node's last shipment.
//! 4. **Verification**: rows per table on both sides, events in the log and in ClickHouse for this node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flywheel_clickhouse::schema::{ident, EVENTS};
use flywheel_clickhouse::Client;
use flywheel_engine::{EngineError, Intake, IntakeConfig};
use flywheel_store::transfer::{self, Table};
use flywheel_store::Store;

use crate::clickhouse_ship::{self, ShipProgress};

/// What to migrate where.
#[derive(Clone, Debug)]
pub struct Options {
    /// The embedded deployment's data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the metadata.
    pub metadata_url: String,
    /// ClickHouse's HTTP URL.
    pub events_url: String,
    /// The ClickHouse database of the events.
    pub events_database: String,
}

/// Where a migration stands, for a progress display.
#[derive(Clone, Copy, Debug)]
pub enum Step<'a> {
    /// A table's copy starts (`total`: its rows on SQLite).
    Table { name: &'a str, total: u64 },
    /// Rows of the current table read and written so far.
    Rows {
        name: &'a str,
        done: u64,
        total: u64,
    },
    /// Shipping the intake log: position after the last block.
    Events(ShipProgress),
    /// Counting both sides.
    Verifying,
}

/// Rows of one table on both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCount {
    pub name: String,
    pub sqlite: u64,
    pub postgres: u64,
}

/// What a migration did and found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The node id the checkpoints and shipments are keyed by.
    pub node: String,
    pub tables: Vec<TableCount>,
    /// Events in the intake log.
    pub log_events: u64,
    /// Events ClickHouse holds from this node.
    pub clickhouse_events: u64,
    /// Rows read from SQLite and rows PostgreSQL did not hold yet (less on a resumed run).
    pub rows_read: u64,
    pub rows_inserted: u64,
    pub metadata_time: Duration,
    /// Events this run sent (less on a resumed run).
    pub events_sent: u64,
    pub events_time: Duration,
}

impl Report {
    /// Every table and the events agree.
    pub fn matches(&self) -> bool {
        self.log_events == self.clickhouse_events
            && self.tables.iter().all(|t| t.sqlite == t.postgres)
    }

    /// The verification table (one line per table, then the events).
    pub fn render(&self) -> String {
        let node = format!("node {}", self.node);
        let width = self
            .tables
            .iter()
            .map(|t| t.name.len())
            .chain([24, node.len()])
            .max()
            .unwrap_or(24);
        let mut out = format!(
            "{:<width$}  {:>12}  {:>12}\n",
            "metadata table", "SQLite", "PostgreSQL"
        );
        let mark = |a: u64, b: u64| if a == b { "" } else { "  MISMATCH" };
        for t in &self.tables {
            out.push_str(&format!(
                "{:<width$}  {:>12}  {:>12}{}\n",
                t.name,
                t.sqlite,
                t.postgres,
                mark(t.sqlite, t.postgres)
            ));
        }
        out.push_str(&format!(
            "\n{:<width$}  {:>12}  {:>12}\n",
            "events", "intake log", "ClickHouse"
        ));
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:>12}{}\n",
            node,
            self.log_events,
            self.clickhouse_events,
            mark(self.log_events, self.clickhouse_events)
        ));
        out
    }
}

/// Migrates `options.data_dir` into PostgreSQL and ClickHouse; `progress` sees each step. Running it again after
/// an interruption (or after it finished) continues without duplicating anything.
pub async fn run(options: &Options, progress: &mut dyn FnMut(Step<'_>)) -> anyhow::Result<Report> {
    let data = &options.data_dir;
    let config = crate::Config::for_tests(data.clone());
    if !data.is_dir() {
        bail!("data directory {} does not exist", data.display());
    }
    if !config.metadata_path().is_file() {
        bail!(
            "{} is not a Flywheel data directory (no metadata.db)",
            data.display()
        );
    }
    let intake_config = IntakeConfig::new(config.wal_dir());
    let intake = match tokio::task::spawn_blocking(move || Intake::open(intake_config)).await? {
        Ok((intake, _)) => intake,
        Err(EngineError::AlreadyOpen(_)) => bail!(
            "{} is in use by a running flywheel server: stop it first",
            data.display()
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot open the intake log")),
    };
    let outcome = migrate(options, &config, &intake, progress).await;
    intake.shutdown().await.context("closing the intake log")?;
    outcome
}

async fn migrate(
    options: &Options,
    config: &crate::Config,
    intake: &Intake,
    progress: &mut dyn FnMut(Step<'_>),
) -> anyhow::Result<Report> {
    let source = Store::open(&config.metadata_path())
        .await
        .with_context(|| format!("cannot open {}", config.metadata_path().display()))?;
    let committed = intake.committed_lsn();
    let applied = source.checkpoint(crate::identity::CONSUMER).await?;
    if applied < committed {
        bail!(
            "identity has applied the intake log up to position {applied} of {committed}: start `flywheel serve` \
             on {} once and stop it (Ctrl-C), then migrate",
            options.data_dir.display()
        );
    }
    let node = clickhouse_ship::node_id(&options.data_dir).with_context(|| {
        format!(
            "cannot read or create {}/node-id",
            options.data_dir.display()
        )
    })?;
    let target = Store::connect_postgres(&options.metadata_url)
        .await
        .with_context(|| {
            format!(
                "cannot open PostgreSQL at {}",
                crate::redact_url(&options.metadata_url)
            )
        })?
        .with_node(&node);
    let client = Client::new(&options.events_url)
        .map_err(|e| anyhow::anyhow!("--to-events {}: {e}", options.events_url))?;
    client
        .query_rows("SELECT 1")
        .await
        .with_context(|| format!("ClickHouse at {} does not answer", options.events_url))?;

    let tables = transfer::plan(&source, &target).await?;
    let mut counts = Vec::with_capacity(tables.len());
    for table in &tables {
        let here = transfer::count_rows(&source, &table.name).await?;
        let there = transfer::count_rows(&target, &table.name).await?;
        if there > here {
            bail!(
                "the target database holds different data: {} has {there} rows on PostgreSQL and {here} in {} \
                 (migrate into an empty database)",
                table.name,
                config.metadata_path().display()
            );
        }
        counts.push(here);
    }

    let started = Instant::now();
    let (mut rows_read, mut rows_inserted) = (0, 0);
    for (table, &total) in tables.iter().zip(&counts) {
        progress(Step::Table {
            name: &table.name,
            total,
        });
        let copied = transfer::copy_table(&source, &target, table, &node, |done| {
            progress(Step::Rows {
                name: &table.name,
                done,
                total,
            })
        })
        .await
        .with_context(|| format!("copying {}", table.name))?;
        rows_read += copied.read;
        rows_inserted += copied.inserted;
    }
    transfer::advance_sequences(&source, &target, &tables).await?;
    let metadata_time = started.elapsed();

    let started = Instant::now();
    let shipped = clickhouse_ship::ship_log(
        &target,
        intake,
        &client,
        &options.events_database,
        &node,
        committed,
        |p| progress(Step::Events(p)),
    )
    .await
    .context("shipping the intake log to ClickHouse")?;
    let events_time = started.elapsed();

    progress(Step::Verifying);
    let report = Report {
        tables: verify_tables(&source, &target, &tables).await?,
        log_events: count_log(intake, committed).await?,
        clickhouse_events: count_shipped(&client, &options.events_database, &node).await?,
        node,
        rows_read,
        rows_inserted,
        metadata_time,
        events_sent: shipped.events,
        events_time,
    };
    source.close().await;
    target.close().await;
    Ok(report)
}

async fn verify_tables(
    source: &Store,
    target: &Store,
    tables: &[Table],
) -> anyhow::Result<Vec<TableCount>> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        out.push(TableCount {
            name: table.name.clone(),
            sqlite: transfer::count_rows(source, &table.name).await?,
            postgres: transfer::count_rows(target, &table.name).await?,
        });
    }
    Ok(out)
}

/// Events in the intake log up to `until`.
async fn count_log(intake: &Intake, until: u64) -> anyhow::Result<u64> {
    let reading = intake.clone();
    let n = tokio::task::spawn_blocking(move || -> Result<u64, EngineError> {
        let mut n = 0;
        for item in reading.reader(0) {
            let (end, batch) = item?;
            if end > until {
                break;
            }
            n += batch.len() as u64;
        }
        Ok(n)
    })
    .await??;
    Ok(n)
}

/// Events ClickHouse holds from `node`.
async fn count_shipped(client: &Client, db: &str, node: &str) -> anyhow::Result<u64> {
    let quoted = format!("'{}'", node.replace('\\', "\\\\").replace('\'', "\\'"));
    let rows = client
        .query_rows(&format!(
            "SELECT count() FROM {}.{} WHERE _node = {quoted}",
            ident(db),
            ident(EVENTS)
        ))
        .await?;
    rows.first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse().ok())
        .context("ClickHouse answered the event count with something else than a number")
}
