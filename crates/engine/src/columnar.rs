//! Columnar segments: immutable Parquet files of events, sorted by (person, time), that analytics scan.
//!
//! Format (every file is plain Parquet, readable by pandas, polars, DuckDB or ClickHouse):
//!
//! | column | type | notes |
//! |---|---|---|
//! | `person_id` | int64 | the metadata store's id of the event's person when the segment was built (identity merges since then are applied at read time through the distinct id) |
//! | `timestamp` | timestamp µs, UTC | |
//! | `event` | dictionary string | |
//! | `distinct_id` | dictionary string | |
//! | `uuid_high`, `uuid_low` | int64 each | the event uuid's big-endian halves: `(high as u128) << 64 \| low as u64` (a v7 uuid starts with its millisecond time, so the high half delta-encodes well) |
//! | `p:<key>` | per top-level property key | dictionary string, f64, bool, or JSON text |
//!
//! Rows are sorted by (person, timestamp) — the person as the engine numbers them (in the order it meets them,
//! which follows the store's person ids), so `person_id` is nearly sorted; rows with the same person and time keep
//! the order the writer gave them (the intake log's order). Properties are *shredded*: each top-level key present in the
//! segment gets its own column, typed when every value of the key is a string, a number (exactly representable
//! as f64) or a boolean, and JSON text otherwise (also when some event sets it to an explicit `null`, which is
//! kept). A missing key is a null cell. Reconstructing an event's properties gives back the same JSON object,
//! except that an integral float such as `3.0` comes back as `3`. Measured on generated data this is ≈ 34 bytes
//! per event with Snappy (docs/architecture.md, "Columnar segments").
//!
//! Files are written to a temporary name, synced, and renamed into place; [`Manifest`] lists the live segments
//! and is replaced atomically the same way, so a reader sees either the old or the new set, never a partial file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, StringBuilder, StringDictionaryBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::EngineError;

/// Prefix of property columns.
pub const PROPERTY_PREFIX: &str = "p:";

/// One event as a segment stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow<'a> {
    pub person: i64,
    pub timestamp_us: i64,
    pub event: &'a str,
    pub distinct_id: &'a str,
    pub uuid: u128,
    /// A JSON object, as text.
    pub properties: &'a str,
}

/// How a property column stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    String,
    Number,
    Bool,
    Json,
}

/// What the manifest knows of a segment (enough to prune it without opening it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// File name inside the segment directory.
    pub file: String,
    /// The project whose events the segment holds (a segment holds one project's events).
    #[serde(default)]
    pub project_id: i64,
    /// The time partition: UTC day number since 1970-01-01 of every event in the segment.
    #[serde(default)]
    pub partition: i32,
    pub rows: u64,
    pub persons: u64,
    pub min_timestamp_us: i64,
    pub max_timestamp_us: i64,
    /// Distinct event names, sorted.
    pub events: Vec<String>,
    /// Property columns: key → type.
    pub properties: BTreeMap<String, PropertyType>,
    pub bytes: u64,
}

fn segment_error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Segment {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The type of each top-level property key across `objects`.
fn property_types(objects: &[Map<String, Value>]) -> BTreeMap<String, PropertyType> {
    let mut types: BTreeMap<String, PropertyType> = BTreeMap::new();
    for object in objects {
        for (k, v) in object {
            let t = match v {
                Value::String(_) => PropertyType::String,
                Value::Number(n) if exact_f64(n).is_some() => PropertyType::Number,
                Value::Bool(_) => PropertyType::Bool,
                _ => PropertyType::Json,
            };
            types
                .entry(k.clone())
                .and_modify(|seen| {
                    if *seen != t {
                        *seen = PropertyType::Json;
                    }
                })
                .or_insert(t);
        }
    }
    types
}

/// The number as an f64, when that is exact.
fn exact_f64(n: &serde_json::Number) -> Option<f64> {
    if let Some(i) = n.as_i64() {
        return ((i.unsigned_abs()) <= 1 << 53).then_some(i as f64);
    }
    if let Some(u) = n.as_u64() {
        return (u <= 1 << 53).then_some(u as f64);
    }
    n.as_f64()
}

fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// A property column being built, row by row: [`PropertyColumn::push`] the row's value (if it has the key), then
/// [`PropertyColumn::end_row`] appends a null when it had none.
enum PropertyColumn {
    String(StringDictionaryBuilder<Int32Type>, bool),
    Number(Float64Builder, bool),
    Bool(BooleanBuilder, bool),
    Json(StringBuilder, bool),
}

impl PropertyColumn {
    fn new(t: PropertyType, rows: usize) -> Self {
        match t {
            PropertyType::String => PropertyColumn::String(StringDictionaryBuilder::new(), false),
            PropertyType::Number => {
                PropertyColumn::Number(Float64Builder::with_capacity(rows), false)
            }
            PropertyType::Bool => PropertyColumn::Bool(BooleanBuilder::with_capacity(rows), false),
            PropertyType::Json => PropertyColumn::Json(StringBuilder::new(), false),
        }
    }

    /// The current row's value (values of another type than the column's are null, as the types say they
    /// cannot occur except for JSON columns, which take anything).
    fn push(&mut self, v: &Value) {
        match self {
            PropertyColumn::String(b, done) => {
                match v {
                    Value::String(s) => b.append_value(s),
                    _ => b.append_null(),
                }
                *done = true;
            }
            PropertyColumn::Number(b, done) => {
                b.append_option(v.as_number().and_then(exact_f64));
                *done = true;
            }
            PropertyColumn::Bool(b, done) => {
                b.append_option(v.as_bool());
                *done = true;
            }
            PropertyColumn::Json(b, done) => {
                b.append_value(v.to_string());
                *done = true;
            }
        }
    }

    /// Ends the row: a null when the row had no value.
    fn end_row(&mut self) {
        match self {
            PropertyColumn::String(b, done) => {
                if !std::mem::take(done) {
                    b.append_null();
                }
            }
            PropertyColumn::Number(b, done) => {
                if !std::mem::take(done) {
                    b.append_null();
                }
            }
            PropertyColumn::Bool(b, done) => {
                if !std::mem::take(done) {
                    b.append_null();
                }
            }
            PropertyColumn::Json(b, done) => {
                if !std::mem::take(done) {
                    b.append_null();
                }
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            PropertyColumn::String(mut b, _) => Arc::new(b.finish()),
            PropertyColumn::Number(mut b, _) => Arc::new(b.finish()),
            PropertyColumn::Bool(mut b, _) => Arc::new(b.finish()),
            PropertyColumn::Json(mut b, _) => Arc::new(b.finish()),
        }
    }
}

/// Writes `rows`, in the order given, as a segment file at `path`; returns its metadata. Callers give them grouped
/// by person and in time order within a person (the engine: its sorted-view order, see `EventTables::seal`). Fails
/// on properties that are not a JSON object, leaving no file behind.
pub fn write_segment(path: &Path, rows: &mut [SegmentRow<'_>]) -> Result<SegmentMeta, EngineError> {
    let objects = rows
        .iter()
        .map(|r| match serde_json::from_str::<Value>(r.properties) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(segment_error(
                path,
                format!("event {:032x}: properties are not a JSON object", r.uuid),
            )),
            Err(e) => Err(segment_error(
                path,
                format!("event {:032x}: properties: {e}", r.uuid),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let types = property_types(&objects);

    let mut fields = vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event", dictionary(), false),
        Field::new("distinct_id", dictionary(), false),
        Field::new("uuid_high", DataType::Int64, false),
        Field::new("uuid_low", DataType::Int64, false),
    ];
    let mut event = StringDictionaryBuilder::<Int32Type>::new();
    let mut distinct_id = StringDictionaryBuilder::<Int32Type>::new();
    for r in rows.iter() {
        event.append_value(r.event);
        distinct_id.append_value(r.distinct_id);
    }
    let timestamps =
        TimestampMicrosecondArray::from(rows.iter().map(|r| r.timestamp_us).collect::<Vec<_>>())
            .with_timezone("UTC");
    let person = Int64Array::from(rows.iter().map(|r| r.person).collect::<Vec<_>>());
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(person),
        Arc::new(timestamps),
        Arc::new(event.finish()),
        Arc::new(distinct_id.finish()),
        Arc::new(Int64Array::from(
            rows.iter()
                .map(|r| (r.uuid >> 64) as u64 as i64)
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter()
                .map(|r| r.uuid as u64 as i64)
                .collect::<Vec<_>>(),
        )),
    ];
    // One pass over the events, each value routed to its key's column (a per-column lookup in every event's map
    // was most of a seal's time: rows × keys B-tree probes).
    let mut builders: Vec<PropertyColumn> = types
        .values()
        .map(|t| PropertyColumn::new(*t, rows.len()))
        .collect();
    let column_of: std::collections::HashMap<&str, usize> = types
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    for object in &objects {
        for (k, v) in object {
            builders[column_of[k.as_str()]].push(v);
        }
        for b in &mut builders {
            b.end_row();
        }
    }
    for ((key, t), b) in types.iter().zip(builders) {
        let name = format!("{PROPERTY_PREFIX}{key}");
        fields.push(Field::new(
            &name,
            match t {
                PropertyType::String => dictionary(),
                PropertyType::Number => DataType::Float64,
                PropertyType::Bool => DataType::Boolean,
                PropertyType::Json => DataType::Utf8,
            },
            true,
        ));
        columns.push(b.finish());
    }
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| segment_error(path, e))?;

    let tmp = path.with_extension("parquet.tmp");
    let write = || -> Result<u64, EngineError> {
        let file = File::create(&tmp)
            .map_err(|e| EngineError::io(format!("creating {}", tmp.display()), e))?;
        // Sorted by (person, time): person ids repeat, times and the uuids' time-led high halves grow within a
        // person: delta encoding instead of plain 8-byte values (BENCHMARKS.md, "Insights").
        let mut props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_size(1 << 20);
        for column in ["person_id", "timestamp", "uuid_high"] {
            let path = parquet::schema::types::ColumnPath::from(column);
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, parquet::basic::Encoding::DELTA_BINARY_PACKED);
        }
        // The low half is random: a dictionary only adds pages (measured 10.0 → 8 bytes per event without).
        let props = props
            .set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from("uuid_low"),
                false,
            )
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))
            .map_err(|e| segment_error(&tmp, e))?;
        writer.write(&batch).map_err(|e| segment_error(&tmp, e))?;
        let file = writer.into_inner().map_err(|e| segment_error(&tmp, e))?;
        file.sync_all()
            .map_err(|e| EngineError::io(format!("syncing {}", tmp.display()), e))?;
        let bytes = file
            .metadata()
            .map_err(|e| EngineError::io(format!("reading the size of {}", tmp.display()), e))?
            .len();
        std::fs::rename(&tmp, path)
            .map_err(|e| EngineError::io(format!("renaming {} into place", tmp.display()), e))?;
        sync_parent(path)?;
        Ok(bytes)
    };
    let bytes = write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;

    let events: BTreeSet<&str> = rows.iter().map(|r| r.event).collect();
    let persons = rows
        .iter()
        .map(|r| r.person)
        .collect::<std::collections::HashSet<i64>>()
        .len() as u64;
    Ok(SegmentMeta {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        project_id: 0,
        partition: 0,
        rows: rows.len() as u64,
        persons,
        min_timestamp_us: rows.iter().map(|r| r.timestamp_us).min().unwrap_or(0),
        max_timestamp_us: rows.iter().map(|r| r.timestamp_us).max().unwrap_or(0),
        events: events.into_iter().map(str::to_owned).collect(),
        properties: types,
        bytes,
    })
}

fn sync_parent(path: &Path) -> Result<(), EngineError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(format!("syncing directory {}", dir.display()), e))
}

/// Reads a segment's columns (`None`: all of them), in record batches of up to 64k rows.
pub fn read_segment(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, EngineError> {
    read_segment_selected(path, columns, None)
}

/// Like [`read_segment`], but only the rows at the given offsets of the file (sorted, no duplicates), in order:
/// the pages holding none of them are not decoded.
pub fn read_segment_rows(
    path: &Path,
    columns: Option<&[&str]>,
    rows: &[usize],
) -> Result<Vec<RecordBatch>, EngineError> {
    read_segment_selected(path, columns, Some(rows))
}

fn read_segment_selected(
    path: &Path,
    columns: Option<&[&str]>,
    rows: Option<&[usize]>,
) -> Result<Vec<RecordBatch>, EngineError> {
    use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
    use parquet::arrow::ProjectionMask;
    let file =
        File::open(path).map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| segment_error(path, e))?;
    if let Some(wanted) = columns {
        let schema = builder.schema().clone();
        let indices: Vec<usize> = wanted
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        builder = builder.with_projection(mask);
    }
    if let Some(rows) = rows {
        let total = builder.metadata().file_metadata().num_rows().max(0) as usize;
        if rows.windows(2).any(|w| w[0] >= w[1]) || rows.last().is_some_and(|&r| r >= total) {
            return Err(segment_error(
                path,
                "rows to read must be sorted, distinct offsets inside the file",
            ));
        }
        // Consecutive offsets as ranges.
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for &r in rows {
            match ranges.last_mut() {
                Some(last) if last.end == r => last.end += 1,
                _ => ranges.push(r..r + 1),
            }
        }
        builder = builder.with_row_selection(RowSelection::from_consecutive_ranges(
            ranges.into_iter(),
            total,
        ));
    }
    builder
        .with_batch_size(1 << 16)
        .build()
        .map_err(|e| segment_error(path, e))?
        .map(|b| b.map_err(|e| segment_error(path, e)))
        .collect()
}

/// The properties object of row `i` of a batch read with every column.
pub fn row_properties(batch: &RecordBatch, i: usize) -> Map<String, Value> {
    use arrow_array::cast::AsArray;
    let mut out = Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(key) = field.name().strip_prefix(PROPERTY_PREFIX) else {
            continue;
        };
        if column.is_null(i) {
            continue;
        }
        let value = match field.data_type() {
            DataType::Dictionary(_, _) => {
                let dict = column.as_dictionary::<Int32Type>();
                let values = dict.values().as_string::<i32>();
                Value::String(values.value(dict.keys().value(i) as usize).to_owned())
            }
            DataType::Float64 => {
                let x = column
                    .as_primitive::<arrow_array::types::Float64Type>()
                    .value(i);
                if x.fract() == 0.0 && x.abs() <= (1u64 << 53) as f64 {
                    Value::from(x as i64)
                } else {
                    Value::from(x)
                }
            }
            DataType::Boolean => Value::Bool(column.as_boolean().value(i)),
            _ => serde_json::from_str(column.as_string::<i32>().value(i)).unwrap_or(Value::Null),
        };
        out.insert(key.to_owned(), value);
    }
    out
}

/// The live segments of a directory, replaced as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Grows by one with every commit.
    pub generation: u64,
    /// Every intake-log record below this position is in the segments (the builder's checkpoint, committed
    /// with the segment set it describes).
    #[serde(default)]
    pub lsn: u64,
    pub segments: Vec<SegmentMeta>,
}

const MANIFEST: &str = "manifest.json";

impl Manifest {
    /// The manifest of `dir` (empty when there is none yet).
    pub fn load(dir: &Path) -> Result<Manifest, EngineError> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| segment_error(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(EngineError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Makes this the manifest of `dir` atomically (temporary file, sync, rename, directory sync), as the next
    /// generation.
    pub fn commit(&mut self, dir: &Path) -> Result<(), EngineError> {
        self.generation += 1;
        let path: PathBuf = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| segment_error(&path, e))?;
        let mut file = File::create(&tmp)
            .map_err(|e| EngineError::io(format!("creating {}", tmp.display()), e))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| EngineError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| EngineError::io(format!("renaming {} into place", tmp.display()), e))?;
        sync_parent(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;

    fn rows(props: &[&'static str]) -> Vec<SegmentRow<'static>> {
        props
            .iter()
            .enumerate()
            .map(|(i, p)| SegmentRow {
                person: (i % 3) as i64 + 1,
                timestamp_us: 1_000 - i as i64,
                event: ["signup", "pageview"][i % 2],
                distinct_id: ["a", "b", "c"][i % 3],
                uuid: i as u128 + 100,
                properties: p,
            })
            .collect()
    }

    #[test]
    fn properties_round_trip_and_rows_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s1.parquet");
        let props = [
            r#"{"$current_url": "https://x.io/a", "plan": "pro", "n": 3, "ok": true}"#,
            r#"{"plan": "free", "n": 2.5, "nested": {"a": [1, "x"]}, "a.b": "dots"}"#,
            r#"{"mixed": 1, "explicit": null}"#,
            r#"{"mixed": "one", "big": 12345678901234567890}"#,
            r#"{}"#,
        ];
        let mut input = rows(&props);
        input.sort_by_key(|r| (r.person, r.timestamp_us)); // the caller's order (the engine's sorted views)
        let meta = write_segment(&path, &mut input).unwrap();
        assert_eq!(meta.rows, 5);
        assert_eq!(meta.persons, 3);
        assert_eq!(meta.events, ["pageview", "signup"]);
        assert_eq!(meta.properties["plan"], PropertyType::String);
        assert_eq!(meta.properties["n"], PropertyType::Number);
        assert_eq!(meta.properties["ok"], PropertyType::Bool);
        assert_eq!(meta.properties["mixed"], PropertyType::Json, "two types");
        assert_eq!(meta.properties["explicit"], PropertyType::Json);
        assert_eq!(
            meta.properties["big"],
            PropertyType::Json,
            "not exact as f64"
        );
        assert!(!dir.path().join("s1.parquet.tmp").exists());

        let batches = read_segment(&path, None).unwrap();
        let batch = &batches[0];
        assert_eq!(batch.num_rows(), 5);
        // Sorted by (person, time): person 1 holds rows 0 and 3 (times 1000 and 997).
        let persons = batch
            .column(0)
            .as_primitive::<arrow_array::types::Int64Type>();
        let times = batch
            .column(1)
            .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        let order: Vec<(u8, i64)> = (0..5)
            .map(|i| (persons.value(i) as u8, times.value(i)))
            .collect();
        assert_eq!(order, [(1, 997), (1, 1000), (2, 996), (2, 999), (3, 998)]);
        let high = batch
            .column(4)
            .as_primitive::<arrow_array::types::Int64Type>();
        let low = batch
            .column(5)
            .as_primitive::<arrow_array::types::Int64Type>();
        for i in 0..5 {
            let uuid = (u128::from(high.value(i) as u64) << 64) | u128::from(low.value(i) as u64);
            let original: Value = serde_json::from_str(props[(uuid - 100) as usize]).unwrap();
            assert_eq!(Value::Object(row_properties(batch, i)), original, "row {i}");
        }
    }

    #[test]
    fn projection_reads_only_the_asked_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        write_segment(
            &path,
            &mut rows(&[r#"{"plan": "pro"}"#, r#"{"plan": "free"}"#]),
        )
        .unwrap();
        let batches = read_segment(&path, Some(&["timestamp", "p:plan", "p:absent"])).unwrap();
        let names: Vec<String> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["timestamp", "p:plan"]);
    }

    #[test]
    fn selected_rows_are_read_in_order_and_bad_selections_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let props: Vec<String> = (0..5).map(|i| format!(r#"{{"i": {i}}}"#)).collect();
        let refs: Vec<&'static str> = props
            .iter()
            .map(|p| &*Box::leak(p.clone().into_boxed_str()))
            .collect();
        write_segment(&path, &mut rows(&refs)).unwrap();
        let all = read_segment(&path, None).unwrap();
        let some = read_segment_rows(&path, None, &[0, 2, 3]).unwrap();
        let got: Vec<Map<String, Value>> = some
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| row_properties(b, i)))
            .collect();
        let want: Vec<Map<String, Value>> = [0, 2, 3]
            .iter()
            .map(|&i| row_properties(&all[0], i))
            .collect();
        assert_eq!(got, want);
        assert!(read_segment_rows(&path, None, &[3, 1]).is_err(), "unsorted");
        assert!(
            read_segment_rows(&path, None, &[5]).is_err(),
            "past the end"
        );
    }

    #[test]
    fn bad_properties_leave_no_file_and_say_which_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        let err = write_segment(&path, &mut rows(&[r#"{"a": 1}"#, "[1, 2]"])).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        let garbage = dir.path().join("garbage.parquet");
        std::fs::write(&garbage, b"not parquet").unwrap();
        assert!(read_segment(&garbage, None).is_err());
    }

    #[test]
    fn manifest_commits_replace_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Manifest::default());
        let mut m = Manifest::default();
        let meta = write_segment(&dir.path().join("a.parquet"), &mut rows(&["{}"])).unwrap();
        m.segments.push(meta);
        m.commit(dir.path()).unwrap();
        let loaded = Manifest::load(dir.path()).unwrap();
        assert_eq!(loaded.generation, 1);
        assert_eq!(loaded, m);
        m.segments.clear();
        m.commit(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().generation, 2);
        assert!(!dir.path().join("manifest.json.tmp").exists());
        std::fs::write(dir.path().join("manifest.json"), b"{broken").unwrap();
        assert!(
            Manifest::load(dir.path()).is_err(),
            "a damaged manifest is an error, not an empty set"
        );
    }
}
