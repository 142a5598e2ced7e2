//! Probe: bytes per event of generated events in Arrow IPC (LZ4) and Parquet, raw JSON properties vs shredded.
use arrow_array::builder::{Float64Builder, StringBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;

struct Ev { ts: i64, event: String, did: String, uuid: u128, props: String }

fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let (intake, _) = flywheel_engine::Intake::open(flywheel_engine::IntakeConfig::new(format!("{dir}/events/wal"))).unwrap();
    let mut r = intake.reader(0);
    let mut evs = Vec::new();
    while let Some(item) = r.next_payload() {
        let (_, payload) = item.unwrap();
        let b = flywheel_engine::BatchRef::new(payload).unwrap();
        for e in b.iter() {
            let e = e.unwrap();
            evs.push(Ev { ts: e.timestamp_us, event: e.event.to_owned(), did: e.distinct_id.to_owned(), uuid: e.uuid, props: e.properties.to_owned() });
        }
    }
    // Sort by (distinct id, time) as a stand-in for (person, time).
    evs.sort_by(|a, b| (&a.did, a.ts).cmp(&(&b.did, b.ts)));
    let n = evs.len();
    let raw: usize = evs.iter().map(|e| e.props.len() + e.event.len() + e.did.len() + 24).sum();
    println!("events {n}, raw bytes/event {:.1}", raw as f64 / n as f64);

    // Base columns.
    let ts: ArrayRef = Arc::new(Int64Array::from(evs.iter().map(|e| e.ts).collect::<Vec<_>>()));
    let mut evb = StringDictionaryBuilder::<Int32Type>::new();
    let mut didb = StringDictionaryBuilder::<Int32Type>::new();
    for e in &evs { evb.append_value(&e.event); didb.append_value(&e.did); }
    let uuid: ArrayRef = Arc::new(arrow_array::FixedSizeBinaryArray::try_from_iter(evs.iter().map(|e| e.uuid.to_be_bytes())).unwrap());
    let base_fields = vec![
        Field::new("timestamp", DataType::Int64, false),
        Field::new("event", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
        Field::new("distinct_id", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), false),
        Field::new("uuid", DataType::FixedSizeBinary(16), false),
    ];
    let base_cols: Vec<ArrayRef> = vec![ts, Arc::new(evb.finish()), Arc::new(didb.finish()), uuid];

    // (a) raw JSON properties.
    let mut pb = StringBuilder::new();
    for e in &evs { pb.append_value(&e.props); }
    let mut fa = base_fields.clone(); fa.push(Field::new("properties", DataType::Utf8, false));
    let mut ca = base_cols.clone(); ca.push(Arc::new(pb.finish()));
    let a = RecordBatch::try_new(Arc::new(Schema::new(fa)), ca).unwrap();

    // (b) shredded top-level properties: strings as dictionaries, numbers as f64, the rest as JSON text.
    let parsed: Vec<serde_json::Map<String, serde_json::Value>> = evs.iter().map(|e| serde_json::from_str(&e.props).unwrap()).collect();
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for p in &parsed { for k in p.keys() { *keys.entry(k.clone()).or_default() += 1; } }
    let mut fb = base_fields.clone(); let mut cb = base_cols.clone();
    for (k, _) in &keys {
        let numeric = parsed.iter().all(|p| p.get(k).map_or(true, |v| v.is_number() || v.is_null()));
        if numeric {
            let mut b = Float64Builder::new();
            for p in &parsed { match p.get(k).and_then(|v| v.as_f64()) { Some(x) => b.append_value(x), None => b.append_null() } }
            fb.push(Field::new(k, DataType::Float64, true)); cb.push(Arc::new(b.finish()));
        } else {
            let mut b = StringDictionaryBuilder::<Int32Type>::new();
            for p in &parsed { match p.get(k) { Some(serde_json::Value::String(s)) => b.append_value(s), Some(v) => b.append_value(v.to_string()), None => b.append_null() } }
            fb.push(Field::new(k, DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true)); cb.push(Arc::new(b.finish()));
        }
    }
    let b = RecordBatch::try_new(Arc::new(Schema::new(fb)), cb).unwrap();
    println!("{} property keys", keys.len());

    for (name, batch) in [("raw-json", &a), ("shredded", &b)] {
        // IPC with LZ4 frames, in 64k-row batches.
        let opts = arrow_ipc::writer::IpcWriteOptions::default().try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME)).unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(&mut buf, &batch.schema(), opts).unwrap();
            let mut off = 0;
            while off < n { let len = (n - off).min(65536); w.write(&batch.slice(off, len)).unwrap(); off += len; }
            w.finish().unwrap();
        }
        println!("{name:9} ipc+lz4   {:6.1} bytes/event", buf.len() as f64 / n as f64);
        for codec in [parquet::basic::Compression::LZ4_RAW, parquet::basic::Compression::SNAPPY] {
            let props = parquet::file::properties::WriterProperties::builder().set_compression(codec).set_max_row_group_size(1 << 20).build();
            let mut out = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
            w.write(batch).unwrap();
            w.close().unwrap();
            println!("{name:9} parquet {codec:?} {:6.1} bytes/event", out.len() as f64 / n as f64);
        }
    }
}
