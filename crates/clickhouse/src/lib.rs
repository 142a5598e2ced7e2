//! Flywheel's ClickHouse event backend: query side, and the shipper that writes a node's intake log into it.
//!
//! - [`schema`]: the tables (events partitioned by month, person overrides for merges) as DDL.
//! - [`client`]: a small ClickHouse HTTP client (queries, `JSONEachRow` batch inserts, errors carrying
//!   ClickHouse's own message) on the hyper client already in the tree.
//! - [`row`]: an event as the events table stores it (the top-level properties indexed for filters).
//! - [`sql`]: the insight planner's SQL: [`sql::compile`] turns a resolved insight ([`flywheel_query::plan`])
//!   into statements, and [`sql::Compiled::run`] runs them and decodes the answer; [`run_insight`] does it all.
//! - [`ship`]: sends a node's intake-log batches exactly once, whatever fails when ([`Shipper`]).
//!
//! Every statement runs on ClickHouse 18.16 (Debian bookworm's `clickhouse-server`, the CI server) and on current
//! releases: no window functions, no `DateTime64`, no JSON functions, no time-zone-dependent date functions.
//! Bucket boundaries are computed in Rust by the same planner as the embedded engine's and passed as constant
//! arrays, so buckets match it exactly in every time zone, across DST. What the SQL cannot answer exactly is
//! refused with [`Unsupported`] naming the field, never answered approximately. See `docs/clickhouse.md`.

pub mod client;
pub mod erase;
pub mod row;
pub mod schema;
pub mod ship;
pub mod sql;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use client::{ClickHouseError, Client};
pub use row::EventRow;
pub use ship::{Batch, Shipper};
pub use sql::{compile, run_insight, Answer, Compiled, InsightError, Unsupported};
