//! DMS Parquet source: event fixtures, the conformance data in `../shared/conformance/dms/`
//! (a file written by AWS DMS itself, and generated LOAD/CDC fixtures with their expected final
//! rows), bad files written here with the parquet writer, and the `ingest-dms` handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fhir_unify::config::PipelineConfig;
use fhir_unify::env::{IngestEnv, Workflow, WorkflowError, WorkflowRun};
use fhir_unify::handlers::HandlerError;
use fhir_unify::handlers::ingest_dms::{self, FLUSH_CHANGES};
use fhir_unify::model::{ChangeBatch, Op, Rejection, Sequence, SourceChange, Stage};
use fhir_unify::objects::{LocalBuckets, ObjectStore};
use fhir_unify::sources::dms::file::DmsFile;
use fhir_unify::sources::dms::write::{Cell, WriteOptions, write_file};
use fhir_unify::sources::dms::{
    Decoded, DmsBinding, DmsPath, ObjectReport, event, objects_created, read_object,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// helpers

/// `../shared` next to the project, or `FHIR_UNIFY_SHARED_DIR`; fails loudly when absent.
fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dms = dir.join("conformance/dms");
    assert!(
        dms.is_dir(),
        "the DMS conformance data is missing: expected the folder {} (set FHIR_UNIFY_SHARED_DIR to the shared/ folder)",
        dms.display()
    );
    dir
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    // Round trip: what is read serializes back to the same event.
    let back: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
    assert_eq!(back, v);
    v
}

fn binding(key: &[&str]) -> DmsBinding {
    DmsBinding {
        source: "clinic".into(),
        entity: "patients".into(),
        key: key.iter().map(|k| (*k).to_owned()).collect(),
        timestamp_column: "DMS_TIMESTAMP".into(),
    }
}

/// Reads one object of a local bucket, collecting what it yields.
fn read(
    root: &Path,
    key: &str,
    prefix: &str,
    binding: DmsBinding,
) -> (Vec<SourceChange>, Vec<Rejection>, ObjectReport) {
    let store = LocalBuckets::new().with_bucket("b", root).shared();
    let path = DmsPath::parse(key, prefix).unwrap();
    let mut changes = Vec::new();
    let mut rejected = Vec::new();
    let report = read_object(
        store,
        "b",
        prefix,
        path,
        binding,
        Utc::now(),
        &mut |d| match d {
            Decoded::Change(c) => changes.push(c),
            Decoded::Rejected(r) => rejected.push(r),
        },
    )
    .unwrap();
    (changes, rejected, report)
}

fn diagnostics(r: &Rejection) -> String {
    r.outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} @ {}",
                i["diagnostics"].as_str().unwrap_or(""),
                i["expression"][0].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

const SMALL: &str = "
message t {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Op (STRING);
  optional int64 id;
  optional binary name (STRING);
}";

fn small_row(ts: &str, op: Option<&str>, id: Option<i64>, name: &str) -> Vec<Cell> {
    vec![
        ts.into(),
        op.map_or(Cell::Null, Cell::from),
        id.map_or(Cell::Null, Cell::Int),
        name.into(),
    ]
}

// ---------------------------------------------------------------------------------------------
// events

#[test]
fn s3_notification_fixtures() {
    let put = objects_created(&fixture("s3-dms-load-put.json")).unwrap();
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].bucket, "landing");
    assert_eq!(
        put[0].key,
        "dms/clinic/public/patients/LOAD00000001.parquet"
    );
    assert_eq!(put[0].size, Some(10349));
    assert_eq!(
        put[0].version_id.as_deref(),
        Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
    );
    assert_eq!(
        put[0].event_time.unwrap().to_rfc3339(),
        "2024-04-27T01:53:35.123+00:00"
    );

    // Form-URL-encoded key (`+` a space, `%2B` a plus, `%2F` a slash); the removal is skipped.
    let cdc = objects_created(&fixture("s3-dms-cdc-encoded-key.json")).unwrap();
    assert_eq!(cdc.len(), 1);
    assert_eq!(
        cdc[0].key,
        "dms/clinic/public/lab results+v2/2024/04/27/20240427-015534228.parquet"
    );
    assert!(cdc[0].raw_key.contains("lab+results%2Bv2"));
    let p = DmsPath::parse(&cdc[0].key, "dms/clinic").unwrap();
    assert_eq!(p.table, "lab results+v2");
    assert_eq!(p.partition.as_deref(), Some("2024/04/27"));

    assert!(
        objects_created(&fixture("s3-test-event.json"))
            .unwrap()
            .is_empty()
    );
    // Via SQS: the body is the notification as a string; the test event in it yields nothing.
    let sqs = objects_created(&fixture("s3-sqs-envelope.json")).unwrap();
    assert_eq!(sqs.len(), 1);
    assert_eq!(
        sqs[0].key,
        "dms/clinic/public/patients/20240427-015434015.parquet"
    );
}

#[test]
fn eventbridge_fixtures() {
    let created = objects_created(&fixture("eventbridge-s3-object-created.json")).unwrap();
    assert_eq!(created.len(), 1);
    let o = &created[0];
    assert_eq!(o.bucket, "landing");
    assert_eq!(
        o.key,
        "dms/clinic/public/patients/20240427-015434015.parquet"
    );
    assert_eq!(o.size, Some(8575));
    assert_eq!(
        o.version_id.as_deref(),
        Some("Kpnv0qGbHqWKHcm.cNvRYC7UNM6qDNEh")
    );
    assert_eq!(
        o.event_time.unwrap().to_rfc3339(),
        "2024-04-27T01:54:35+00:00"
    );
    assert!(
        objects_created(&fixture("eventbridge-s3-object-deleted.json"))
            .unwrap()
            .is_empty()
    );
    // Whether EventBridge encodes keys is not documented: the key is decoded, and the key as
    // received is kept for the reader's fallback.
    let plus = objects_created(&fixture(
        "eventbridge-s3-object-created-plain-plus-key.json",
    ))
    .unwrap();
    assert_eq!(
        plus[0].key,
        "dms/clinic/public/c  notes/LOAD00000001.parquet"
    );
    assert_eq!(
        plus[0].raw_key,
        "dms/clinic/public/c++notes/LOAD00000001.parquet"
    );
}

// ---------------------------------------------------------------------------------------------
// the columnar reader

/// Decodes `key` under `root` column by column and through parquet's row reader; asserts the
/// outcomes are the same, and returns how many there were.
fn columnar_as_row_reader(root: &Path, key: &str) -> usize {
    let store = LocalBuckets::new().with_bucket("b", root).shared();
    let path = DmsPath::parse(key, "").unwrap();
    let open = || DmsFile::open(store.clone(), "b", path.clone(), binding(&[])).unwrap();
    let at = Utc::now();
    let mut columnar = Vec::new();
    open().read(None, at, &mut |d| columnar.push(d));
    let mut rows = Vec::new();
    open()
        .through_row_reader()
        .read(None, at, &mut |d| rows.push(d));
    assert_eq!(columnar.len(), rows.len(), "{key}");
    for (n, (c, r)) in columnar.iter().zip(&rows).enumerate() {
        assert_eq!(c, r, "{key}: outcome {n}");
    }
    columnar.len()
}

#[test]
fn flat_files_read_column_by_column_decode_exactly_as_through_the_row_reader() {
    // Every conformance file: AWS DMS's own (every type it wrote), the generated LOAD and CDC
    // files.
    let shared = shared_dir().join("conformance/dms");
    let tmp = tempfile::tempdir().unwrap();
    let real = "public/dms_test_table/LOAD00000001.parquet";
    std::fs::create_dir_all(tmp.path().join("public/dms_test_table")).unwrap();
    std::fs::copy(
        shared.join("real_aws_dms_postgres_LOAD00000001.parquet"),
        tmp.path().join(real),
    )
    .unwrap();
    assert_eq!(columnar_as_row_reader(tmp.path(), real), 10);
    let generated = shared.join("generated");
    let mut keys = Vec::new();
    let mut stack = vec![generated.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                keys.push(
                    p.strip_prefix(&generated)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        assert!(columnar_as_row_reader(&generated, key) > 0, "{key}");
    }
    // Several row groups, each several batches with a partial last one, nulls among values.
    let many = "public/patients/LOAD00000001.parquet";
    let rows: Vec<Vec<Cell>> = (0..2_600)
        .map(|i| fhir_unify::sources::dms::write::patient_row(i, 1_714_182_814_000_000 + i as i64))
        .collect();
    let options = WriteOptions {
        row_group_rows: 1_100,
        ..WriteOptions::default()
    };
    write_file(
        &tmp.path().join(many),
        fhir_unify::sources::dms::write::PATIENTS_SCHEMA,
        &rows,
        options,
    )
    .unwrap();
    assert_eq!(columnar_as_row_reader(tmp.path(), many), 2_600);
}

// ---------------------------------------------------------------------------------------------
// conformance: a file written by AWS DMS itself

#[test]
fn the_real_aws_dms_file_decodes_with_every_type() {
    let dir = shared_dir().join("conformance/dms");
    // The file sits at the top of the folder; give it a table folder by serving it from a
    // temporary bucket laid out like DMS's.
    let tmp = tempfile::tempdir().unwrap();
    let key = "public/dms_test_table/LOAD00000001.parquet";
    std::fs::create_dir_all(tmp.path().join("public/dms_test_table")).unwrap();
    std::fs::copy(
        dir.join("real_aws_dms_postgres_LOAD00000001.parquet"),
        tmp.path().join(key),
    )
    .unwrap();
    let (changes, rejected, report) = read(tmp.path(), key, "", binding(&["id"]));
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(report.rows, 10);
    assert!(report.full_load);
    assert_eq!(changes.len(), 10);

    // Independent check: the footer's statistics (written by DMS) bound the decoded values.
    let file = std::fs::File::open(tmp.path().join(key)).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let rg = reader.metadata().row_group(0);
    let col = |name: &str| {
        rg.columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap()
            .statistics()
            .unwrap()
            .clone()
    };
    use parquet::file::statistics::Statistics;
    let ints = |name: &str| -> Vec<i64> {
        changes
            .iter()
            .map(|c| c.data[name].as_i64().unwrap())
            .collect()
    };
    match col("id") {
        Statistics::Int64(s) => {
            let ids = ints("id");
            assert_eq!(ids.iter().min(), s.min_opt());
            assert_eq!(ids.iter().max(), s.max_opt());
            assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        }
        s => panic!("id statistics {s:?}"),
    }
    match col("my_int") {
        Statistics::Int32(s) => {
            let v = ints("my_int");
            assert_eq!(v.iter().min().copied(), s.min_opt().map(|m| i64::from(*m)));
            assert_eq!(v.iter().max().copied(), s.max_opt().map(|m| i64::from(*m)));
        }
        s => panic!("my_int statistics {s:?}"),
    }
    match col("my_timestamp") {
        Statistics::Int64(s) => {
            let millis: Vec<i64> = changes
                .iter()
                .map(|c| {
                    let t = c.data["my_timestamp"].as_str().unwrap();
                    assert!(t.ends_with('Z'), "UTC-adjusted timestamp {t}");
                    DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()
                })
                .collect();
            assert_eq!(millis.iter().min(), s.min_opt());
            assert_eq!(millis.iter().max(), s.max_opt());
        }
        s => panic!("my_timestamp statistics {s:?}"),
    }
    match col("DMS_TIMESTAMP") {
        Statistics::ByteArray(s) => {
            let min = std::str::from_utf8(s.min_opt().unwrap().data()).unwrap();
            let max = std::str::from_utf8(s.max_opt().unwrap().data()).unwrap();
            let first = changes.iter().map(|c| c.observed_at).min().unwrap();
            let last = changes.iter().map(|c| c.observed_at).max().unwrap();
            assert_eq!(first.format("%Y-%m-%d %H:%M:%S%.6f").to_string(), min);
            assert_eq!(last.format("%Y-%m-%d %H:%M:%S%.6f").to_string(), max);
        }
        s => panic!("DMS_TIMESTAMP statistics {s:?}"),
    }
    for c in &changes {
        assert_eq!(c.op, Op::Upsert, "no Op column on a full load: inserts");
        assert_eq!(c.key.0["id"], c.data["id"]);
        // The DMS columns are not data.
        assert!(c.data.get("DMS_TIMESTAMP").is_none());
        let d = c.data.as_json().and_then(|v| v.as_object()).unwrap();
        assert_eq!(d.len(), 15, "{d:?}");
        assert!(d["my_bool"].is_boolean());
        assert!(d["my_double"].is_f64() && d["my_real"].is_f64());
        let small = d["my_smallint"].as_i64().unwrap();
        assert!((i64::from(i16::MIN)..=i64::from(i16::MAX)).contains(&small));
        // Fixed-length decimals with scale 2: exact numbers with at most 2 decimals.
        for money in ["my_money", "my_numeric"] {
            let text = d[money].to_string();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(d[money].is_number() && decimals <= 2, "{money} {text}");
        }
        // uuid and json columns are strings DMS wrote as text.
        let uuid = d["my_uuid"].as_str().unwrap();
        assert_eq!(uuid.len(), 36);
        assert!(uuid::Uuid::parse_str(uuid).is_ok());
        for j in ["my_json", "my_jsonb"] {
            assert!(
                serde_json::from_str::<Value>(d[j].as_str().unwrap())
                    .unwrap()
                    .is_object()
            );
        }
        // bytea: base64 of the bytes.
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["my_bytea"].as_str().unwrap())
            .unwrap();
        assert!(!bytes.is_empty());
        assert!(d["my_text"].is_string() && d["my_varchar"].is_string());
    }
    // Sequences follow the file order (timestamps rise with the rows here).
    let seqs: Vec<&Sequence> = changes.iter().map(|c| &c.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

// ---------------------------------------------------------------------------------------------
// conformance: generated LOAD/CDC fixtures with their expected final rows

/// A minimal RFC 4180 reader (quoted fields, doubled quotes, commas and newlines in quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// Whether a decoded value is the expected CSV text: same string, same number, same instant.
fn same(expected: &str, got: &Value) -> bool {
    match got {
        Value::Null => expected.is_empty(),
        Value::String(s) if s == expected => true,
        Value::String(s) => {
            let instant = |t: &str| {
                DateTime::parse_from_rfc3339(t)
                    .ok()
                    .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%:z").ok())
            };
            matches!((instant(s), instant(expected)), (Some(a), Some(b)) if a == b)
        }
        Value::Number(n) => expected.parse::<f64>().is_ok_and(|e| n.as_f64() == Some(e)),
        Value::Bool(b) => expected.eq_ignore_ascii_case(&b.to_string()),
        _ => false,
    }
}

#[test]
fn generated_load_and_cdc_fixtures_reach_their_expected_final_rows() {
    let root = shared_dir().join("conformance/dms/generated");
    let store = LocalBuckets::new().with_bucket("g", &root).shared();
    let mut tables = 0;
    for schema_dir in std::fs::read_dir(&root).unwrap() {
        let schema_dir = schema_dir.unwrap().path();
        for table_dir in std::fs::read_dir(&schema_dir).unwrap() {
            let table_dir = table_dir.unwrap().path();
            let meta_path = table_dir.join("_fixture.json");
            if !meta_path.is_file() {
                continue;
            }
            tables += 1;
            let meta: Value =
                serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
            let schema = meta["schema"].as_str().unwrap();
            let table = meta["table"].as_str().unwrap();
            let pk = meta["pk"].as_str().unwrap();
            let ts_col = meta["settings"]["ts_col"].as_str().unwrap();

            // Every file of the table, in the order DMS wrote them — as the fixture lists them.
            let listed = store.list("g", &format!("{schema}/{table}/")).unwrap();
            let mut paths: Vec<DmsPath> = listed
                .iter()
                .filter_map(|m| DmsPath::parse(&m.key, "").ok())
                .collect();
            paths.sort();
            let expected_files: Vec<String> = meta["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| format!("{schema}/{table}/{}", f["file"].as_str().unwrap()))
                .collect();
            let got_files: Vec<&str> = paths.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(got_files, expected_files, "{table}: file order");

            // Apply every change; an older sequence never overwrites a newer one.
            let mut state: HashMap<String, (Sequence, Option<Value>)> = HashMap::new();
            let mut ops: BTreeMap<String, usize> = BTreeMap::new();
            for (path, f) in paths.into_iter().zip(meta["files"].as_array().unwrap()) {
                let b = DmsBinding {
                    source: "synthea".into(),
                    entity: table.into(),
                    key: vec![pk.to_owned()],
                    timestamp_column: ts_col.into(),
                };
                let key = path.key.clone();
                let mut rows = 0u64;
                let mut rejected = Vec::new();
                let report = read_object(store.clone(), "g", "", path, b, Utc::now(), &mut |d| {
                    rows += 1;
                    match d {
                        Decoded::Change(c) => {
                            *ops.entry(format!("{:?}", c.op)).or_default() += 1;
                            let id = c.key.0[pk].as_str().unwrap().to_owned();
                            let newer = state.get(&id).is_none_or(|(s, _)| *s < c.sequence);
                            if newer {
                                let data = (c.op == Op::Upsert).then_some(c.data.into_value());
                                state.insert(id, (c.sequence, data));
                            }
                        }
                        Decoded::Rejected(r) => rejected.push(r),
                    }
                })
                .unwrap();
                assert!(rejected.is_empty(), "{key}: {rejected:?}");
                assert_eq!(report.rows, f["rows"].as_u64().unwrap(), "{key}");
                assert_eq!(rows, report.rows, "{key}");
            }

            let expected =
                parse_csv(&std::fs::read_to_string(table_dir.join("_expected_final.csv")).unwrap());
            let header = &expected[0];
            let id_col = header.iter().position(|h| h == pk).unwrap();
            let live: BTreeMap<&String, &Value> = state
                .iter()
                .filter_map(|(k, (_, d))| d.as_ref().map(|d| (k, d)))
                .collect();
            assert_eq!(
                live.len(),
                meta["final_rows"].as_u64().unwrap() as usize,
                "{table}: live rows"
            );
            assert_eq!(live.len(), expected.len() - 1, "{table}");
            for row in &expected[1..] {
                let got = live
                    .get(&row[id_col])
                    .unwrap_or_else(|| panic!("{table}: {} missing", row[id_col]));
                for (h, want) in header.iter().zip(row) {
                    assert!(
                        same(want, &got[h]),
                        "{table} {} column {h}: expected {want:?}, decoded {}",
                        row[id_col],
                        got[h]
                    );
                }
            }
            // The CDC log's deletes are gone, its inserts and updates present.
            for entry in meta["cdc_log"].as_array().unwrap() {
                let k = entry["key"].as_str().unwrap();
                let live_now = live.contains_key(&k.to_owned());
                let deleted_later = meta["cdc_log"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["key"] == entry["key"] && e["op"] == "D");
                assert_eq!(live_now, !deleted_later, "{table} {k}");
            }
        }
    }
    assert!(
        tables >= 2,
        "no generated fixture found under {}",
        root.display()
    );
}

// ---------------------------------------------------------------------------------------------
// bad input

#[test]
fn a_truncated_file_is_one_rejection_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<Cell>> = (0..50)
        .map(|i| small_row("2024-04-27 01:53:34.000001", Some("I"), Some(i), "n"))
        .collect();
    let full = dir.path().join("s/t/LOAD00000001.parquet");
    write_file(&full, SMALL, &rows, WriteOptions::default()).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&full, &bytes[..bytes.len() / 2]).unwrap();
    let (changes, rejected, report) =
        read(dir.path(), "s/t/LOAD00000001.parquet", "", binding(&["id"]));
    assert!(changes.is_empty());
    assert_eq!(rejected.len(), 1);
    assert_eq!(report.rejected, 1);
    let r = &rejected[0];
    assert_eq!(r.stage, Stage::Ingest);
    assert!(
        r.record.contains("s3://b/s/t/LOAD00000001.parquet"),
        "{}",
        r.record
    );
    assert_eq!(
        r.raw.as_ref().unwrap()["file"],
        "s3://b/s/t/LOAD00000001.parquet"
    );
    assert!(
        diagnostics(r).contains("not a readable Parquet file"),
        "{}",
        diagnostics(r)
    );

    // Not Parquet at all, and an empty file.
    std::fs::write(&full, b"Id,Name\n1,Ada\n").unwrap();
    let (_, rejected, _) = read(dir.path(), "s/t/LOAD00000001.parquet", "", binding(&["id"]));
    assert_eq!(rejected.len(), 1);
    std::fs::write(&full, b"").unwrap();
    let (_, rejected, _) = read(dir.path(), "s/t/LOAD00000001.parquet", "", binding(&["id"]));
    assert_eq!(rejected.len(), 1);
}

#[test]
fn a_corrupt_row_group_is_rejected_by_row_range_and_the_next_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<Cell>> = (1..=30)
        .map(|i| small_row("2024-04-27 01:53:34.000001", Some("I"), Some(i), "name"))
        .collect();
    let path = dir.path().join("s/t/LOAD00000001.parquet");
    let options = WriteOptions {
        row_group_rows: 10,
        compression: parquet::basic::Compression::SNAPPY,
    };
    write_file(&path, SMALL, &rows, options).unwrap();
    // Overwrite the start of the second row group's first column chunk (its page header).
    let file = std::fs::File::open(&path).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let (start, _) = reader.metadata().row_group(1).column(0).byte_range();
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[start as usize..start as usize + 24] {
        *b = 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let (changes, rejected, report) =
        read(dir.path(), "s/t/LOAD00000001.parquet", "", binding(&["id"]));
    let ids: Vec<i64> = changes
        .iter()
        .map(|c| c.key.0["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=10).chain(21..=30).collect::<Vec<_>>());
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = &rejected[0];
    assert!(
        r.record.contains("rows 11-20 (row group 1)"),
        "{}",
        r.record
    );
    assert_eq!(r.raw.as_ref().unwrap()["firstRow"], 11);
    assert_eq!(r.raw.as_ref().unwrap()["lastRow"], 20);
    assert_eq!((report.changes, report.rejected), (20, 1));
}

#[test]
fn unknown_op_null_key_and_bad_timestamp_reject_only_their_row() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        small_row("2024-04-27 01:54:34.000001", Some("I"), Some(1), "a"),
        small_row("2024-04-27 01:54:34.000002", Some("X"), Some(2), "b"),
        small_row("2024-04-27 01:54:34.000003", Some("U"), None, "c"),
        small_row("yesterday", Some("U"), Some(4), "d"),
        small_row("2024-04-27 01:54:34.000005", None, Some(5), "e"),
        small_row("2024-04-27 01:54:34.000006", Some("D"), Some(1), ""),
    ];
    let key = "s/t/20240427-015434214.parquet";
    write_file(&dir.path().join(key), SMALL, &rows, WriteOptions::default()).unwrap();
    let (changes, rejected, _) = read(dir.path(), key, "", binding(&["id"]));
    let got: Vec<(i64, Op)> = changes
        .iter()
        .map(|c| (c.key.0["id"].as_i64().unwrap(), c.op))
        .collect();
    assert_eq!(got, [(1, Op::Upsert), (1, Op::Delete)]);
    assert_eq!(rejected.len(), 4);
    let text: Vec<String> = rejected.iter().map(diagnostics).collect();
    assert!(
        text[0].contains("unknown Op \"X\"") && text[0].contains("row 2 column Op"),
        "{}",
        text[0]
    );
    assert!(
        text[1].contains("key column \"id\" is null") && text[1].contains("row 3 column id"),
        "{}",
        text[1]
    );
    assert!(
        text[2].contains("DMS_TIMESTAMP is not a timestamp") && text[2].contains("row 4"),
        "{}",
        text[2]
    );
    assert!(
        text[3].contains("Op is null") && text[3].contains("row 5"),
        "{}",
        text[3]
    );
    for r in &rejected {
        assert_eq!(r.stage, Stage::Ingest);
        assert!(r.record.contains(key), "{}", r.record);
        let raw = r.raw.as_ref().unwrap();
        assert_eq!(raw["file"], format!("s3://b/{key}"));
        // The row is kept whole so it can be replayed after a fix.
        assert!(raw["data"]["name"].is_string());
    }
    // The delete of row 6 comes after the insert of row 1: (timestamp, file, row) order.
    assert!(changes[0].sequence < changes[1].sequence);
}

#[test]
fn a_schema_change_rejects_the_rows_of_the_file_that_brings_it() {
    let dir = tempfile::tempdir().unwrap();
    let load = "s/t/LOAD00000001.parquet";
    write_file(
        &dir.path().join(load),
        SMALL,
        &[small_row(
            "2024-04-27 01:53:34.000001",
            Some("I"),
            Some(1),
            "a",
        )],
        WriteOptions::default(),
    )
    .unwrap();
    // A column added: accepted (DMS after ALTER TABLE … ADD COLUMN).
    let added = "s/t/20240427-015434214.parquet";
    let with_extra = SMALL.replace("}", "  optional int32 extra;\n}");
    write_file(
        &dir.path().join(added),
        &with_extra,
        &[vec![
            "2024-04-27 01:54:34.000001".into(),
            "U".into(),
            Cell::Int(1),
            "b".into(),
            Cell::Int(7),
        ]],
        WriteOptions::default(),
    )
    .unwrap();
    let (changes, rejected, _) = read(dir.path(), added, "", binding(&["id"]));
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(changes[0].data["extra"], 7);

    // The key's type changed (int64 → string) and `extra` was dropped: every row is refused,
    // with the change (decoded, to replay after checking the mapping) and the reason.
    let changed = "s/t/20240427-015534228.parquet";
    let schema = "
message t {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Op (STRING);
  optional binary id (STRING);
  optional binary name (STRING);
}";
    write_file(
        &dir.path().join(changed),
        schema,
        &[
            vec![
                "2024-04-27 01:55:34.000001".into(),
                "U".into(),
                "1".into(),
                "c".into(),
            ],
            vec![
                "2024-04-27 01:55:34.000002".into(),
                "I".into(),
                "2".into(),
                "d".into(),
            ],
        ],
        WriteOptions::default(),
    )
    .unwrap();
    let (changes, rejected, report) = read(dir.path(), changed, "", binding(&["id"]));
    assert!(changes.is_empty());
    assert_eq!((report.rows, report.rejected), (2, 2));
    for (i, r) in rejected.iter().enumerate() {
        let d = diagnostics(r);
        assert!(d.contains(added), "{d}");
        assert!(d.contains("column \"id\" changed from INT64"), "{d}");
        assert!(d.contains("column \"extra\" was removed"), "{d}");
        assert!(d.contains(&format!("{changed} row {}", i + 1)), "{d}");
        assert!(r.change.is_some(), "the decoded change is kept for replay");
    }
}

#[test]
fn a_missing_key_column_refuses_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = "s/t/LOAD00000001.parquet";
    write_file(
        &dir.path().join(key),
        SMALL,
        &[small_row("2024-04-27 01:53:34.000001", None, Some(1), "a")],
        WriteOptions::default(),
    )
    .unwrap();
    let (changes, rejected, _) = read(dir.path(), key, "", binding(&["patient_id"]));
    assert!(changes.is_empty());
    assert_eq!(rejected.len(), 1);
    assert!(diagnostics(&rejected[0]).contains("key column \"patient_id\""));
}

#[test]
fn types_dms_writes_round_trip_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let schema = "
message t {
  required binary DMS_TIMESTAMP (STRING);
  required int64 id;
  optional int32 tiny (INTEGER(8,true));
  optional int32 small (INTEGER(16,true));
  optional int32 u16 (INTEGER(16,false));
  optional int64 u64 (INTEGER(64,false));
  optional int32 d32 (DECIMAL(9,2));
  optional int64 d64 (DECIMAL(18,4));
  optional fixed_len_byte_array(16) d128 (DECIMAL(38,10));
  optional binary dvar (DECIMAL(30,3));
  optional int32 day (DATE);
  optional int32 t_ms (TIME(MILLIS,true));
  optional int64 t_us (TIME(MICROS,true));
  optional int64 ts_ms (TIMESTAMP(MILLIS,true));
  optional int64 ts_us_local (TIMESTAMP(MICROS,false));
  optional boolean flag;
  optional float r4;
  optional double r8;
  optional binary blob;
  optional fixed_len_byte_array(16) u (UUID);
}";
    let row = vec![
        "2024-04-27 01:53:34.123456".into(),
        Cell::Int(1),
        Cell::Int(-8),
        Cell::Int(-300),
        Cell::Int(65_535),
        Cell::Int(-1), // all bits set: u64::MAX as unsigned
        Cell::Int(-12_345),
        Cell::Int(123_456_789),
        Cell::Decimal(-12_345_678_901_234_567_890_123_456_789),
        Cell::Decimal(1_000_000_000_000_000_000_000_000_001),
        Cell::Int(19_840),
        Cell::Int(45_296_789),
        Cell::Int(45_296_789_012),
        Cell::Int(1_714_182_814_123),
        Cell::Int(1_714_182_814_123_456),
        Cell::Bool(true),
        Cell::Float(0.1),
        Cell::Float(2.5e-300),
        Cell::Bytes(vec![0, 1, 2, 254, 255]),
        Cell::Bytes((0u8..16).collect()),
    ];
    let key = "s/t/LOAD0000000A.parquet";
    write_file(
        &dir.path().join(key),
        schema,
        &[row],
        WriteOptions::default(),
    )
    .unwrap();
    let (changes, rejected, _) = read(dir.path(), key, "", binding(&["id"]));
    assert!(rejected.is_empty(), "{rejected:?}");
    let d = &changes[0].data;
    assert_eq!(d["tiny"], -8);
    assert_eq!(d["small"], -300);
    assert_eq!(d["u16"], 65_535);
    assert_eq!(d["u64"], json!(u64::MAX));
    assert_eq!(d["d32"], json!(-123.45));
    assert_eq!(d["d64"], json!(12345.6789));
    assert_eq!(d["d128"], json!("-1234567890123456789.0123456789"));
    assert_eq!(d["dvar"], json!("1000000000000000000000000.001"));
    assert_eq!(d["day"], "2024-04-27");
    assert_eq!(d["t_ms"], "12:34:56.789");
    assert_eq!(d["t_us"], "12:34:56.789012");
    assert_eq!(d["ts_ms"], "2024-04-27T01:53:34.123Z");
    assert_eq!(d["ts_us_local"], "2024-04-27T01:53:34.123456");
    assert_eq!(d["flag"], true);
    assert_eq!(d["r4"], json!(0.1));
    assert_eq!(d["r8"], json!(2.5e-300));
    assert_eq!(d["blob"], "AAEC/v8=");
    assert_eq!(d["u"], "00010203-0405-0607-0809-0a0b0c0d0e0f");
    assert_eq!(
        changes[0].observed_at.to_rfc3339(),
        "2024-04-27T01:53:34.123456+00:00"
    );
}

// ---------------------------------------------------------------------------------------------
// the ingest-dms handler

/// Records the batches handed to `unify`.
#[derive(Debug, Default)]
struct Recording {
    batches: Mutex<Vec<ChangeBatch>>,
    fail: bool,
}

#[async_trait]
impl Workflow for Recording {
    async fn run_unify(&self, batch: &ChangeBatch) -> Result<WorkflowRun, WorkflowError> {
        self.batches.lock().unwrap().push(batch.clone());
        Ok(WorkflowRun {
            execution: batch.batch_id.clone(),
            succeeded: !self.fail,
            output: None,
            error: self.fail.then(|| "States.TaskFailed".to_owned()),
            cause: None,
        })
    }
}

const PIPELINE: &str = "
sources:
  - name: clinic
    dms: { location: s3://landing/dms/clinic }
    entities:
      public.patients: { key: [id], mapping: m/patients.yaml }
";

fn ingest_env(workflow: Arc<Recording>) -> IngestEnv {
    IngestEnv {
        config: Arc::new(PipelineConfig::from_yaml(PIPELINE, Path::new("p.yaml")).unwrap()),
        workflow,
    }
}

fn landing(dir: &Path) -> Arc<dyn ObjectStore> {
    LocalBuckets::new().with_bucket("landing", dir).shared()
}

#[tokio::test]
async fn the_handler_reads_announced_files_in_dms_order_and_returns_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let base = "dms/clinic/public/patients";
    write_file(
        &dir.path().join(format!("{base}/LOAD00000001.parquet")),
        SMALL,
        &[
            small_row("2024-04-27 01:53:34.000001", None, Some(1), "a"),
            small_row("2024-04-27 01:53:34.000002", None, Some(2), "b"),
        ],
        WriteOptions::default(),
    )
    .unwrap();
    write_file(
        &dir.path()
            .join(format!("{base}/2024/04/27/20240427-015434214.parquet")),
        SMALL,
        &[
            small_row("2024-04-27 01:54:34.000001", Some("U"), Some(1), "a2"),
            small_row("2024-04-27 01:54:34.000002", Some("Q"), Some(2), "b2"),
            small_row("2024-04-27 01:54:34.000003", Some("D"), Some(2), ""),
        ],
        WriteOptions::default(),
    )
    .unwrap();
    std::fs::write(dir.path().join(format!("{base}/_SUCCESS")), b"").unwrap();
    let wf = Arc::new(Recording::default());
    let env = ingest_env(wf.clone());
    // The CDC file is announced first, the full load second; plus a marker, a table no entity
    // maps, and an object elsewhere in the bucket.
    let objects: Vec<(String, u64)> = [
        format!("{base}/2024/04/27/20240427-015434214.parquet"),
        format!("{base}/LOAD00000001.parquet"),
        format!("{base}/_SUCCESS"),
        "dms/clinic/public/visits/LOAD00000001.parquet".to_owned(),
        "exports/report.csv".to_owned(),
    ]
    .into_iter()
    .map(|k| (k, 1))
    .collect();
    let event = event::notification("landing", &objects, Utc::now());
    let out = ingest_dms::handle(event.clone(), &env, landing(dir.path()))
        .await
        .unwrap();
    assert_eq!(out.objects, 5);
    assert_eq!(out.files.len(), 2);
    assert!(out.files[0].uri.ends_with("LOAD00000001.parquet"));
    assert_eq!(out.records_in, 4);
    assert_eq!(out.skipped.len(), 3, "{:?}", out.skipped);
    assert!(
        out.skipped
            .iter()
            .any(|(_, why)| why.contains("public.visits is not an entity"))
    );
    assert_eq!(out.rejected.len(), 1);
    assert!(diagnostics(&out.rejected[0]).contains("unknown Op \"Q\""));

    let batches = wf.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "one batch per file");
    let ops: Vec<(i64, Op)> = batches
        .iter()
        .flat_map(|b| b.changes.iter())
        .map(|c| (c.key.0["id"].as_i64().unwrap(), c.op))
        .collect();
    assert_eq!(
        ops,
        [
            (1, Op::Upsert),
            (2, Op::Upsert),
            (1, Op::Upsert),
            (2, Op::Delete)
        ]
    );
    let seqs: Vec<&Sequence> = batches
        .iter()
        .flat_map(|b| &b.changes)
        .map(|c| &c.sequence)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        batches
            .iter()
            .all(|b| b.batch_id.starts_with("dms-") && b.batch_id.len() <= 80)
    );

    // A redelivery makes the same batch ids.
    let again = ingest_dms::handle(event, &env, landing(dir.path()))
        .await
        .unwrap();
    assert_eq!(again.records_in, 4);
    let all = wf.batches.lock().unwrap().clone();
    assert_eq!(all[0].batch_id, all[2].batch_id);
    assert_eq!(all[1].batch_id, all[3].batch_id);
    assert_ne!(all[0].batch_id, all[1].batch_id);
}

#[tokio::test]
async fn large_files_go_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let key = "dms/clinic/public/patients/LOAD00000001.parquet";
    let n = FLUSH_CHANGES as i64 + 500;
    let rows: Vec<Vec<Cell>> = (0..n)
        .map(|i| small_row("2024-04-27 01:53:34.000001", None, Some(i), "x"))
        .collect();
    write_file(&dir.path().join(key), SMALL, &rows, WriteOptions::default()).unwrap();
    let wf = Arc::new(Recording::default());
    let event = event::notification("landing", &[(key.to_owned(), 1)], Utc::now());
    let out = ingest_dms::handle(event, &ingest_env(wf.clone()), landing(dir.path()))
        .await
        .unwrap();
    assert_eq!(out.records_in, n as usize);
    let batches = wf.batches.lock().unwrap().clone();
    assert!(batches.len() >= 2);
    assert!(batches.iter().all(|b| b.changes.len() <= FLUSH_CHANGES));
    assert_eq!(
        batches.iter().map(|b| b.changes.len()).sum::<usize>(),
        n as usize
    );
}

#[tokio::test]
async fn eventbridge_keys_fall_back_to_the_key_as_received() {
    let dir = tempfile::tempdir().unwrap();
    // A table whose name has a literal `+`; EventBridge sent it unencoded.
    let config = PIPELINE.replace("public.patients", "\"public.c++notes\"");
    let env = IngestEnv {
        config: Arc::new(PipelineConfig::from_yaml(&config, Path::new("p.yaml")).unwrap()),
        workflow: Arc::new(Recording::default()),
    };
    write_file(
        &dir.path()
            .join("dms/clinic/public/c++notes/LOAD00000001.parquet"),
        SMALL,
        &[small_row("2024-04-27 01:53:34.000001", None, Some(1), "a")],
        WriteOptions::default(),
    )
    .unwrap();
    let event = fixture("eventbridge-s3-object-created-plain-plus-key.json");
    let out = ingest_dms::handle(event, &env, landing(dir.path()))
        .await
        .unwrap();
    assert_eq!(out.records_in, 1, "{:?}", out.skipped);
}

#[tokio::test]
async fn bad_events_and_failed_runs_are_errors() {
    let wf = Arc::new(Recording {
        fail: true,
        ..Recording::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let e = ingest_dms::handle(
        json!({"hello": 1}),
        &ingest_env(wf.clone()),
        landing(dir.path()),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HandlerError::InvalidInput(_)), "{e}");
    // The test event is no work.
    let out = ingest_dms::handle(
        fixture("s3-test-event.json"),
        &ingest_env(wf.clone()),
        landing(dir.path()),
    )
    .await
    .unwrap();
    assert_eq!((out.objects, out.records_in), (0, 0));
    // A failed unify run fails the invocation (so the event is retried, nothing lost).
    let key = "dms/clinic/public/patients/LOAD00000001.parquet";
    write_file(
        &dir.path().join(key),
        SMALL,
        &[small_row("2024-04-27 01:53:34.000001", None, Some(1), "a")],
        WriteOptions::default(),
    )
    .unwrap();
    let event = event::notification("landing", &[(key.to_owned(), 1)], Utc::now());
    let e = ingest_dms::handle(event, &ingest_env(wf), landing(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(e, HandlerError::Workflow(_)), "{e}");
    // A file that looks like DMS's but cannot be is quarantined by name.
    let bad = "dms/clinic/public/patients/LOAD0000ZZZZ.parquet";
    let event = event::notification("landing", &[(bad.to_owned(), 1)], Utc::now());
    let out = ingest_dms::handle(
        event,
        &ingest_env(Arc::new(Recording::default())),
        landing(dir.path()),
    )
    .await
    .unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert!(out.rejected[0].record.contains(bad));
}
