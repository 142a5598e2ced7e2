//! Shipping a node's intake log into ClickHouse, exactly once (docs/clickhouse.md, "Ingestion").
//!
//! The node's intake log is the spool: capture acknowledges after the log's fsync, and a shipper sends the log's
//! batches to ClickHouse in log order, as blocks of whole batches. Every row carries the node (`_node`) and the log
//! position just past its batch (`_lsn`); after each block one row goes to `shipments` (`node`, `start_lsn`,
//! `end_lsn`), and a reopened shipper starts from the last `end_lsn` recorded for its node.
//!
//! What can go wrong between a block and its `shipments` row — a crash, a timeout whose insert did land, a server
//! that went away mid-request — leaves ClickHouse *ahead* of the recorded position, possibly in part: an insert
//! writes one part per month partition, and each part appears whole or not at all, but not all of a block's parts
//! need to have been written. So whenever the shipper does not know what the last attempt did (when it opens, and
//! after any failed attempt), it first asks which (batch, month) groups of the block are already there — a query
//! bounded by the block's projects, events and time range, the sort key's prefix, so it reads a few granules — and
//! sends only the others. Each event is therefore stored once, whatever fails when.

use std::collections::BTreeSet;

use chrono::{Datelike, TimeZone, Utc};
use serde::Serialize;

use crate::client::{ClickHouseError, Client};
use crate::row::EventRow;
use crate::schema::{ident, EVENTS, SHIPMENTS};
use crate::sql::quote;

/// Most rows in one insert (ClickHouse splits larger inserts into several blocks, which would break the
/// all-or-nothing of a (batch, month) group).
pub const MAX_BLOCK_ROWS: usize = 500_000;

/// One batch of the log: the position just past it and its rows.
#[derive(Debug, Clone)]
pub struct Batch {
    pub end_lsn: u64,
    pub rows: Vec<EventRow>,
}

/// Sends a node's log batches to ClickHouse exactly once.
#[derive(Debug)]
pub struct Shipper {
    client: Client,
    db: String,
    node: String,
    position: u64,
    /// The last attempt's outcome is unknown (just opened, or an attempt failed): check before sending.
    uncertain: bool,
}

/// A row as inserted: the event and where it came from.
#[derive(Serialize)]
struct Shipped<'a> {
    #[serde(flatten)]
    row: &'a EventRow,
    _node: &'a str,
    _lsn: u64,
    /// The row's place in its batch: with `_lsn`, the node's log order (funnels and retention break ties of the
    /// same microsecond by it, as the embedded engine does).
    _idx: u32,
}

#[derive(Serialize)]
struct Shipment<'a> {
    node: &'a str,
    start_lsn: u64,
    end_lsn: u64,
    rows: u64,
}

/// The month partition (`toYYYYMM`) of an instant in µs, as ClickHouse computes it from the whole second.
fn month_of(timestamp_us: i64) -> u32 {
    let secs = timestamp_us.div_euclid(1_000_000);
    let t = Utc
        .timestamp_opt(secs, 0)
        .single()
        .unwrap_or_else(|| Utc.timestamp_opt(0, 0).unwrap());
    t.year() as u32 * 100 + t.month()
}

impl Shipper {
    /// A shipper for `node` (a name unique among the nodes writing to this database), starting where the
    /// `shipments` table says the node's last block ended (0 when it never shipped).
    pub async fn open(client: Client, db: &str, node: &str) -> Result<Shipper, ClickHouseError> {
        let rows = client
            .query_rows(&format!(
                "SELECT max(end_lsn) FROM {}.{} WHERE node = {}",
                ident(db),
                ident(SHIPMENTS),
                quote(node)
            ))
            .await?;
        let position = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Shipper {
            client,
            db: db.to_owned(),
            node: node.to_owned(),
            position,
            uncertain: true,
        })
    }

    /// The log position just past the last batch ClickHouse holds from this node: where reading resumes.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Sends `batches` (in log order; those at or before [`position`](Self::position) are skipped, so a caller may
    /// hand the same batches again after an error) as one block, and records it. Returns the new position. On an
    /// error the position does not move, and the next call first checks what the failed attempt stored.
    pub async fn send(&mut self, batches: &[Batch]) -> Result<u64, ClickHouseError> {
        let fresh: Vec<&Batch> = batches
            .iter()
            .filter(|b| b.end_lsn > self.position)
            .collect();
        // Blocks of whole batches below ClickHouse's `max_insert_block_size` (1,048,576 rows), so that one insert is
        // one part per month and a (batch, month) group is stored whole or not at all.
        let mut start = 0;
        while start < fresh.len() {
            let mut end = start;
            let mut rows = 0;
            while end < fresh.len()
                && (end == start || rows + fresh[end].rows.len() <= MAX_BLOCK_ROWS)
            {
                rows += fresh[end].rows.len();
                end += 1;
            }
            let block = &fresh[start..end];
            let end_lsn = block[block.len() - 1].end_lsn;
            match self.send_block(block, end_lsn).await {
                Ok(()) => {
                    self.position = end_lsn;
                    self.uncertain = false;
                }
                Err(e) => {
                    self.uncertain = true;
                    return Err(e);
                }
            }
            start = end;
        }
        Ok(self.position)
    }

    async fn send_block(&self, batches: &[&Batch], end_lsn: u64) -> Result<(), ClickHouseError> {
        let present = if self.uncertain {
            self.present(batches).await?
        } else {
            BTreeSet::new()
        };
        let mut rows = Vec::new();
        for b in batches {
            for (idx, row) in b.rows.iter().enumerate() {
                if !present.contains(&(b.end_lsn, month_of(row.timestamp_us))) {
                    rows.push(Shipped {
                        row,
                        _node: &self.node,
                        _lsn: b.end_lsn,
                        _idx: u32::try_from(idx).unwrap_or(u32::MAX),
                    });
                }
            }
        }
        let table = format!("{}.{}", ident(&self.db), ident(EVENTS));
        self.client.insert(&table, &rows).await?;
        let total: usize = batches.iter().map(|b| b.rows.len()).sum();
        let shipment = Shipment {
            node: &self.node,
            start_lsn: self.position,
            end_lsn,
            rows: total as u64,
        };
        let table = format!("{}.{}", ident(&self.db), ident(SHIPMENTS));
        self.client.insert(&table, &[shipment]).await
    }

    /// The (batch, month) groups of these batches that ClickHouse already holds from this node.
    async fn present(&self, batches: &[&Batch]) -> Result<BTreeSet<(u64, u32)>, ClickHouseError> {
        let rows = batches.iter().flat_map(|b| b.rows.iter());
        let mut projects = BTreeSet::new();
        let mut events = BTreeSet::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for r in rows {
            projects.insert(r.project_id);
            events.insert(r.event.as_str());
            lo = lo.min(r.timestamp_us);
            hi = hi.max(r.timestamp_us);
        }
        if projects.is_empty() {
            return Ok(BTreeSet::new());
        }
        let list = |items: Vec<String>| items.join(", ");
        let sql = format!(
            "SELECT _lsn, toYYYYMM(timestamp) AS month, count() FROM {db}.{events}
             WHERE project_id IN ({projects}) AND event IN ({names})
               AND timestamp >= toDateTime({lo_s}, 'UTC') AND timestamp <= toDateTime({hi_s}, 'UTC')
               AND _node = {node} AND _lsn > {from} AND _lsn <= {to}
             GROUP BY _lsn, month",
            db = ident(&self.db),
            events = ident(EVENTS),
            projects = list(projects.iter().map(u64::to_string).collect()),
            names = list(events.iter().map(|e| quote(e)).collect()),
            lo_s = lo.div_euclid(1_000_000),
            hi_s = hi.div_euclid(1_000_000),
            node = quote(&self.node),
            from = self.position,
            to = batches.last().map(|b| b.end_lsn).unwrap_or(0),
        );
        let mut out = BTreeSet::new();
        for r in self.client.query_rows(&sql).await? {
            let lsn = r.first().and_then(|v| v.parse::<u64>().ok());
            let month = r.get(1).and_then(|v| v.parse::<u32>().ok());
            let n = r.get(2).and_then(|v| v.parse::<u64>().ok());
            if let (Some(lsn), Some(month), Some(n)) = (lsn, month, n) {
                if n > 0 {
                    out.insert((lsn, month));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_partitions() {
        // 2026-03-31T23:59:59.999999Z is March; a microsecond later, April.
        let end_of_march = Utc
            .with_ymd_and_hms(2026, 3, 31, 23, 59, 59)
            .unwrap()
            .timestamp()
            * 1_000_000
            + 999_999;
        assert_eq!(month_of(end_of_march), 202603);
        assert_eq!(month_of(end_of_march + 1), 202604);
        assert_eq!(month_of(-1), 196912);
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quote(r"it's a \ test"), r"'it\'s a \\ test'");
    }
}
