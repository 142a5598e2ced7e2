//! `flywheel migrate`: copy an embedded deployment into PostgreSQL (metadata) and ClickHouse (events)
//! (`flywheel_server::migrate`; docs/scale-out.md). Progress on stderr, the verification table on stdout; exits
//! nonzero when a count differs.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use flywheel_server::migrate::{Options, Step};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The embedded deployment: its data directory. No server may be running on it.
    #[arg(
        long = "from",
        value_name = "DATA_DIR",
        env = "FLYWHEEL_DATA_DIR",
        default_value = "./flywheel-data"
    )]
    from: PathBuf,
    /// PostgreSQL URL to copy the metadata into (an empty database, or the one an interrupted migration of this
    /// data directory left); the nodes' `--metadata-url`.
    #[arg(
        long = "to-metadata",
        value_name = "POSTGRES_URL",
        env = "FLYWHEEL_METADATA_URL"
    )]
    to_metadata: String,
    /// ClickHouse HTTP URL to ship the events to; the nodes' `--events-url`.
    #[arg(
        long = "to-events",
        value_name = "CLICKHOUSE_URL",
        env = "FLYWHEEL_EVENTS_URL"
    )]
    to_events: String,
    /// ClickHouse database of the events (created when missing).
    #[arg(long, env = "FLYWHEEL_EVENTS_DATABASE", default_value = "flywheel")]
    events_database: String,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let options = Options {
        data_dir: args.from,
        metadata_url: args.to_metadata,
        events_url: args.to_events,
        events_database: args.events_database,
    };
    let mut display = Display::new(args.quiet);
    let report = crate::runtime()?
        .block_on(flywheel_server::migrate::run(&options, &mut |step| {
            display.show(step)
        }))?;
    display.finish();
    print!("{}", report.render());
    let secs = |d: Duration| d.as_secs_f64().max(1e-3);
    eprintln!(
        "metadata: {} rows read, {} new, in {:.1} s ({:.0} rows/s); events: {} sent in {:.1} s ({:.0} events/s)",
        report.rows_read,
        report.rows_inserted,
        report.metadata_time.as_secs_f64(),
        report.rows_read as f64 / secs(report.metadata_time),
        report.events_sent,
        report.events_time.as_secs_f64(),
        report.events_sent as f64 / secs(report.events_time),
    );
    if !report.matches() {
        bail!("the counts differ (MISMATCH above): the migration is not complete; run it again, or check the target for other writers");
    }
    eprintln!(
        "done: start the nodes with --data-dir {} (this node, id {}) --metadata-url … --events-url …",
        options.data_dir.display(),
        report.node
    );
    Ok(())
}

/// Progress on stderr: one line redrawn in place on a terminal (at most every 100 ms), otherwise a line per table
/// and about one per 10 % of the events.
struct Display {
    quiet: bool,
    tty: bool,
    started: Instant,
    last_draw: Instant,
    last_tenth: u64,
    /// The line currently drawn in place, if any.
    open: bool,
}

impl Display {
    fn new(quiet: bool) -> Display {
        let now = Instant::now();
        Display {
            quiet,
            tty: std::io::stderr().is_terminal(),
            started: now,
            last_draw: now,
            last_tenth: 0,
            open: false,
        }
    }

    fn rate(&self, done: u64) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            done as f64 / secs
        } else {
            0.0
        }
    }

    fn show(&mut self, step: Step<'_>) {
        if self.quiet {
            return;
        }
        match step {
            Step::Table { name, total } => {
                self.started = Instant::now();
                if total == 0 && !self.tty {
                    eprintln!("metadata {name:<24} {:>9}/0 rows", 0);
                }
            }
            Step::Rows { name, done, total } => {
                let line = format!(
                    "metadata {name:<24} {done:>9}/{total} rows  {:.0} rows/s",
                    self.rate(done)
                );
                let last = done >= total;
                if self.tty {
                    self.draw(&line, last);
                } else if last {
                    eprintln!("{line}");
                }
            }
            Step::Events(p) => {
                if p.events == 0 {
                    self.started = Instant::now();
                }
                let span = p.until.max(1);
                let percent = p.position.min(span) * 100 / span;
                let line = format!(
                    "events   {percent:>3}% of the log  {} sent  {:.0} events/s",
                    p.events,
                    self.rate(p.events)
                );
                let last = p.position >= p.until;
                if self.tty {
                    self.draw(&line, last);
                } else if percent / 10 > self.last_tenth || last {
                    self.last_tenth = percent / 10;
                    eprintln!("{line}");
                }
            }
            Step::Verifying => {
                self.finish();
                eprintln!("verifying: counting rows and events on both sides");
            }
        }
    }

    fn draw(&mut self, line: &str, last: bool) {
        if !last && self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        self.open = !last;
        if last {
            let _ = writeln!(err);
        }
    }

    fn finish(&mut self) {
        if self.open {
            eprintln!();
            self.open = false;
        }
    }
}
